"""The interface between a task and the training loop."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def model_options(config) -> dict[str, Any]:
    """How the config builds any task's model, besides its architecture: compute dtype, remat, scan
    unrolling and the attention kernel. The kernel is this machine's choice, not the model's, so a
    workdir saved before the option existed (or on another platform) gets "auto"."""
    return dict(dtype=jnp.dtype(config.model_dtype), remat=config.remat, scan_unroll=config.scan_unroll,
                attention_impl=config.get("attention_impl", "auto"))


def stack_panels(panels) -> np.ndarray:
    """Preview images of different sizes as one (N, H, W, 3) batch, each padded with black at the right
    and bottom to the largest."""
    height, width = max(p.shape[0] for p in panels), max(p.shape[1] for p in panels)
    return np.stack([np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0))) for p in panels])


class Task:
    """One kind of training. Methods that run inside `jax.jit` (train_loss, eval_sums) are pure."""

    name: str = ""
    best_metric: str = ""  # the eval metric (higher is better) whose best checkpoint is kept

    def inputs(self, config, *, train: bool):
        """(training Input or None when not training, evaluation Input); swin_jax.data.pipeline.Input."""
        raise NotImplementedError

    def build_model(self, config, num_classes: int):
        raise NotImplementedError

    def init_variables(self, model, rng: jax.Array) -> dict[str, Any]:
        """Fresh variables: "params", and any state the model updates as it trains ("batch_stats")."""
        raise NotImplementedError

    def train_loss(self, model, params, model_state: dict, batch: dict, rngs: tuple[jax.Array, jax.Array],
                   config, num_classes: int):
        """(loss, (new model_state, extra scalar metrics)) of one global batch; rngs = (data, dropout)."""
        raise NotImplementedError

    def eval_sums(self, model, variables: dict, batch: dict, config) -> dict[str, jax.Array]:
        """What the eval step gives for one batch (arrays of fixed shapes): by default summed over batches."""
        raise NotImplementedError

    def accumulate(self, totals, outputs: dict, evaluation):
        """`totals` (None at first) with one batch's eval outputs folded in: summed on device by default;
        a task whose metrics need every prediction (COCO's) collects them on the host instead."""
        return outputs if totals is None else jax.tree.map(jnp.add, totals, outputs)

    def summarize(self, totals, evaluation) -> dict[str, float]:
        """The eval metrics (metrics.jsonl and TensorBoard rows, all `eval_*`) from the totals of a pass over
        `evaluation` (the Input: its class names, and any ground truth it carries)."""
        raise NotImplementedError

    def report(self, results: dict, class_names) -> str:
        """What an evaluation prints: one line, or a line and a table."""
        raise NotImplementedError

    def previews(self, model, variables: dict, evaluation, config, batch_sharding) -> dict[str, Any]:
        """Images for TensorBoard at each evaluation ({name: uint8 (N, H, W, 3)}); none by default."""
        return {}

    def preview_outputs(self, model, variables: dict, evaluation, batch_sharding, predict):
        """(the first evaluation batch, `predict(variables, batch)` on it as host arrays): what a task's
        previews draw. `predict` is jitted once per model, as previews come at every evaluation."""
        from swin_jax import data

        batch = next(data.to_global(iter(evaluation), batch_sharding, ahead=0))
        compiled = self.__dict__.setdefault("_preview_fns", {})
        if id(model) not in compiled:
            replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.P())
            compiled[id(model)] = jax.jit(predict, out_shardings=replicated)
        return batch, jax.device_get(compiled[id(model)](variables, batch))
