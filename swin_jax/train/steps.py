"""The training state, the train step and the eval step: pure functions for `jax.jit`."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from swin_jax.data import on_device
from swin_jax.train import optim


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # micro-steps taken (batches consumed)
    params: Any
    opt_state: Any
    ema_params: Any  # None without EMA
    rng: jax.Array  # the run's key as raw uint32 data (checkpointable); each step folds in its number


def make_train_step(model, tx, lr: optim.Schedule, config, num_classes: int):
    compute_dtype = jnp.dtype(config.model_dtype)

    def train_step(state: TrainState, batch):
        k_data, k_dropout = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
        images, targets = on_device.train_batch(k_data, batch["image"], batch["label"], config.input,
                                                num_classes=num_classes, dtype=compute_dtype)

        def loss_fn(params):
            logits = model.apply({"params": params}, images, train=True, rngs={"dropout": k_dropout})
            # timm's SoftTargetCrossEntropy: the batch mean of -sum(targets * log_softmax(logits)).
            return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        applied, updated = optim.applied_gradient(grads, state.opt_state, config.grad_accum_steps)
        ema = state.ema_params
        if config.ema_decay:  # one EMA step per optimiser update, not per micro-batch
            moved = optax.incremental_update(params, ema, step_size=1.0 - config.ema_decay)
            ema = jax.tree.map(lambda m, e: jnp.where(updated, m, e), moved, ema)
        metrics = {"train_loss": loss, "grad_norm": optax.global_norm(applied), "updated": updated,
                   "lr": lr(state.step // config.grad_accum_steps)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

    return train_step


def make_eval_step(model, config):
    compute_dtype = jnp.dtype(config.model_dtype)

    def eval_step(params, batch):
        """Sums over the real (mask=True) examples: loss, top-1 and top-5 hits, count."""
        logits = model.apply({"params": params}, on_device.normalize(batch["image"], dtype=compute_dtype))
        logits = logits.astype(jnp.float32)
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        return {"loss": jnp.sum(loss * mask), "top1": jnp.sum((top5[:, 0] == labels) * mask),
                "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask), "count": jnp.sum(mask)}

    return eval_step
