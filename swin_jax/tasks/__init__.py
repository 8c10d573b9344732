"""What differs between the tasks the one training loop runs (`swin_jax.train.loop`).

A task gives the loop its input, its model, its loss and its evaluation; the loop owns everything else
(sharding, the optimiser, checkpoints, resume, preemption, metrics and progress). `config.task` picks one:

  classification  Swin classifiers on ImageNet, image folders or the digits demo (configs/swin_*.py)
  segmentation    UPerNet-Swin semantic segmentation, mmseg's recipe (configs/upernet_*.py, demo_seg.py)
  simmim          SimMIM masked image modeling pre-training (configs/simmim_*.py, demo_simmim.py)
  detection       Mask R-CNN / Cascade Mask R-CNN, COCO evaluation (configs/detection.py; eval_only)
"""

from __future__ import annotations

from swin_jax.tasks.base import Task

TASK_MODULES = {"classification": "classification", "segmentation": "segmentation", "simmim": "simmim",
                "detection": "detection"}


def get_task(config) -> Task:
    import importlib

    name = config.get("task", "classification")
    if name not in TASK_MODULES:
        raise ValueError(f"config.task={name!r}: must be one of {', '.join(TASK_MODULES)}")
    return importlib.import_module(f"swin_jax.tasks.{TASK_MODULES[name]}").TASK


__all__ = ["Task", "get_task"]
