"""What a path holds of ours: a train.py workdir (config.json and checkpoints/) or a converted model
directory (config.json and params/), and the model and variables in it."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from swin_jax import checkpoint
from swin_jax.tasks import get_task


def is_training_workdir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "checkpoints"))


def _tuples(value):
    """JSON's lists back to the tuples the configs hold."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load_workdir(workdir: str | os.PathLike):
    """(model, variables, config, which) of a train.py workdir: its best checkpoint (by the task's metric),
    else the latest; `which` says which step that is, and its metric."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(_tuples(json.load(f)))
    task = get_task(config)
    model = task.build_model(config, config.input.num_classes)
    checkpoints = checkpoint.TrainCheckpoints(os.path.join(workdir, "checkpoints"), best_metric=task.best_metric)
    try:
        saved = checkpoints.saved_arrays()
    finally:
        checkpoints.close()
    metric = task.best_metric if task.best_metric in saved["metrics"] else ""
    which = (f"step {saved['step']}, the best by {metric} ({saved['metrics'][metric]:.4f})" if metric else
             f"step {saved['step']}, the latest")
    return model, {"params": saved["params"], **saved["model_state"]}, config, which


def load_saved(path: str | os.PathLike):
    """(model, variables as host arrays) of a converted directory or a train.py workdir; None for
    anything else (a file, a missing path)."""
    if checkpoint.is_pretrained_dir(path):
        return checkpoint.load_pretrained(path)[:2]
    if is_training_workdir(path):
        model, variables, _, _ = load_workdir(path)
        return model, jax.device_get(variables)  # host arrays: the caller may be inside another mesh
    return None
