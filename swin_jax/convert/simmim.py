"""PyTorch SimMIM checkpoints -> swin_jax: Hugging Face's SwinForMaskedImageModeling and
Swinv2ForMaskedImageModeling (`swin.*` / `swinv2.*` with `embeddings.mask_token`, `decoder.0.*`) and the
official SimMIM pre-training checkpoints (`encoder.*` in the official Swin layout, `encoder.mask_token`,
`decoder.0.*`). The encoder goes through the classifier's converter (the mask token as one more
parameter), the decoder is matched here; and back to Hugging Face's layout.

For fine-tuning, `encoder_state` gives the encoder alone in a classifier's layout: a classifier keeps
its final norm and gets a fresh head, a segmenter takes the stages (as from a classifier).
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.convert.reader import ConversionError, read_state_dict
from swin_jax.models import registry
from swin_jax.models.simmim import SimMIM
from swin_jax.models.swin_v2 import SwinTransformerV2

log = logging.getLogger(__name__)

DECODER = ("decoder.0.weight", "decoder.0.bias")
_MASK_TOKEN = re.compile(r"^(encoder|swin|swinv2)\.(embeddings\.)?mask_token$")


def is_mim_state(state: dict) -> bool:
    return any(k.startswith("decoder.0.") for k in state) or any(_MASK_TOKEN.match(k) for k in state)


def split_mim_state(state: dict, source: str) -> tuple[dict, np.ndarray | None, dict]:
    """(encoder state in a classifier's layout, the mask token (C,) or None, decoder tensors)."""
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
        else:  # Hugging Face: the converter reads swin.* / swinv2.* as they are
            encoder[key] = value
    return encoder, token, decoder


def encoder_state(state: dict, source: str) -> dict:
    """The encoder of a SimMIM state dict as a classifier's state dict (mask token and decoder left out)."""
    encoder, _, _ = split_mim_state(state, source)
    log.warning("%s is a SimMIM checkpoint: only its encoder is taken (mask token and decoder left out)", source)
    return encoder


def convert_mim_state_dict(state: dict, model: SimMIM, *, source: str = "checkpoint") -> dict:
    """A PyTorch SimMIM state dict (Hugging Face or official) -> variables {"params"} of `model`."""
    from swin_jax.convert.loader import accounting_error, convert_state_dict

    if not isinstance(model, SimMIM):
        raise TypeError(f"convert_mim_state_dict needs a SimMIM model, got {type(model).__name__}")
    encoder, token, decoder = split_mim_state(state, source)
    if token is None:
        raise ConversionError(f"{source} has no mask token (encoder.mask_token / swin.embeddings.mask_token): "
                              f"not a SimMIM checkpoint that {registry.describe(model)} can load")
    encoder["mask_token"] = token
    params = convert_state_dict(encoder, model.encoder, source=f"{source} (encoder)")["params"]
    in_features = model.encoder.num_features
    channels = model.encoder_stride ** 2 * model.in_chans
    expected = {DECODER[0]: (channels, in_features, 1, 1), DECODER[1]: (channels,)}
    missing = [f"{k} (expected {s})" for k, s in expected.items() if k not in decoder]
    unexpected = [f"{k} {v.shape}" for k, v in decoder.items() if k not in expected]
    mismatched = [f"{k}: expected {expected[k]}, found {v.shape}" for k, v in decoder.items()
                  if k in expected and v.shape != expected[k]]
    if missing or unexpected or mismatched:
        raise accounting_error([f"{source} does not fit the decoder of {registry.describe(model)}:"], missing,
                               unexpected, mismatched)
    kernel = jnp.array(decoder[DECODER[0]].transpose(2, 3, 1, 0), jnp.float32)
    return {"params": {"encoder": params, "decoder": {"kernel": kernel, "bias": jnp.array(decoder[DECODER[1]])}}}


def load_mim_checkpoint(path, model: SimMIM) -> dict:
    return convert_mim_state_dict(read_state_dict(path), model, source=str(path))


def export_huggingface_mim(variables: dict, model: SimMIM) -> dict[str, np.ndarray]:
    """SimMIM variables -> the state dict of Hugging Face's SwinForMaskedImageModeling (V1) or
    Swinv2ForMaskedImageModeling (V2), float32 numpy, which `load_state_dict` takes strictly."""
    from swin_jax.convert.loader import export_timm_state_dict
    from swin_jax.convert.segmentation import huggingface_swin_keys

    v2 = isinstance(model.encoder, SwinTransformerV2)
    top = "swinv2." if v2 else "swin."
    params = dict(jax.device_get(variables["params"]["encoder"]))
    token = np.asarray(params.pop("mask_token"), np.float32)
    timm = export_timm_state_dict({"params": params}, model.encoder.clone(use_mask_token=False))
    out = huggingface_swin_keys(timm, top, v2)
    out[top + "embeddings.mask_token"] = token.reshape(1, 1, -1)
    decoder = jax.device_get(variables["params"]["decoder"])
    out[DECODER[0]] = np.ascontiguousarray(np.asarray(decoder["kernel"], np.float32).transpose(3, 2, 0, 1))
    out[DECODER[1]] = np.asarray(decoder["bias"], np.float32)
    return out


def load_mim_weights(path: str, model: SimMIM) -> dict:
    """Variables for a SimMIM model from a PyTorch file, or a converted directory or train.py workdir of a
    SimMIM model of the same shapes."""
    from swin_jax.convert.loader import saved_model

    saved = saved_model(path)
    if saved is None:
        return load_mim_checkpoint(path, model)
    source, variables = saved
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs(model)))
    same = jax.tree.structure(target) == jax.tree.structure(variables) and all(
        a.shape == b.shape for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(variables)))
    if not same:
        raise ConversionError(f"{path} holds {registry.describe(source)}, whose tensors do not fit "
                              f"{registry.describe(model)}")
    return variables


def example_inputs(model: SimMIM, batch: int = 1) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Zero images at the model's size and an empty mask: what `init` needs."""
    height, width = model.input_hw
    return (jnp.zeros((batch, height, width, model.in_chans), jnp.float32),
            jnp.zeros((batch, *model.mask_grid), bool))
