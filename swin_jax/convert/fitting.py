"""Fitting tensors to a Swin's parameter tree, with strict accounting: a PyTorch Swin state dict (any
layout) or a saved model's arrays -> a model's variables, fitted to another window, resolution or head
where fine-tuning asks for it; and a Swin's parameters back in timm's layout. Every kind of model
(classifier, segmenter, masked-image model) holds a Swin and goes through here for it."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from swin_jax.convert import layouts, resample
from swin_jax.convert.reader import ConversionError
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


def fit_params(tensors: dict, model: Swin, *, class_map: np.ndarray | None = None, source: str = "checkpoint",
               naming: Naming = FLAX_NAMES, found: dict | None = None, seed: int = 0) -> dict:
    """Flax variables for `model` from `tensors`, {unrolled parameter path: array in our layout}.

    What a fine-tuning change of resolution or classes asks for is done on our own parameters:
    another window resamples the relative position bias tables (bicubic, as the official code); another
    patch grid resizes the absolute position embedding; a head with another number of classes is dropped
    with a warning (or, for a 21841-class head and a 1000-class model given `class_map`, narrowed to those
    1000 rows); a fresh head is drawn from `seed`. Anything else that does not fit is an error that first names the registered model the
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
                params[path] = _fresh_head(path, shape, seed)
            else:
                missing.append(f"{naming.key(path)} (expected {naming.shape(path, shape)})")
            continue
        value = _fit(path, naming.key(path), np.asarray(tensors[path]), shape, class_map)
        if value is None:  # a head for other classes: keep the freshly initialised one
            value = _fresh_head(path, shape, seed)
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


def swin_params(state: dict, model: Swin, *, class_map: np.ndarray | None = None,
                source: str = "checkpoint", seed: int = 0) -> dict:
    """A PyTorch Swin state dict (official, timm or Hugging Face layout) -> {"params"} of the Swin `model`:
    buffers checked and set aside, keys renamed to our parameter paths, then fitted by `fit_params`."""
    layout, state, buffers = layouts.to_timm_layout(state)
    _check_relative_index(buffers, source)
    tensors = {}
    for key, value in state.items():
        path = layouts.flax_path(key, np.ndim(value))
        tensors[path] = layouts.torch_to_flax(path, np.asarray(value))
    return fit_params(tensors, model, class_map=class_map, source=f"{source} ({layout} layout)", naming=TORCH_NAMES,
                      found=layouts.describe(state), seed=seed)


def saved_swin_tensors(model: Swin, params: dict) -> tuple[dict, dict]:
    """(tensors by unrolled parameter path, the hyper-parameters that made them) of a saved Swin's
    parameters: what `fit_params` takes as `tensors` and `found`."""
    tensors = flatten_dict(jax.device_get(unstack_blocks(params) if model.scan_blocks else params))
    found = {f: getattr(model, f) for f in registry.SHAPE_FIELDS}
    found["version"] = registry.version(model)
    return tensors, found


def same_tree(target, variables) -> bool:
    """Whether `variables` has exactly the structure and shapes of `target` (e.g. `jax.eval_shape` of init)."""
    return jax.tree.structure(target) == jax.tree.structure(variables) and all(
        a.shape == b.shape for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(variables)))


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


def _fresh_head(path, shape, seed: int):
    init = trunc_normal() if path[-1] == "kernel" else jax.nn.initializers.zeros
    return np.asarray(init(jax.random.key(seed), tuple(shape), jnp.float32))


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
