"""The training state, the train step and the eval step: pure functions for `jax.jit`, the same for
every task (the task supplies the loss and the evaluation sums)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from swin_jax.train import optim


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # micro-steps taken (batches consumed)
    params: Any
    opt_state: Any
    ema_params: Any  # None without EMA
    rng: jax.Array  # the run's key as raw uint32 data (checkpointable); each step folds in its number
    model_state: Any = None  # variables the model updates itself (BatchNorm's batch_stats); {} if none


def make_train_step(task, model, tx, lr: optim.Schedule, config, num_classes: int):
    update_lr = optim.update_lr(config, lr)  # the rate the optimiser applies (tx was built with the same)

    def train_step(state: TrainState, batch):
        rngs = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))

        def loss_fn(params):
            return task.train_loss(model, params, state.model_state, batch, (rngs[0], rngs[1]), config, num_classes)

        (loss, (model_state, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        applied, updated = optim.applied_gradient(grads, state.opt_state, config.grad_accum_steps)
        ema = state.ema_params
        if config.ema_decay:  # one EMA step per optimiser update, not per micro-batch
            moved = optax.incremental_update(params, ema, step_size=1.0 - config.ema_decay)
            ema = jax.tree.map(lambda m, e: jnp.where(updated, m, e), moved, ema)
        metrics = {"train_loss": loss, "grad_norm": optax.global_norm(applied), "updated": updated,
                   "lr": update_lr(state.step // config.grad_accum_steps), **extra}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                             model_state=model_state), metrics

    return train_step


def make_eval_step(task, model, config):
    def eval_step(variables, batch):
        return task.eval_sums(model, variables, batch, config)

    return eval_step
