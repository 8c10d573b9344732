"""PyTorch UPerNet checkpoints -> swin_jax segmenters: Hugging Face's UperNetForSemanticSegmentation
(`backbone.*`, `decode_head.*`, `auxiliary_head.*`) and the official mmsegmentation checkpoints of the
Swin semantic-segmentation code (`backbone.*` in the official Swin layout, `decode_head.conv_seg`, BN
layers named `bn`). The backbone is fitted as any Swin is (`fitting`); the heads are matched here
with the same strict accounting, BatchNorm running statistics into `batch_stats`.

A classification checkpoint initialises the backbone of a segmenter (its heads stay freshly
initialised); a detection checkpoint (mmdet: `backbone.` + `neck.` + ...) only when asked for its
backbone (`backbone_only`).
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from swin_jax.convert import fitting, layouts
from swin_jax.convert.fitting import accounting_error, export_timm_state_dict
from swin_jax.convert.reader import ConversionError
from swin_jax.models import registry
from swin_jax.models.simmim import SimMIM
from swin_jax.models.upernet import UPerNet

log = logging.getLogger(__name__)

HEADS = layouts.SEGMENTER_HEADS
# The final LayerNorm of HF's SwinModel inside its SwinBackbone: built, never applied to a stage map.
UNUSED_BACKBONE_KEYS = re.compile(r"^(swin|swinv2)\.layernorm\.(weight|bias)$")
# Classifier tensors a classification checkpoint brings that a backbone has no place for.
CLASSIFIER_ONLY = ("head.fc.weight", "head.fc.bias", "norm.weight", "norm.bias")


def _head_name(key: str) -> tuple[str, tuple[str, ...]] | None:
    """A head key of either layout -> (collection, our path), or None for num_batches_tracked."""
    parts = re.sub(r"\.(psp_modules)\.(\d+)\.1\.", r".\1_\2.", key)
    parts = re.sub(r"\.(lateral_convs|fpn_convs|convs)\.(\d+)\.", r".\1_\2.", parts)
    parts = parts.replace(".batch_norm.", ".bn.").replace(".classifier.", ".conv_seg.").split(".")
    leaf = parts.pop()
    if leaf == "num_batches_tracked":
        return None
    if parts[-1] == "bn":
        collection = "batch_stats" if leaf.startswith("running_") else "params"
        leaf = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}[leaf]
        return collection, (*parts, leaf)
    return "params", (*parts, "kernel" if leaf == "weight" else leaf)


def _head_value(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    return value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    """Our head path -> Hugging Face's key (for messages and the export)."""
    parts = list(path[:-1])
    parts = [re.sub(r"^psp_modules_(\d+)$", r"psp_modules.\1.1", p) for p in parts]
    parts = [re.sub(r"^(lateral_convs|fpn_convs|convs)_(\d+)$", r"\1.\2", p) for p in parts]
    parts = ["batch_norm" if p == "bn" else "classifier" if p == "conv_seg" else p for p in parts]
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}.get(path[-1], path[-1])
    return ".".join(parts + [leaf])


def fresh_stage_norms(model: UPerNet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The backbone's stage-map norms as initialised (scale 1, bias 0, as mmseg's), by name: what a
    classifier, which has none, leaves them at."""
    if not model.backbone.out_norm:
        return {}
    channels = model.stage_channels()
    return {f"norm{i}": (np.ones(channels[i], np.float32), np.zeros(channels[i], np.float32))
            for i in model.backbone.out_indices}


def split_segmenter_state(state: dict, source: str, backbone_only: bool = False) -> tuple[dict, dict, str]:
    """(backbone tensors without their prefix, head tensors, what the file holds) of a state dict."""
    prefixes = sorted({k.split(".", 1)[0] for k in state})
    if "backbone" in prefixes and not layouts.is_segmenter_state(state):
        if not backbone_only:
            raise ConversionError(f"{source} holds a backbone with other parts ({', '.join(prefixes)}), not a "
                                  f"UPerNet segmenter (no decode_head.*): to take its backbone only, ask for it "
                                  f"(--backbone-only / backbone_only=True)")
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, {}, "backbone"
    if "backbone" not in prefixes:  # a classifier (official, timm or Hugging Face): the backbone only
        return dict(state), {}, "classifier"
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    heads = {k: v for k, v in state.items() if k.startswith(tuple(f"{h}." for h in HEADS))}
    other = sorted(set(state) - set(heads) - {f"backbone.{k}" for k in backbone})
    if other:
        raise ConversionError(f"{source}: unexpected tensors beside backbone, decode_head and auxiliary_head:\n    "
                              + "\n    ".join(other[:25]))
    return backbone, heads, "segmenter"


def convert_segmenter_state_dict(state: dict, model: UPerNet, *, source: str = "checkpoint",
                                 backbone_only: bool = False, require_heads: bool = False, seed: int = 0) -> dict:
    """A PyTorch UPerNet, classification or (with backbone_only) detection state dict -> variables
    {"params", "batch_stats"} of `model`. Heads come from the file only when it holds them (with
    `require_heads`, a file without them is an error); a head with another number of classes is dropped
    with a warning. Fresh heads are drawn from `seed`."""
    if not isinstance(model, UPerNet):
        raise TypeError(f"convert_segmenter_state_dict needs a UPerNet model, got {type(model).__name__}")
    if layouts.is_mim_state(state):  # its encoder is a classifier without a head
        log.warning("%s is a SimMIM checkpoint: only its encoder is taken (mask token and decoder left out)", source)
        state = layouts.split_mim_state(state, source)[0]
    backbone_state, head_state, kind = split_segmenter_state(state, source, backbone_only)
    if require_heads and kind != "segmenter":
        raise ConversionError(f"{source} holds a {kind} checkpoint, no UPerNet heads (decode_head.*) for "
                              f"{registry.describe(model)}; a segmenter can take its backbone when training starts "
                              f"(config.init_from), with freshly initialised heads")
    if kind == "classifier":  # in timm's names, where its final norm and head are plain to see
        _, tensors, buffers = layouts.to_timm_layout(backbone_state)
        backbone_state = {**tensors, **buffers}
    skipped = sorted(k for k in backbone_state if UNUSED_BACKBONE_KEYS.match(k)
                     or (kind == "classifier" and k in CLASSIFIER_ONLY))
    backbone_state = {k: v for k, v in backbone_state.items() if k not in skipped}
    if skipped:
        log.info("%s: skipping %s (no use in a segmenter's backbone)", source, ", ".join(skipped))
    fresh_norms = []
    if kind == "classifier":
        for name, (scale, bias) in fresh_stage_norms(model).items():
            if f"{name}.weight" not in backbone_state:
                backbone_state[f"{name}.weight"], backbone_state[f"{name}.bias"] = scale, bias
                fresh_norms.append(name)
    backbone = fitting.swin_params(backbone_state, model.backbone, source=f"{source} (backbone)")["params"]

    fresh = jax.jit(model.init_heads)(jax.random.key(seed))
    expected = {c: flatten_dict(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), v))
                for c, v in fresh.items()}
    variables = {c: dict(flatten_dict(v)) for c, v in fresh.items()}
    variables["params"].update(flatten_dict({"backbone": backbone}))
    if kind != "segmenter":
        log.warning("%s is a %s checkpoint: the backbone comes from it%s; decode_head and auxiliary_head are "
                    "freshly initialised", source, kind,
                    f" (its stage-map norms {', '.join(fresh_norms)} freshly initialised)" if fresh_norms else "")
        return {c: unflatten_dict(v) for c, v in variables.items()}

    tensors = {}
    for key, value in head_state.items():
        name = _head_name(key)
        if name is not None:
            tensors[name] = _head_value(name[1], np.asarray(value))
    missing, mismatched, dropped = [], [], []
    for collection, specs in expected.items():
        for path, spec in specs.items():
            key = _torch_key(collection, path)
            if (collection, path) not in tensors:
                missing.append(f"{key} (expected {spec.shape})")
                continue
            value = tensors[(collection, path)]
            if value.shape != spec.shape:
                if path[-2] == "conv_seg" and value.shape[:-1] == spec.shape[:-1]:
                    dropped.append(key)
                    continue
                mismatched.append(f"{key}: expected {spec.shape}, found {value.shape}")
                continue
            variables[collection][path] = jnp.array(value, spec.dtype)  # a copy: never a view of the caller's arrays
    unexpected = [f"{_torch_key(c, p)} {v.shape}" for (c, p), v in tensors.items() if p not in expected[c]]
    if missing or unexpected or mismatched:
        raise accounting_error([f"{source} does not fit the heads of {registry.describe(model)}:"], missing, unexpected,
                               mismatched)
    if dropped:
        log.warning("%s: the classifiers have another number of classes than the model's %d: %s dropped and "
                    "freshly initialised", source, model.num_classes, ", ".join(sorted(dropped)))
    return {c: unflatten_dict(v) for c, v in variables.items()}


def export_huggingface_upernet(variables: dict, model: UPerNet) -> dict[str, np.ndarray]:
    """Segmenter variables -> the state dict of Hugging Face's UperNetForSemanticSegmentation (float32
    numpy; BatchNorm counters 0), which `load_state_dict` takes strictly. V1 gets the final LayerNorm
    HF's SwinModel carries but never applies (ones and zeros)."""
    v2 = not model.backbone.out_norm
    top = "backbone." if v2 else "backbone.swin."
    timm = export_timm_state_dict({"params": variables["params"]["backbone"]}, model.backbone)
    out = layouts.huggingface_swin_keys(timm, top, v2, stage_norms="backbone.hidden_states_norms.")
    if not v2:
        out[top + "layernorm.weight"] = np.ones(model.backbone.num_features, np.float32)
        out[top + "layernorm.bias"] = np.zeros(model.backbone.num_features, np.float32)
    for collection in ("params", "batch_stats"):
        for path, value in flatten_dict(jax.device_get({h: variables[collection][h] for h in HEADS})).items():
            value = np.asarray(value, np.float32)
            out[_torch_key(collection, path)] = np.ascontiguousarray(
                value.transpose(3, 2, 0, 1) if path[-1] == "kernel" else value)
            if path[-1] == "var":
                out[_torch_key(collection, path).replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    return out


def fit_saved(saved, variables: dict, model: UPerNet, *, source: str, seed: int = 0) -> dict:
    """Variables for a segmenter from a saved model's (a converted directory's or a workdir's): a
    segmenter's of the same shapes gives everything; a classifier's (or a SimMIM model's encoder) the
    backbone, fitted as `fit_params` fits, its final norm and head left out, stage-map norms and heads
    fresh (drawn from `seed`)."""
    if isinstance(saved, UPerNet):
        target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *model.input_hw, model.in_chans))))
        if not fitting.same_tree(target, variables):
            raise ConversionError(f"{source} holds {registry.describe(saved)}, whose tensors do not fit {registry.describe(model)}")
        return variables
    params = variables["params"]
    if isinstance(saved, SimMIM):
        log.warning("%s is a SimMIM model: only its encoder is taken (mask token and decoder left out)", source)
        saved, params = saved.encoder, params["encoder"]
    tensors, found = fitting.saved_swin_tensors(saved, params)
    tensors = {p: v for p, v in tensors.items() if p[0] not in ("head", "norm", "mask_token")}
    fresh = []
    for name, (scale, bias) in fresh_stage_norms(model).items():
        if (name, "scale") not in tensors:
            tensors[(name, "scale")], tensors[(name, "bias")] = scale, bias
            fresh.append(name)
    backbone = fitting.fit_params(tensors, model.backbone, source=f"{source} (backbone)", found=found)["params"]
    log.warning("%s: the backbone comes from it (stage-map norms %s freshly initialised); "
                "decode_head and auxiliary_head are freshly initialised", source, ", ".join(fresh) or "none")
    heads = model.init_heads(jax.random.key(seed))
    return {"params": {**heads["params"], "backbone": backbone}, "batch_stats": heads["batch_stats"]}
