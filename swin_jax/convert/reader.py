"""Reading PyTorch checkpoint files into flat {key: numpy array} dicts, safely."""

from __future__ import annotations

import os

import numpy as np


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file, keys and shapes at fault."""


_WRAPPERS = ("state_dict", "model", "model_state", "model_ema", "module", "params")


def _unwrap(obj, path):
    """Find the tensor dict inside a training checkpoint ({'model': ..., 'optimizer': ...})."""
    while isinstance(obj, dict):
        if obj and all(hasattr(v, "shape") for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    raise ConversionError(f"{path}: found no dict of tensors (looked at the top level and under "
                          f"{', '.join(repr(k) for k in _WRAPPERS)})")


def _strip_prefix(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a `.pth`/`.pt`/`.bin`/`.ckpt` (torch, weights only) or `.safetensors` file.

    Pickle-based files are opened with `torch.load(weights_only=True)`, which refuses to run code
    from the file. Wrappers (`model`, `state_dict`, ...) and a `module.` prefix are removed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    elif path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        state = _read_torch(path)
    else:
        raise ConversionError(f"{path}: unknown checkpoint format; expected .pth, .pt, .bin, .ckpt or .safetensors")
    return _strip_prefix(state, "module.")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def _read_torch(path: str) -> dict[str, np.ndarray]:
    import pickle
    import zipfile

    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading PyTorch pickle files (.pth, .pt, .bin, .ckpt) needs PyTorch "
                              f"(pip install torch); .safetensors files are read without it") from None

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(f"{path}: refused to load: the file holds pickled objects other than tensors, and "
                              f"checkpoints are never allowed to run code ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(e).splitlines()[0]}") from None
    state = _unwrap(obj, path)
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}
