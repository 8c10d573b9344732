"""Training: the official Swin recipe with jax.jit over a device mesh."""

from swin_jax.train.loop import TrainingError, train_and_evaluate

__all__ = ["TrainingError", "train_and_evaluate"]
