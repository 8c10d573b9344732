"""Input pipelines: TFDS, image folders, the offline demo and synthetic data, the official augmentation.

`default_config` loads without TensorFlow; the other names import the pipeline (and TensorFlow, kept
off the accelerators by `host.py`) when first used.
"""

import importlib

from swin_jax.data.config import default_config, detection_config, segmentation_config

_MODULE_OF = {"DataError": "sources", "Input": "pipeline", "eval_input": "pipeline", "to_global": "pipeline",
              "train_input": "pipeline", "segmentation_train_input": "pipeline", "segmentation_eval_input": "pipeline",
              "detection_eval_input": "pipeline", "detection_train_input": "pipeline", "segmentation_batch": "on_device", "mix": "on_device",
              "normalize": "on_device", "random_erasing": "on_device", "simmim_masks": "on_device",
              "smooth_one_hot": "on_device", "train_batch": "on_device"}

__all__ = ["default_config", "detection_config", "segmentation_config", *_MODULE_OF]


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"swin_jax.data.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'swin_jax.data' has no attribute {name!r}")
