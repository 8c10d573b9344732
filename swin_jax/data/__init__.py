"""Input pipelines: TFDS, image folders, the offline demo and synthetic data, the official augmentation."""

import tensorflow as tf

# TensorFlow only reads and augments on the host; accelerators belong to JAX.
for _kind in ("GPU", "TPU"):
    tf.config.set_visible_devices([], _kind)

from swin_jax.data.on_device import mix, normalize, random_erasing, smooth_one_hot, train_batch  # noqa: E402
from swin_jax.data.pipeline import Input, default_config, eval_input, to_global, train_input  # noqa: E402
from swin_jax.data.sources import DataError  # noqa: E402

__all__ = ["DataError", "Input", "default_config", "eval_input", "mix", "normalize", "random_erasing",
           "smooth_one_hot", "to_global", "train_batch", "train_input"]
