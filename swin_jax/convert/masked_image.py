"""PyTorch SimMIM checkpoints -> swin_jax: Hugging Face's SwinForMaskedImageModeling and
Swinv2ForMaskedImageModeling (`swin.*` / `swinv2.*` with `embeddings.mask_token`, `decoder.0.*`) and the
official SimMIM pre-training checkpoints (`encoder.*` in the official Swin layout, `encoder.mask_token`,
`decoder.0.*`). The encoder is fitted as any Swin is (`fitting`, the mask token as one more parameter),
the decoder is matched here; and back to Hugging Face's layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.convert import fitting, layouts
from swin_jax.convert.fitting import accounting_error, export_timm_state_dict
from swin_jax.convert.reader import ConversionError
from swin_jax.models import registry
from swin_jax.models.simmim import SimMIM
from swin_jax.models.swin_v2 import SwinTransformerV2


def convert_mim_state_dict(state: dict, model: SimMIM, *, source: str = "checkpoint", seed: int = 0) -> dict:
    """A PyTorch SimMIM state dict (Hugging Face or official) -> variables {"params"} of `model` (all from
    the file: `seed` has nothing to draw)."""
    if not isinstance(model, SimMIM):
        raise TypeError(f"convert_mim_state_dict needs a SimMIM model, got {type(model).__name__}")
    encoder, token, decoder = layouts.split_mim_state(state, source)
    if token is None:
        raise ConversionError(f"{source} has no mask token (encoder.mask_token / swin.embeddings.mask_token): "
                              f"not a SimMIM checkpoint that {registry.describe(model)} can load")
    encoder["mask_token"] = token
    params = fitting.swin_params(encoder, model.encoder, source=f"{source} (encoder)")["params"]
    in_features = model.encoder.num_features
    channels = model.encoder_stride ** 2 * model.in_chans
    expected = {layouts.MIM_DECODER[0]: (channels, in_features, 1, 1), layouts.MIM_DECODER[1]: (channels,)}
    missing = [f"{k} (expected {s})" for k, s in expected.items() if k not in decoder]
    unexpected = [f"{k} {v.shape}" for k, v in decoder.items() if k not in expected]
    mismatched = [f"{k}: expected {expected[k]}, found {v.shape}" for k, v in decoder.items()
                  if k in expected and v.shape != expected[k]]
    if missing or unexpected or mismatched:
        raise accounting_error([f"{source} does not fit the decoder of {registry.describe(model)}:"], missing,
                               unexpected, mismatched)
    kernel = jnp.array(decoder[layouts.MIM_DECODER[0]].transpose(2, 3, 1, 0), jnp.float32)
    return {"params": {"encoder": params, "decoder": {"kernel": kernel, "bias": jnp.array(decoder[layouts.MIM_DECODER[1]])}}}


def export_huggingface_mim(variables: dict, model: SimMIM) -> dict[str, np.ndarray]:
    """SimMIM variables -> the state dict of Hugging Face's SwinForMaskedImageModeling (V1) or
    Swinv2ForMaskedImageModeling (V2), float32 numpy, which `load_state_dict` takes strictly."""
    v2 = isinstance(model.encoder, SwinTransformerV2)
    top = "swinv2." if v2 else "swin."
    params = dict(jax.device_get(variables["params"]["encoder"]))
    token = np.asarray(params.pop("mask_token"), np.float32)
    timm = export_timm_state_dict({"params": params}, model.encoder.clone(use_mask_token=False))
    out = layouts.huggingface_swin_keys(timm, top, v2)
    out[top + "embeddings.mask_token"] = token.reshape(1, 1, -1)
    decoder = jax.device_get(variables["params"]["decoder"])
    out[layouts.MIM_DECODER[0]] = np.ascontiguousarray(np.asarray(decoder["kernel"], np.float32).transpose(3, 2, 0, 1))
    out[layouts.MIM_DECODER[1]] = np.asarray(decoder["bias"], np.float32)
    return out


def fit_saved(saved, variables: dict, model: SimMIM, *, source: str, seed: int = 0) -> dict:
    """Variables for a SimMIM model from a saved SimMIM model's of the same shapes."""
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs(model)))
    if not fitting.same_tree(target, variables):
        raise ConversionError(f"{source} holds {registry.describe(saved)}, whose tensors do not fit "
                              f"{registry.describe(model)}")
    return variables


def example_inputs(model: SimMIM, batch: int = 1) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Zero images at the model's size and an empty mask: what `init` needs."""
    height, width = model.input_hw
    return (jnp.zeros((batch, height, width, model.in_chans), jnp.float32),
            jnp.zeros((batch, *model.mask_grid), bool))
