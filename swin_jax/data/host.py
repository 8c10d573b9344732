"""TensorFlow for the host side of the input pipeline. Import `tf` from here: the first import hides every
accelerator from TensorFlow, which only reads and augments data; the accelerators belong to JAX."""

import tensorflow as tf

for _kind in ("GPU", "TPU"):
    tf.config.set_visible_devices([], _kind)

__all__ = ["tf"]
