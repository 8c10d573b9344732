"""The official Swin detection checkpoints (SwinTransformer/Swin-Transformer-Object-Detection, mmdet 2.11:
`meta` / `state_dict` / `optimizer`; `backbone.*` in the official Swin layout with its stage-map norms
`norm0..3`, `neck.*`, `rpn_head.*`, `roi_head.bbox_head[.k].*`, `roi_head.mask_head[.k].*`) -> swin_jax
detectors, and back. The backbone is fitted as any Swin is (`fitting`); the neck and heads are matched
here with the same strict accounting, BatchNorm running statistics into `batch_stats`. A classification
checkpoint initialises the backbone of a fresh detector.
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from swin_jax.convert import fitting, layouts
from swin_jax.convert.reader import ConversionError
from swin_jax.models import registry, windows
from swin_jax.models.detection.detectors import TwoStageDetector
from swin_jax.models.simmim import SimMIM

log = logging.getLogger(__name__)

PARTS = ("backbone", "neck", "rpn_head", "roi_head")
CLASSIFIER_ONLY = ("head.fc.weight", "head.fc.bias", "norm.weight", "norm.bias")
_INDEXED = re.compile(r"\.(lateral_convs|fpn_convs|shared_convs|shared_fcs|convs|bbox_head|mask_head)\.(\d+)(?=\.)")
_LEAVES = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _our_name(key: str, value: np.ndarray) -> tuple[str, tuple[str, ...]] | None:
    """A neck or head key -> (collection, our path); None for num_batches_tracked."""
    key = re.sub(r"^roi_head\.", "", key)
    parts = _INDEXED.sub(lambda m: f".{m[1]}_{m[2]}", "." + key)[1:].split(".")
    leaf = parts.pop()
    if leaf == "num_batches_tracked":
        return None
    if leaf in _LEAVES:
        collection, leaf = _LEAVES[leaf]
        return collection, (*parts, leaf)
    if leaf == "weight":
        leaf = "kernel" if np.ndim(value) > 1 else "scale"
    return "params", (*parts, leaf)


def _to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    if value.ndim == 2:  # nn.Linear (out, in)
        return value.T
    if "upsample" in path:  # ConvTranspose2d (in, out, kh, kw)
        return value.transpose(2, 3, 0, 1)
    return value.transpose(2, 3, 1, 0)  # Conv2d (out, in, kh, kw)


def _to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    if value.ndim == 2:
        return value.T
    if "upsample" in path:
        return value.transpose(2, 3, 0, 1)
    return value.transpose(3, 2, 0, 1)


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    """Our neck or head path -> the checkpoint's key."""
    parts = [re.sub(r"^(lateral_convs|fpn_convs|shared_convs|shared_fcs|convs|bbox_head|mask_head)_(\d+)$", r"\1.\2", p)
             for p in path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}.get(path[-1], path[-1])
    key = ".".join(parts + [leaf])
    return "roi_head." + key if path[0].startswith(("bbox_head", "mask_head")) else key


def fresh_variables(model: TwoStageDetector, seed: int = 0) -> dict:
    """Freshly initialised variables of `model` (compiled at a small input: the parameters do not depend on it)."""
    return jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 64, 64, model.in_chans), jnp.float32))


def _fresh_stage_norms(model: TwoStageDetector) -> dict:
    channels = [model.backbone.embed_dim * 2 ** i for i in range(len(model.backbone.depths))]
    return {f"norm{i}.{leaf}": (np.ones if leaf == "weight" else np.zeros)(channels[i], np.float32)
            for i in range(len(channels)) for leaf in ("weight", "bias")}


def convert_detector_state_dict(state: dict, model: TwoStageDetector, *, source: str = "checkpoint",
                                require_heads: bool = False, seed: int = 0) -> dict:
    """A PyTorch detection (or, for its backbone, classification) state dict -> variables {"params",
    "batch_stats"} of `model`. A classifier gives the backbone (stage-map norms and heads fresh), unless
    `require_heads`."""
    if not isinstance(model, TwoStageDetector):
        raise TypeError(f"convert_detector_state_dict needs a detector, got {type(model).__name__}")
    tops = sorted({k.split(".", 1)[0] for k in state})
    if layouts.is_segmenter_state(state):
        raise ConversionError(f"{source} holds a UPerNet segmenter (decode_head.*), not a detector for "
                              f"{registry.describe(model)}")
    if "backbone" not in tops:
        return _from_classifier(state, model, source, require_heads, seed)
    unknown = [t for t in tops if t not in PARTS]
    if unknown:
        raise ConversionError(f"{source}: not a Mask R-CNN / Cascade Mask R-CNN checkpoint: unexpected top-level "
                              f"parts {', '.join(unknown)} (expected {', '.join(PARTS)})")
    cascade_file = any(re.match(r"roi_head\.bbox_head\.\d+\.", k) for k in state)
    if cascade_file != model.cascade:
        found = "a Cascade Mask R-CNN (roi_head.bbox_head.0.*)" if cascade_file else "a Mask R-CNN (one bbox_head)"
        raise ConversionError(f"{source} holds {found}, and the model is {registry.describe(model)}: create the "
                              f"model as '{'cascade_mask_rcnn_' if cascade_file else 'mask_rcnn_'}' + its backbone")
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    params = {"backbone": fitting.swin_params(backbone, model.backbone, source=f"{source} (backbone)")["params"]}
    tensors = {}
    for key, value in state.items():
        if not key.startswith("backbone."):
            name = _our_name(key, value)
            if name is not None:
                tensors[name] = _to_flax(name[1], np.asarray(value))
    shapes = jax.eval_shape(lambda: fresh_variables(model))
    expected = {(c, p): tuple(v.shape) for c, tree in shapes.items() for p, v in flatten_dict(tree).items()
                if p[0] != "backbone"}
    missing = [f"{_torch_key(*k)} (expected {s})" for k, s in expected.items() if k not in tensors]
    unexpected = [f"{_torch_key(*k)} {v.shape}" for k, v in tensors.items() if k not in expected]
    mismatched = [f"{_torch_key(*k)}: expected {expected[k]}, found {v.shape}" for k, v in tensors.items()
                  if k in expected and v.shape != expected[k]]
    if missing or unexpected or mismatched:
        raise fitting.accounting_error([f"{source} does not fit the neck and heads of {registry.describe(model)}:"],
                                       missing, unexpected, mismatched)
    variables = {"params": flatten_dict(params), "batch_stats": {}}
    for (collection, path), value in tensors.items():
        variables[collection][path] = jnp.array(value, jnp.float32)  # a copy: never a view of the caller's arrays
    return {c: unflatten_dict(v) for c, v in variables.items() if v}


def _from_classifier(state, model, source, require_heads, seed: int = 0):
    if require_heads:
        raise ConversionError(f"{source} holds no detector (no backbone.*, neck.*, rpn_head.*, roi_head.*) for "
                              f"{registry.describe(model)}; a detector can take a classifier's backbone when "
                              f"training starts (config.init_from)")
    if layouts.is_mim_state(state):
        log.warning("%s is a SimMIM checkpoint: only its encoder is taken (mask token and decoder left out)", source)
        state = layouts.split_mim_state(state, source)[0]
    _, tensors, buffers = layouts.to_timm_layout(state)
    backbone = {k: v for k, v in {**tensors, **buffers}.items() if k not in CLASSIFIER_ONLY}
    fresh = {k: v for k, v in _fresh_stage_norms(model).items() if k not in backbone}
    backbone.update(fresh)
    params = fitting.swin_params(backbone, model.backbone, source=f"{source} (backbone)")["params"]
    log.warning("%s is a classification checkpoint: the backbone comes from it (stage-map norms freshly "
                "initialised); the neck and heads are freshly initialised", source)
    variables = fresh_variables(model, seed)
    return {**variables, "params": {**variables["params"], "backbone": params}}


def fit_saved(saved, variables: dict, model: TwoStageDetector, *, source: str, seed: int = 0) -> dict:
    """Variables for a detector from a saved model's: a detector's of the same shapes, or a classifier's
    (or a SimMIM model's encoder) backbone."""
    if isinstance(saved, TwoStageDetector):
        if not fitting.same_tree(jax.eval_shape(lambda: fresh_variables(model)), variables):
            raise ConversionError(f"{source} holds {registry.describe(saved)}, whose tensors do not fit "
                                  f"{registry.describe(model)}")
        return variables
    params = variables["params"]
    if isinstance(saved, SimMIM):
        log.warning("%s is a SimMIM model: only its encoder is taken (mask token and decoder left out)", source)
        saved, params = saved.encoder, params["encoder"]
    if getattr(saved, "out_indices", None) is not None or hasattr(saved, "backbone"):
        raise ConversionError(f"{source} holds {registry.describe(saved)}; a detector starts from a classifier, a "
                              f"SimMIM model or a detector")
    tensors, found = fitting.saved_swin_tensors(saved, params)
    tensors = {p: v for p, v in tensors.items() if p[0] not in ("head", "norm", "mask_token")}
    for key, value in _fresh_stage_norms(model).items():
        name, leaf = key.split(".")
        tensors.setdefault((name, "scale" if leaf == "weight" else "bias"), value)
    backbone = fitting.fit_params(tensors, model.backbone, source=f"{source} (backbone)", found=found)["params"]
    log.warning("%s: the backbone comes from it; the neck and heads are freshly initialised", source)
    fresh = fresh_variables(model, seed)
    return {**fresh, "params": {**fresh["params"], "backbone": backbone}}


def export_mmdet(variables: dict, model: TwoStageDetector) -> dict[str, np.ndarray]:
    """Detector variables -> the official checkpoint's state dict (float32 numpy; the backbone in the official
    Swin layout with its relative position index buffers), which mmdet loads strictly."""
    backbone = fitting.export_timm_state_dict({"params": variables["params"]["backbone"]}, model.backbone)
    out = {f"backbone.{k}": v for k, v in layouts.timm_to_official(backbone).items()}
    for i, depth in enumerate(model.backbone.depths):
        index = windows.relative_position_index(model.backbone.stage_windows()[i]).astype(np.int64)
        for j in range(depth):
            out[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = index
    for collection in ("params", "batch_stats"):
        tree = {k: v for k, v in variables.get(collection, {}).items() if k != "backbone"}
        for path, value in flatten_dict(jax.device_get(tree)).items():
            key = _torch_key(collection, path)
            out[key] = np.ascontiguousarray(_to_torch(path, np.asarray(value, np.float32)))
            if path[-1] == "var":
                out[key.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    return out
