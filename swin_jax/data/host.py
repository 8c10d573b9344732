"""TensorFlow for the host side of the input pipeline. Import `tf` from here: the first import hides every
accelerator from TensorFlow, which only reads and augments data; the accelerators belong to JAX.

TensorFlow's start-up notices (oneDNN's, printed before any logging is set up) are kept out unless
SWIN_JAX_VERBOSE=1: oneDNN speeds up TensorFlow's matrix products and convolutions, which the input
pipeline does not run."""

import os

if os.environ.get("SWIN_JAX_VERBOSE", "0") in ("", "0"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow as tf  # noqa: E402

for _kind in ("GPU", "TPU"):
    tf.config.set_visible_devices([], _kind)

__all__ = ["tf"]
