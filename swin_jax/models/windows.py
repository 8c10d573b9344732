"""Window bookkeeping for Swin attention: partitioning, relative position indices and shift masks.

Everything that depends only on static shapes is computed here with NumPy and cached, so that it
enters a traced computation as a constant: the masks and indices are built once per shape at trace
time, never per step.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# The official implementation fills the attention mask with -100 rather than -inf. Keeping the same
# value keeps logits identical to PyTorch (exp(-100) is not exactly zero in float32).
MASK_VALUE = -100.0


def effective_window(height: int, width: int, window_size: int, shift_size: int) -> tuple[int, int]:
    """Window and shift actually used on a (height, width) map.

    As in the official code, a map no larger than the window is attended as one window, unshifted.
    """
    if min(height, width) <= window_size:
        return min(height, width), 0
    return window_size, shift_size


def window_partition(x: jnp.ndarray, window: int) -> jnp.ndarray:
    """(B, H, W, C) with H and W multiples of `window` -> (B * num_windows, window * window, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: jnp.ndarray, window: int, height: int, width: int) -> jnp.ndarray:
    """Inverse of `window_partition`: (B * num_windows, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


@functools.lru_cache(maxsize=None)
def shifted_window_order(height: int, width: int, window: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, inverse) of the H * W tokens of a map: token `order[j]` of the flattened map is token j of
    the cyclically shifted map's windows, one after the other (what roll + window_partition gives), and
    `inverse` takes the windows' tokens back to the map, the reverse shift included."""
    if height % window or width % window:
        raise ValueError(f"map {height}x{width} is not a multiple of window {window}")
    index = np.roll(np.arange(height * width).reshape(height, width), (-shift, -shift), axis=(0, 1))
    order = index.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3).reshape(-1)
    return _read_only(order.astype(np.int32)), _read_only(np.argsort(order).astype(np.int32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def permute_tokens(x: jnp.ndarray, order: np.ndarray, inverse: np.ndarray) -> jnp.ndarray:
    """x[:, order] for (B, tokens, C) x and a permutation `order` whose inverse is `inverse`.

    One gather does the shift and the window partition (or, with the inverse, the reverse and the
    shift back) in one pass over the activations, where roll then partition are two; the gradient is
    the inverse gather, not the scatter-add that differentiating a gather gives.
    """
    return jnp.take(x, order, axis=1)


def _permute_fwd(x, order, inverse):
    return permute_tokens(x, order, inverse), None


def _permute_bwd(order, inverse, _, g):
    return (jnp.take(g, inverse, axis=1),)


permute_tokens.defvjp(_permute_fwd, _permute_bwd)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # cached and shared: nobody may edit it in place
    return array


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int, table_window: int | None = None) -> np.ndarray:
    """Index into a ((2T-1)^2, heads) bias table for every query/key pair of a window.

    `table_window` (T) is the window the table was built for; a smaller `window` (a map smaller than
    the configured window) reads the same relative offsets from the larger table. For T == window
    this is exactly the official `relative_position_index` buffer.
    """
    table_window = window if table_window is None else table_window
    if window > table_window:
        raise ValueError(f"window {window} is larger than the bias table's window {table_window}")
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, N, N), offsets in [-(w-1), w-1]
    rows = relative[0] + table_window - 1
    cols = relative[1] + table_window - 1
    return _read_only((rows * (2 * table_window - 1) + cols).astype(np.int32))


@functools.lru_cache(maxsize=None)
def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """Additive attention mask (num_windows, N, N) for a map cyclically shifted by `shift`.

    After the roll, windows on the bottom and right edges hold tokens from separate parts of the
    image; tokens from different parts get MASK_VALUE, everything else 0. (height, width) is the
    padded map, a multiple of `window`.
    """
    if height % window or width % window:
        raise ValueError(f"map {height}x{width} is not a multiple of window {window}")
    region = np.zeros((height, width), np.int32)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            region[rows, cols] = label
            label += 1
    region = region.reshape(height // window, window, width // window, window)
    region = region.transpose(0, 2, 1, 3).reshape(-1, window * window)
    mask = np.where(region[:, :, None] != region[:, None, :], MASK_VALUE, 0.0)
    return _read_only(mask.astype(np.float32))


@functools.lru_cache(maxsize=None)
def continuous_coords_table(window: int, pretrained_window: int = 0) -> np.ndarray:
    """Swin V2's log-spaced relative coordinates, ((2T-1)^2, 2) float32, for a T x T window.

    Row r * (2T-1) + c holds the offset (r - T + 1, c - T + 1), so `relative_position_index(w, T)`
    indexes it as it indexes a V1 bias table. Offsets are divided by `pretrained_window - 1` (or by
    T - 1 when it is 0), scaled to [-8, 8] and mapped to sign(x) * log2(|x| + 1) / 3, in float32
    step by step as the official code computes its `relative_coords_table` buffer.
    """
    offsets = np.arange(-(window - 1), window, dtype=np.float32)
    table = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), axis=-1)  # (2T-1, 2T-1, 2)
    divisor = pretrained_window - 1 if pretrained_window > 0 else window - 1
    table = table / np.float32(max(divisor, 1))  # max(.., 1) as timm: a window of 1 has only offset 0
    table = table * np.float32(8)
    table = np.sign(table) * np.log2(np.abs(table) + np.float32(1)) / np.float32(math.log2(8))
    return _read_only(table.reshape(-1, 2).astype(np.float32))
