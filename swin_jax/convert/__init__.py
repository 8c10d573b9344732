"""PyTorch Swin checkpoints (official, timm, Hugging Face; UPerNet segmenters from Hugging Face and
mmsegmentation; SimMIM from Hugging Face and the official code; Mask R-CNN and Cascade Mask R-CNN from
the official detection code) -> swin_jax, and back.

The core (`reader`, `layouts`, `resample`, `fitting`) knows files, key layouts and a Swin's parameter
tree; one module per kind of model (`classifier`, `segmenter`, `masked_image`, `detector`) knows its heads. This
module picks the kind from the model, in one table: a new kind is one module and one row.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from swin_jax import workdir
from swin_jax.convert import classifier, detector, masked_image, recognise, segmenter
from swin_jax.convert.classifier import read_class_map
from swin_jax.convert.fitting import export_timm_state_dict
from swin_jax.convert.reader import ConversionError, read_state_dict
from swin_jax.models import create_model
from swin_jax.models.detection.detectors import TwoStageDetector
from swin_jax.models.simmim import SimMIM
from swin_jax.models.swin import Swin
from swin_jax.models.upernet import UPerNet


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one kind of model is converted. `convert(state, model, *, source, **options)` takes a PyTorch
    state dict, `fit_saved(saved_model, variables, model, *, source, **options)` a saved JAX model's,
    `export(variables, model)` gives the PyTorch state dict in `export_layout`; `init_options` are what
    starting a training run from a file adds to `convert`'s."""

    model: type
    convert: Callable[..., dict]
    fit_saved: Callable[..., dict]
    export: Callable[..., dict]
    export_layout: str
    init_options: tuple[tuple[str, object], ...] = ()


KINDS = (
    Kind(TwoStageDetector, detector.convert_detector_state_dict, detector.fit_saved, detector.export_mmdet,
         "mmdet (Swin-Transformer-Object-Detection)"),
    Kind(UPerNet, segmenter.convert_segmenter_state_dict, segmenter.fit_saved, segmenter.export_huggingface_upernet,
         "Hugging Face UperNetForSemanticSegmentation"),
    Kind(SimMIM, masked_image.convert_mim_state_dict, masked_image.fit_saved, masked_image.export_huggingface_mim,
         "Hugging Face Swin(v2)ForMaskedImageModeling"),
    Kind(Swin, classifier.convert_state_dict, classifier.fit_saved, export_timm_state_dict, "timm",
         init_options=(("encoder_of_mim", True),)),
)


def kind_of(model) -> Kind:
    for kind in KINDS:
        if isinstance(model, kind.model):
            return kind
    raise TypeError(f"no converter for a {type(model).__name__}: expected one of "
                    f"{', '.join(k.model.__name__ for k in KINDS)}")


def convert_state_dict(state: dict, model, *, source: str = "checkpoint", **options) -> dict:
    """A PyTorch state dict -> Flax variables for `model`, whatever its kind (classifier: `class_map`,
    `encoder_of_mim`; segmenter: `backbone_only`, `require_heads`)."""
    return kind_of(model).convert(state, model, source=source, **options)


def _variables(path, model, options: dict, init: bool) -> dict:
    kind = kind_of(model)
    source = recognise.recognise(path)
    if not source.holds_pytorch:  # a converted directory or a train.py workdir
        options = {k: v for k, v in options.items() if k in ("seed", "class_map")}
        return kind.fit_saved(*workdir.load_saved(source.path), model, source=source.path, **options)
    extra = dict(kind.init_options) if init else {}
    return kind.convert(read_state_dict(source.weights), model, source=source.weights, **extra, **options)


def load_pytorch_checkpoint(path: str | os.PathLike, model, **options) -> dict:
    """Flax variables for `model` (a classifier, segmenter, SimMIM model or detector) from a PyTorch
    checkpoint file, a save_pretrained folder of Hugging Face or timm, a converted directory or a train.py
    workdir (`recognise.ACCEPTED`)."""
    return _variables(path, model, options, init=False)


def load_weights(path: str | os.PathLike, model, *, class_map: np.ndarray | None = None, seed: int = 0) -> dict:
    """Flax variables for `model` to start from (config.init_from), from any path `load_pytorch_checkpoint`
    takes, fitted to it as `fitting.fit_params` says (another window, resolution or head works; a SimMIM
    model gives its encoder, a classifier a segmenter's backbone). What the file does not hold (a head
    for other classes, a segmenter's or detector's heads) is freshly initialised from `seed` (config.seed)."""
    options = {"seed": seed, **({"class_map": class_map} if class_map is not None else {})}
    return _variables(path, model, options, init=True)


def model_from_pytorch(source: recognise.Source, model_name: str | None = None, *, overrides: dict | None = None,
                       backbone_only: bool = False, class_map: np.ndarray | None = None):
    """(name, create_model arguments, model, variables) of a PyTorch file or save_pretrained folder
    (`recognise.recognise`): the model `model_name`, or the one its tensors give (`recognise.guess_model`),
    built with the guessed arguments updated by `overrides`. A segmenter's or detector's heads must be in
    the file, unless a segmenter is asked for its `backbone_only`; a classifier's 22K head is narrowed by
    `class_map`."""
    state = read_state_dict(source.weights)
    name, arguments = recognise.guess_model(state, source, model_name)
    arguments = {**arguments, **(overrides or {})}
    model = create_model(name, **arguments)
    if isinstance(model, UPerNet):
        options = dict(backbone_only=backbone_only, require_heads=not backbone_only)
    elif isinstance(model, TwoStageDetector):
        options = dict(require_heads=True)
    else:
        options = dict(class_map=class_map) if class_map is not None and isinstance(model, Swin) else {}
    return name, arguments, model, convert_state_dict(state, model, source=source.weights, **options)


def export_state_dict(variables: dict, model) -> tuple[dict[str, np.ndarray], str]:
    """(the PyTorch state dict of `model`'s variables, float32 numpy; the layout it is in)."""
    kind = kind_of(model)
    return kind.export(variables, model), kind.export_layout


__all__ = ["ConversionError", "KINDS", "convert_state_dict", "export_state_dict", "export_timm_state_dict",
           "kind_of", "load_pytorch_checkpoint", "load_weights", "model_from_pytorch", "read_class_map", "read_state_dict"]
