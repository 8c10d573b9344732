"""Swin classifiers (V1 and V2): PyTorch checkpoints of the official code, timm and Hugging Face in, timm's
layout out; a saved classifier, a SimMIM model's encoder or a segmenter's backbone refused or taken as
fine-tuning asks. The tensors themselves are fitted by `fitting`."""

from __future__ import annotations

import logging

import numpy as np

from swin_jax.convert import fitting, layouts
from swin_jax.convert.fitting import IMAGENET_22K_CLASSES
from swin_jax.convert.reader import ConversionError
from swin_jax.models import registry
from swin_jax.models.simmim import SimMIM
from swin_jax.models.swin import Swin
from swin_jax.models.upernet import UPerNet

log = logging.getLogger(__name__)

def convert_state_dict(state: dict, model: Swin, *, class_map: np.ndarray | None = None,
                       source: str = "checkpoint", encoder_of_mim: bool = False, seed: int = 0) -> dict:
    """A PyTorch Swin state dict (any of the three layouts) -> Flax variables for `model`, fitted by
    `fitting.fit_params` (another window, resolution or head; a 22K head narrowed with `class_map`). A
    SimMIM checkpoint gives its encoder only with `encoder_of_mim` (fine-tuning from it:
    config.init_from); otherwise it is an error, as a segmenter's is. A fresh head is drawn from `seed`."""
    if layouts.is_segmenter_state(state):
        raise ConversionError(f"{source} holds a UPerNet segmenter (decode_head.*), and {registry.describe(model)} is "
                              f"a classifier: create the model as 'upernet_' + its name")
    if layouts.is_mim_state(state):
        if not encoder_of_mim:
            raise ConversionError(f"{source} holds a SimMIM model (mask token, decoder.0.*), and "
                                  f"{registry.describe(model)} is a classifier: load it into 'simmim_' + its name, "
                                  f"or fine-tune from its encoder with config.init_from")
        log.warning("%s is a SimMIM checkpoint: only its encoder is taken (mask token and decoder left out)", source)
        state = layouts.split_mim_state(state, source)[0]
    return fitting.swin_params(state, model, class_map=class_map, source=source, seed=seed)


def fit_saved(saved, variables: dict, model: Swin, *, source: str, class_map: np.ndarray | None = None,
              seed: int = 0) -> dict:
    """Variables for `model` from a saved model's (a converted directory's or a workdir's): a classifier's
    fitted as a PyTorch file's would be, a SimMIM model's encoder; a segmenter is refused."""
    params = variables["params"]
    if isinstance(saved, UPerNet):
        raise ConversionError(f"{source} holds {registry.describe(saved)}; a classifier cannot start from it")
    if isinstance(saved, SimMIM):
        log.warning("%s is a SimMIM model: only its encoder is taken (mask token and decoder left out)", source)
        saved, params = saved.encoder, {k: v for k, v in params["encoder"].items() if k != "mask_token"}
    tensors, found = fitting.saved_swin_tensors(saved, params)
    return fitting.fit_params(tensors, model, class_map=class_map, source=source, found=found, seed=seed)


def read_class_map(path) -> np.ndarray:
    """The official `map22kto1k.txt`: 1000 lines, each the ImageNet-22K index of one 1K class."""
    try:
        with open(path) as f:
            rows = [line.strip() for line in f if line.strip()]
        indices = np.array([int(r) for r in rows], np.int64)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a readable class map (one integer index per line): {e}") from None
    if indices.min(initial=0) < 0 or indices.max(initial=0) >= IMAGENET_22K_CLASSES:
        raise ConversionError(f"{path}: indices must lie in 0..{IMAGENET_22K_CLASSES - 1}")
    return indices
