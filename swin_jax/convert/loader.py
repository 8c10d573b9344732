"""PyTorch state dicts and converted directories -> swin_jax variables (with strict accounting of every
tensor, and fitting to another window, resolution or head), and swin_jax variables -> timm's layout."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from swin_jax.convert import layouts, resample
from swin_jax.convert.reader import ConversionError, read_state_dict
from swin_jax.models import registry, windows
from swin_jax.models.layers import trunc_normal
from swin_jax.models.swin import Swin, stack_blocks, unstack_blocks

log = logging.getLogger(__name__)

IMAGENET_22K_CLASSES = 21841


def expected_params(model: Swin) -> dict:
    """Shapes of the model's parameters in the unrolled layout, keyed by path tuple (no compute)."""
    shapes = jax.eval_shape(lambda: model.clone(scan_blocks=False).init(
        jax.random.key(0), jnp.zeros((1, *model.input_hw, model.in_chans), jnp.float32)))
    return flatten_dict(shapes["params"])


def _natural(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _listing(title: str, rows: list[str], limit: int = 25) -> str:
    rows = sorted(rows, key=_natural)
    shown = rows[:limit] + ([f"... and {len(rows) - limit} more"] if len(rows) > limit else [])
    return f"{title} ({len(rows)}):\n    " + "\n    ".join(shown)


def accounting_error(parts: list[str], missing: list[str], unexpected: list[str],
                     mismatched: list[str]) -> ConversionError:
    """The error of a checkpoint that does not fit: `parts` (what and why), then every missing,
    unexpected and mis-shaped tensor."""
    for title, rows in (("missing in the checkpoint", missing), ("unexpected in the checkpoint", unexpected),
                        ("shape mismatch", mismatched)):
        if rows:
            parts = [*parts, _listing(title, rows)]
    return ConversionError("\n".join(parts))


@dataclasses.dataclass(frozen=True)
class Naming:
    """How error messages name a parameter: by PyTorch key and shape, or by our tree path and shape."""
    key: Callable[[tuple], str]
    shape: Callable[[tuple, tuple], tuple]


TORCH_NAMES = Naming(layouts.timm_key, layouts.torch_shape)
FLAX_NAMES = Naming(lambda path: "/".join(path), lambda path, shape: tuple(shape))


def convert_state_dict(state: dict, model: Swin, *, class_map: np.ndarray | None = None,
                       source: str = "checkpoint", encoder_of_mim: bool = False) -> dict:
    """A PyTorch Swin state dict (any of the three layouts) -> Flax variables for `model`: renamed to our
    parameter paths, then fitted to the model by `fit_params`. A SimMIM checkpoint gives its encoder
    only with `encoder_of_mim` (fine-tuning from it: config.init_from); otherwise it is an error."""
    from swin_jax.convert import simmim

    if any(k.startswith(("decode_head.", "auxiliary_head.")) for k in state):
        raise ConversionError(f"{source} holds a UPerNet segmenter (decode_head.*), and {registry.describe(model)} is "
                              f"a classifier: create the model as 'upernet_' + its name")
    if simmim.is_mim_state(state):
        if not encoder_of_mim:
            raise ConversionError(f"{source} holds a SimMIM model (mask token, decoder.0.*), and "
                                  f"{registry.describe(model)} is a classifier: load it into 'simmim_' + its name, "
                                  f"or fine-tune from its encoder with config.init_from")
        state = simmim.encoder_state(state, source)
    layout, state, buffers = layouts.to_timm_layout(state)
    _check_relative_index(buffers, source)
    tensors = {}
    for key, value in state.items():
        path = layouts.flax_path(key, np.ndim(value))
        tensors[path] = layouts.torch_to_flax(path, np.asarray(value))
    return fit_params(tensors, model, class_map=class_map, source=f"{source} ({layout} layout)", naming=TORCH_NAMES,
                      found=layouts.describe(state))


def fit_params(tensors: dict, model: Swin, *, class_map: np.ndarray | None = None, source: str = "checkpoint",
               naming: Naming = FLAX_NAMES, found: dict | None = None) -> dict:
    """Flax variables for `model` from `tensors`, {unrolled parameter path: array in our layout}.

    What a fine-tuning change of resolution or classes asks for is done on our own parameters:
    another window resamples the relative position bias tables (bicubic, as the official code); another
    patch grid resizes the absolute position embedding; a head with another number of classes is dropped
    with a warning (or, for a 21841-class head and a 1000-class model given `class_map`, narrowed to those
    1000 rows). Anything else that does not fit is an error that first names the registered model the
    tensors match (`found`: their hyper-parameters), then lists every missing, unexpected and
    mis-shaped tensor.
    """
    expected = expected_params(model)
    params, missing, mismatched = {}, [], []
    for path, spec in expected.items():
        shape = tuple(spec.shape)
        if path not in tensors:
            if path[0] == "head":
                log.warning("%s has no classifier head: %s is freshly initialised", source, naming.key(path))
                params[path] = _fresh_head(path, shape)
            else:
                missing.append(f"{naming.key(path)} (expected {naming.shape(path, shape)})")
            continue
        value = _fit(path, naming.key(path), np.asarray(tensors[path]), shape, class_map)
        if value is None:  # a head for other classes: keep the freshly initialised one
            value = _fresh_head(path, shape)
        if value.shape != shape:
            mismatched.append(f"{naming.key(path)}: expected {naming.shape(path, shape)}, "
                              f"found {naming.shape(path, tensors[path].shape)}")
            continue
        params[path] = jnp.array(value, spec.dtype)  # a copy: never a view of the caller's arrays
    unexpected = [f"{naming.key(p)} {naming.shape(p, tensors[p].shape)}" for p in set(tensors) - set(expected)]
    if missing or unexpected or mismatched:
        parts = [f"{source} does not fit {registry.describe(model)}:"]
        if found:
            matches = registry.matching_models(found)
            parts.append("the checkpoint looks like: " + ", ".join(f"{k}={v}" for k, v in found.items()) + "; " +
                         (f"it matches {', '.join(matches[:3])}" if matches else "no registered model matches it"))
        raise accounting_error(parts, missing, unexpected, mismatched)
    tree = unflatten_dict(params)
    return {"params": stack_blocks(tree) if model.scan_blocks else tree}


def saved_model(path: str):
    """(model, variables) of a converted directory or a train.py workdir (its best or latest step), else None."""
    from swin_jax import checkpoint
    from swin_jax.predict import is_training_workdir, load_workdir

    if checkpoint.is_pretrained_dir(path):
        return checkpoint.load_pretrained(path)[:2]
    if is_training_workdir(path):
        model, variables, _ = load_workdir(path)
        return model, jax.device_get(variables)  # host arrays: the caller may be inside another mesh
    return None


def load_weights(path: str, model: Swin, *, class_map: np.ndarray | None = None) -> dict:
    """Flax variables for `model` from a converted directory (`python -m swin_jax.convert`), a train.py
    workdir or a PyTorch checkpoint file, fitted to it as `fit_params` says: another window, resolution
    or head works; a SimMIM model gives its encoder."""
    from swin_jax.models.upernet import UPerNet

    from swin_jax.models.simmim import SimMIM

    if isinstance(model, UPerNet):
        from swin_jax.convert.segmentation import load_segmenter_weights

        return load_segmenter_weights(path, model)
    if isinstance(model, SimMIM):
        from swin_jax.convert.simmim import load_mim_weights

        return load_mim_weights(path, model)
    saved = saved_model(path)
    if saved:
        source, variables = saved
        params = variables["params"]
        if isinstance(source, UPerNet):
            raise ConversionError(f"{path} holds {registry.describe(source)}; a classifier cannot start from it")
        if isinstance(source, SimMIM):
            log.warning("%s is a SimMIM model: only its encoder is taken (mask token and decoder left out)", path)
            source, params = source.encoder, {k: v for k, v in params["encoder"].items() if k != "mask_token"}
        tensors = flatten_dict(jax.device_get(unstack_blocks(params) if source.scan_blocks else params))
        found = {f: getattr(source, f) for f in registry.SHAPE_FIELDS}
        found["version"] = registry.version(source)
        return fit_params(tensors, model, class_map=class_map, source=str(path), found=found)
    if not os.path.isfile(path):
        raise ConversionError(f"{path} is neither a converted model directory (config.json and params/) nor a "
                              f"checkpoint file")
    return convert_state_dict(read_state_dict(path), model, class_map=class_map, source=str(path),
                              encoder_of_mim=True)


def _fit(path, key, value, shape, class_map):
    """Resize or select what a fine-tuning change of resolution or classes asks for."""
    if value.shape == shape:
        return value
    if path[-1] == "relative_position_bias_table" and value.shape[1] == shape[1]:
        window = (int(round(np.sqrt(shape[0]))) + 1) // 2
        log.info("%s: resampling the bias table %s -> %s (bicubic)", key, value.shape, shape)
        return resample.resize_bias_table(value, window)
    if path[-1] == "absolute_pos_embed" and value.shape[-1] == shape[-1]:
        if value.ndim == 3:  # official and Hugging Face keep it flat: (1, H*W, C)
            n, side = value.shape[1], int(round(np.sqrt(value.shape[1])))
            grid = shape[1:3] if n == shape[1] * shape[2] else (side, side) if side * side == n else None
            if grid is None:
                return value
            value = value.reshape(1, *grid, shape[-1])
        if value.shape != shape:
            log.info("%s: resizing the position embedding %s -> %s (bicubic)", key, value.shape[1:3], shape[1:3])
            value = resample.resize_bicubic(value[0], shape[1:3])[None]
        return value
    if path[0] == "head" and value.shape[:-1] == shape[:-1]:  # same features, other classes
        found = value.shape[-1]
        if class_map is not None and found == IMAGENET_22K_CLASSES and shape[-1] == len(class_map):
            log.info("%s: narrowing the ImageNet-22K head to the %d mapped classes", key, len(class_map))
            return value[..., class_map]
        log.warning("%s: the checkpoint's head has %d classes, the model %d: the head is dropped and freshly "
                    "initialised", key, found, shape[-1])
        return None
    return value


def _fresh_head(path, shape):
    init = trunc_normal() if path[-1] == "kernel" else jax.nn.initializers.zeros
    return np.asarray(init(jax.random.key(0), tuple(shape), jnp.float32))


def _check_relative_index(buffers: dict, source: str):
    for key, index in buffers.items():
        if key.endswith("k_bias") and np.any(np.asarray(index)):
            raise ConversionError(f"{source}: buffer {key} is not zero; Swin V2 has no key bias, so this checkpoint "
                                  f"computes something else")
        if not key.endswith("relative_position_index"):
            continue
        n = int(round(np.sqrt(index.size)))
        window = int(round(np.sqrt(n)))
        ours = windows.relative_position_index(window)
        if window * window != n or not np.array_equal(np.asarray(index).reshape(n, n), ours):
            raise ConversionError(f"{source}: buffer {key} is not the standard relative position index of a "
                                  f"{window}x{window} window; this checkpoint indexes its bias table differently")


def load_pytorch_checkpoint(path, model, *, class_map=None) -> dict:
    """Flax variables for `model` from a PyTorch Swin checkpoint file (.pth/.pt/.bin/.safetensors); for a
    UPerNet segmenter, `segmentation.load_segmenter_checkpoint`'s; for SimMIM, `simmim.load_mim_checkpoint`'s."""
    from swin_jax.models.simmim import SimMIM
    from swin_jax.models.upernet import UPerNet

    if isinstance(model, UPerNet):
        from swin_jax.convert.segmentation import load_segmenter_checkpoint

        return load_segmenter_checkpoint(path, model)
    if isinstance(model, SimMIM):
        from swin_jax.convert.simmim import load_mim_checkpoint

        return load_mim_checkpoint(path, model)
    return convert_state_dict(read_state_dict(path), model, class_map=class_map, source=str(path))


def export_timm_state_dict(variables: dict, model: Swin) -> dict[str, np.ndarray]:
    """Flax variables -> a timm-layout state dict of float32 numpy arrays."""
    params = variables.get("params", variables)
    if model.scan_blocks:
        params = unstack_blocks(params)
    flat = flatten_dict(jax.device_get(params))
    if model.ape:
        raise ConversionError("timm's Swin has no absolute position embedding (ape=True cannot be exported)")
    return {layouts.timm_key(path): np.ascontiguousarray(layouts.flax_to_torch(path, np.asarray(v, np.float32)))
            for path, v in flat.items()}


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
