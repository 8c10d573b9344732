"""The three PyTorch key layouts of Swin V1, and the map between timm's keys and our parameters.

Every checkpoint is first renamed to timm's layout (the official and Hugging Face layouts differ from
it only in names, the position of patch merging and split q/k/v), then matched against the model's
parameters one to one.
"""

from __future__ import annotations

import re

import numpy as np

from swin_jax.convert.reader import ConversionError

OFFICIAL, TIMM, HUGGINGFACE = "official", "timm", "huggingface"


def detect_layout(state: dict) -> str:
    keys = set(state)
    if any(k.startswith(("swin.embeddings.", "embeddings.patch_embeddings.")) for k in keys):
        return HUGGINGFACE
    if "patch_embed.proj.weight" not in keys:
        sample = ", ".join(sorted(keys)[:8])
        raise ConversionError(f"not a Swin checkpoint: no 'patch_embed.proj.weight' (nor Hugging Face's "
                              f"'swin.embeddings.*'); its first keys are: {sample}")
    # The official code merges patches at the END of stages 0..2, timm at the START of stages 1..3.
    if "layers.0.downsample.reduction.weight" in keys or any(k.endswith(("relative_position_index", "attn_mask"))
                                                             for k in keys):
        return OFFICIAL
    return TIMM


def _shift_downsample(key: str) -> str:
    return re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", key)


def official_to_timm(state: dict) -> tuple[dict, dict]:
    """Returns (timm-layout tensors, buffers). Buffers are the official non-parameter tensors."""
    out, buffers = {}, {}
    for key, value in state.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            buffers[key] = value
            continue
        key = _shift_downsample(key)
        if key in ("head.weight", "head.bias"):
            key = key.replace("head.", "head.fc.")
        out[key] = value
    return out, buffers


_HF_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^embeddings\.position_embeddings$", "absolute_pos_embed"),
    (r"^encoder\.layers\.", "layers."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.self\.relative_position_bias_table$", ".attn.relative_position_bias_table"),
    (r"\.attention\.relative_position_bias\.relative_position_bias_table$", ".attn.relative_position_bias_table"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^hidden_states_norms\.stage(\d+)\.", lambda m: f"norm{int(m[1]) - 1}."),
    (r"^classifier\.", "head.fc."),
]
_HF_QKV = re.compile(r"^(.*)\.attention\.(?:self\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")


def huggingface_to_timm(state: dict) -> tuple[dict, dict]:
    """Hugging Face SwinModel / SwinForImageClassification / SwinBackbone -> timm layout."""
    out, buffers, qkv = {}, {}, {}
    for key, value in state.items():
        key = re.sub(r"^swin\.", "", key)
        if key.endswith("relative_position_index"):
            buffers[key] = value
            continue
        m = _HF_QKV.match(key)
        if m:
            part = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}[m[2] or m[3]]
            qkv.setdefault((m[1], m[4]), [None] * 3)[part] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            key = re.sub(pattern, replacement, key)
        out[_shift_downsample(key)] = value
    for (block, leaf), parts in qkv.items():
        name = f"{block}.attention.{{query,key,value}}.{leaf}"
        if any(p is None for p in parts):
            raise ConversionError(f"{name}: query, key and value must all be present")
        out[f"{_shift_downsample(re.sub(r'^encoder.layers.', 'layers.', block))}.attn.qkv.{leaf}"] = np.concatenate(parts)
    return out, buffers


def to_timm_layout(state: dict) -> tuple[str, dict, dict]:
    """(layout name, timm-layout tensors, buffers) for a checkpoint in any of the three layouts."""
    layout = detect_layout(state)
    if layout == OFFICIAL:
        return (layout, *official_to_timm(state))
    if layout == HUGGINGFACE:
        return (layout, *huggingface_to_timm(state))
    return layout, dict(state), {}


def timm_key(path: tuple[str, ...]) -> str:
    """Our (unrolled) parameter path -> timm's state-dict key."""
    parts = [re.sub(r"^(layers|blocks)_(\d+)$", r"\1.\2", p) for p in path[:-1]]
    if parts == ["head"]:
        parts = ["head", "fc"]
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    return ".".join(parts + [leaf])


def torch_to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """A timm tensor in our parameter's layout (before any resizing)."""
    if path[-1] == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def flax_to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    if path[-1] == "absolute_pos_embed":  # (1, H, W, C) -> the official (1, H*W, C)
        return value.reshape(1, -1, value.shape[-1])
    return value


def torch_shape(path: tuple[str, ...], shape) -> tuple[int, ...]:
    """The PyTorch shape of the tensor that fills our parameter `path` of `shape`."""
    return tuple(flax_to_torch(path, np.empty(tuple(shape), np.int8)).shape)


def describe(state: dict) -> dict:
    """The Swin hyper-parameters a timm-layout state dict was made with (as far as they show)."""
    info = {}
    if "patch_embed.proj.weight" in state:
        w = state["patch_embed.proj.weight"]
        info["embed_dim"], info["patch_size"] = int(w.shape[0]), int(w.shape[-1])
    depths = {}
    for key in state:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
    if depths:
        info["depths"] = tuple(depths[i] for i in sorted(depths))
        heads = [state.get(f"layers.{i}.blocks.0.attn.relative_position_bias_table") for i in sorted(depths)]
        if all(h is not None for h in heads):
            info["num_heads"] = tuple(int(h.shape[1]) for h in heads)
            info["window_size"] = (int(round(np.sqrt(heads[0].shape[0]))) + 1) // 2
    if "head.fc.weight" in state:
        info["num_classes"] = int(state["head.fc.weight"].shape[0])
    return info
