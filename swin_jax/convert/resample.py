"""Resizing position tables exactly as PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`.

`jax.image.resize` uses the Keys kernel with a = -0.5 and antialiasing; PyTorch uses a = -0.75 and
clamps source indices at the border. Checkpoints were resampled the PyTorch way, so we do the same.
"""

from __future__ import annotations

import numpy as np

_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t, PyTorch's kernel."""

    def near(x):  # |x| <= 1
        return ((_A + 2) * x - (_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix M such that M @ v resizes v like torch's bicubic interpolate."""
    scale = in_size / out_size
    src = (np.arange(out_size) + 0.5) * scale - 0.5  # not clamped at 0 for cubic, as in PyTorch
    base = np.floor(src)
    weights = _cubic_weights(src - base)
    matrix = np.zeros((out_size, in_size))
    for tap in range(4):
        index = np.clip(base.astype(int) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), index), weights[:, tap])
    return matrix


def resize_bicubic(grid: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W, C) grid to (out_h, out_w, C) as torch bicubic (align_corners=False) does."""
    rows = bicubic_matrix(grid.shape[0], out_hw[0])
    cols = bicubic_matrix(grid.shape[1], out_hw[1])
    out = np.einsum("oh,hwc,pw->opc", rows, grid.astype(np.float64), cols)
    return out.astype(grid.dtype)


def resize_bias_table(table: np.ndarray, window: int) -> np.ndarray:
    """((2W-1)^2, heads) relative position bias table -> one for `window`, the official way."""
    old = int(round(np.sqrt(table.shape[0])))
    if old * old != table.shape[0]:
        raise ValueError(f"bias table of shape {table.shape} is not square over relative offsets")
    new = 2 * window - 1
    if old == new:
        return table
    heads = table.shape[1]
    return resize_bicubic(table.reshape(old, old, heads), (new, new)).reshape(new * new, heads)
