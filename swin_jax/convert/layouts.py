"""The three PyTorch key layouts of Swin V1 and V2, the map between timm's keys and our parameters, and
what a file's top-level prefixes say it holds.

Every checkpoint is first renamed to timm's layout (the official and Hugging Face layouts differ from
it only in names, the position of patch merging and split q/k/v), then matched against the model's
parameters one to one. Buffers (relative position indices, V2's coordinate tables, shift masks, a
zero k bias) are set aside in every layout: they are recomputed, never loaded. Hugging Face's names
are also written back (`huggingface_swin_keys`), for the segmenter's and SimMIM's exports.
"""

from __future__ import annotations

import re

import numpy as np

from swin_jax.convert.reader import ConversionError

OFFICIAL, TIMM, HUGGINGFACE = "official", "timm", "huggingface"

# Non-parameter tensors some checkpoints hold (official: all but k_bias; older timm and Hugging Face
# versions: some of them). Matched on the last part of the key.
BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask", "k_bias")


def split_buffers(state: dict) -> tuple[dict, dict]:
    """(parameters, buffers) of a state dict."""
    out, buffers = {}, {}
    for key, value in state.items():
        (buffers if key.rsplit(".", 1)[-1] in BUFFERS else out)[key] = value
    return out, buffers


def detect_layout(state: dict) -> str:
    keys = set(state)
    if any(k.startswith(("swin.embeddings.", "swinv2.embeddings.", "embeddings.patch_embeddings.")) for k in keys):
        return HUGGINGFACE
    if "patch_embed.proj.weight" not in keys:
        sample = ", ".join(sorted(keys)[:8])
        raise ConversionError(f"not a Swin checkpoint: no 'patch_embed.proj.weight' (nor Hugging Face's "
                              f"'swin.embeddings.*' / 'swinv2.embeddings.*'); its first keys are: {sample}")
    # The official code merges patches at the END of stages 0..2, timm at the START of stages 1..3.
    if "layers.0.downsample.reduction.weight" in keys:
        return OFFICIAL
    if any(re.match(r"layers\.\d+\.downsample\.", k) for k in keys):
        return TIMM
    # No patch merging (a single stage): the layouts differ only in the head's name.
    return OFFICIAL if "head.weight" in keys else TIMM


def _shift_downsample(key: str) -> str:
    return re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", key)


def official_to_timm(state: dict) -> tuple[dict, dict]:
    """Returns (timm-layout tensors, buffers). Buffers are the official non-parameter tensors.

    V2's position-bias MLP is `cpb_mlp` (`rpe_mlp` in some earlier releases, e.g. SimMIM's)."""
    state, buffers = split_buffers(state)
    out = {}
    for key, value in state.items():
        key = _shift_downsample(key.replace(".rpe_mlp.", ".cpb_mlp."))
        if key in ("head.weight", "head.bias"):
            key = key.replace("head.", "head.fc.")
        out[key] = value
    return out, buffers


def timm_to_official(state: dict) -> dict:
    """timm-layout tensors -> the official layout (patch merging at the end of stages 0..2, `head.*`): the
    inverse of `official_to_timm` for parameters."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        out[key.replace("head.fc.", "head.")] = value
    return out


_HF_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^embeddings\.position_embeddings$", "absolute_pos_embed"),
    (r"^encoder\.layers\.", "layers."),
    (r"\.attention\.self\.continuous_position_bias_mlp\.", ".attn.cpb_mlp."),  # V2
    (r"\.attention\.self\.logit_scale$", ".attn.logit_scale"),  # V2
    (r"\.layernorm_before\.", ".norm1."),  # V1's pre-norm, V2's post-norm: the same place in the keys
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
    """Hugging Face SwinModel / SwinForImageClassification / SwinBackbone, and their Swinv2 counterparts,
    -> timm layout. V2's query and value biases (its key has none) become q_bias and v_bias."""
    state, buffers = split_buffers(state)
    out, qkv = {}, {}
    for key, value in state.items():
        key = re.sub(r"^swin(v2)?\.", "", key)
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
        attn = f"{_shift_downsample(re.sub(r'^encoder.layers.', 'layers.', block))}.attn"
        if leaf == "bias" and parts[1] is None and parts[0] is not None and parts[2] is not None:
            out[f"{attn}.q_bias"], out[f"{attn}.v_bias"] = parts[0], parts[2]  # Swin V2: no key bias
            continue
        if any(p is None for p in parts):
            raise ConversionError(f"{name}: query, key and value must all be present")
        out[f"{attn}.qkv.{leaf}"] = np.concatenate(parts)
    return out, buffers


def to_timm_layout(state: dict) -> tuple[str, dict, dict]:
    """(layout name, timm-layout tensors, buffers) for a checkpoint in any of the three layouts."""
    layout = detect_layout(state)
    if layout == OFFICIAL:
        return (layout, *official_to_timm(state))
    if layout == HUGGINGFACE:
        return (layout, *huggingface_to_timm(state))
    return (layout, *split_buffers(state))


def timm_key(path: tuple[str, ...]) -> str:
    """Our (unrolled) parameter path -> timm's state-dict key."""
    parts = [re.sub(r"^(layers|blocks)_(\d+)$", r"\1.\2", p) for p in path[:-1]]
    if parts == ["head"]:
        parts = ["head", "fc"]
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    return ".".join(parts + [leaf])


def flax_path(key: str, ndim: int) -> tuple[str, ...]:
    """timm's state-dict key of an `ndim`-dimensional tensor -> our (unrolled) parameter path; the inverse
    of `timm_key`. A `weight` is a kernel when it is a matrix or convolution, a LayerNorm scale when 1-D."""
    parts = re.sub(r"(^|\.)(layers|blocks)\.(\d+)(?=\.|$)", r"\1\2_\3", key).split(".")
    leaf = parts.pop()
    if parts == ["head", "fc"]:
        parts = ["head"]
    if leaf == "weight":
        leaf = "kernel" if ndim >= 2 else "scale"
    return (*parts, leaf)


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
        scales = [state.get(f"layers.{i}.blocks.0.attn.logit_scale") for i in sorted(depths)]
        if all(h is not None for h in heads):
            info["num_heads"] = tuple(int(h.shape[1]) for h in heads)
            info["window_size"] = (int(round(np.sqrt(heads[0].shape[0]))) + 1) // 2
        elif all(s is not None for s in scales):  # V2: no bias tables; logit_scale is (heads, 1, 1)
            info["num_heads"] = tuple(int(s.shape[0]) for s in scales)
    if any(k.endswith((".attn.logit_scale", ".attn.cpb_mlp.0.weight")) for k in state):
        info["version"] = "Swin V2"
    elif any(k.endswith(".attn.relative_position_bias_table") for k in state):
        info["version"] = "Swin V1"
    if "head.fc.weight" in state:
        info["num_classes"] = int(state["head.fc.weight"].shape[0])
    return info


def _huggingface_block_key(rest: str, v2: bool) -> str:
    """A timm block key (after `blocks.j.`) -> Hugging Face's (SwinBackbone's names, Swinv2Backbone's)."""
    renames = [("norm1.", "layernorm_before."), ("norm2.", "layernorm_after.")]
    if v2:
        renames += [("attn.q_bias", "attention.self.query.bias"), ("attn.v_bias", "attention.self.value.bias"),
                    ("attn.logit_scale", "attention.self.logit_scale"),
                    ("attn.cpb_mlp.", "attention.self.continuous_position_bias_mlp."),
                    ("attn.proj.", "attention.output.dense."), ("mlp.fc1.", "intermediate.dense."),
                    ("mlp.fc2.", "output.dense.")]
    else:
        renames += [("attn.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
                    ("attn.proj.", "attention.o_proj.")]
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def huggingface_swin_keys(timm: dict, top: str, v2: bool, stage_norms: str = "") -> dict[str, np.ndarray]:
    """A timm-layout Swin state dict in Hugging Face's names under `top` ("swin.", "backbone.", ...):
    SwinModel's / Swinv2Model's embeddings, encoder layers (patch merging at the end of a stage, split
    q/k/v) and final `layernorm`; stage-map norms `normI` under `stage_norms` + "stage{I+1}"."""
    out = {}
    for key, value in timm.items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        norm = re.match(r"^norm(\d+)\.(weight|bias)$", key)
        block = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
        if norm:
            out[f"{stage_norms}stage{int(norm[1]) + 1}.{norm[2]}"] = value
        elif key.startswith("norm."):
            out[top + "layernorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("patch_embed.proj."):
            out[top + "embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("patch_embed.norm."):
            out[top + "embeddings.norm." + key.rsplit(".", 1)[1]] = value
        elif block and block[3].startswith("attn.qkv."):
            prefix = f"{top}encoder.layers.{block[1]}.blocks.{block[2]}.attention."
            names = ("self.query", "self.key", "self.value") if v2 else ("q_proj", "k_proj", "v_proj")
            for name, part in zip(names, np.split(value, 3)):
                out[f"{prefix}{name}.{block[3].rsplit('.', 1)[1]}"] = np.ascontiguousarray(part)
        elif block:
            out[f"{top}encoder.layers.{block[1]}.blocks.{block[2]}.{_huggingface_block_key(block[3], v2)}"] = value
        else:
            out[top + "encoder." + key] = value
    return out


# What a file holds, from its keys: UPerNet heads (Hugging Face and mmseg name them alike), SimMIM's
# mask token and decoder (official: encoder.*, Hugging Face: swin.* / swinv2.*).
SEGMENTER_HEADS = ("decode_head", "auxiliary_head")
MIM_DECODER = ("decoder.0.weight", "decoder.0.bias")
_MASK_TOKEN = re.compile(r"^(encoder|swin|swinv2)\.(embeddings\.)?mask_token$")


def is_segmenter_state(state: dict) -> bool:
    return any(k.startswith(tuple(f"{h}." for h in SEGMENTER_HEADS)) for k in state)


def is_mim_state(state: dict) -> bool:
    return any(k.startswith("decoder.0.") for k in state) or any(_MASK_TOKEN.match(k) for k in state)


def split_mim_state(state: dict, source: str) -> tuple[dict, np.ndarray | None, dict]:
    """(encoder state in a classifier's layout, the mask token (C,) or None, decoder tensors) of a
    SimMIM state dict."""
    tops = sorted({k.split(".", 1)[0] for k in state})
    unknown = [t for t in tops if t not in ("encoder", "swin", "swinv2", "decoder")]
    if unknown or not any(t in tops for t in ("encoder", "swin", "swinv2")):
        raise ConversionError(f"{source}: not a SimMIM checkpoint (expected encoder.* or swin.* / swinv2.* and "
                              f"decoder.0.*), found the prefixes {', '.join(tops)}")
    token, encoder, decoder = None, {}, {}
    for key, value in state.items():
        if _MASK_TOKEN.match(key):
            token = np.asarray(value).reshape(-1)
        elif key.startswith("decoder."):
            decoder[key] = np.asarray(value)
        elif key.startswith("encoder."):  # the official layout: a Swin classifier's keys under encoder.
            encoder[key[len("encoder."):]] = value
        else:  # Hugging Face: swin.* / swinv2.* are read as they are
            encoder[key] = value
    return encoder, token, decoder
