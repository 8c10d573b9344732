"""RoIAlign as mmcv's (and torchvision's) `aligned=True`, with `sampling_ratio=0` reproduced exactly under
jit, and mmdet's multi-level RoI extractor.

mmcv averages, in every output bin, the bilinear samples of a regular g_h x g_w grid, where g = ceil(bin
size) depends on the box: a dynamic loop. A sample's bilinear weights split into a row part and a
column part, and so does the validity test (a sample outside [-1, H] x [-1, W] counts zero), so the
average over the grid is A F B^T: A (out, H) holds each bin's averaged row weights and B (out, W) its
column weights. A and B are built from a bounded sample axis with a mask (g never exceeds the map's
size over the output size), and the product is two matrix multiplications: static shapes and exact
for every box, small or large, whatever its sample count.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from swin_jax.models.detection.boxes import roi_levels

_HIGHEST = jax.lax.Precision.HIGHEST


def _axis_weights(start: jnp.ndarray, length: jnp.ndarray, out: int, size: int,
                  sampling_ratio: int) -> jnp.ndarray:
    """(R, out, size): for each RoI and bin along one axis, the weight of every row (or column) in the
    average of the bin's bilinear samples, the 1 / grid count included."""
    # A true division, as PyTorch's kernel divides: XLA would multiply by a rounded 1 / out instead.
    bin_size = length / jax.lax.optimization_barrier(jnp.full_like(length, out))
    if sampling_ratio > 0:
        grid, max_grid = jnp.full_like(length, sampling_ratio, dtype=jnp.int32), sampling_ratio
    else:
        grid = jnp.ceil(bin_size).astype(jnp.int32)
        max_grid = max(1, math.ceil((size + 1) / out))  # a box within the map's extent needs no more
    index = jnp.arange(max_grid, dtype=jnp.float32)
    bins = jnp.arange(out, dtype=jnp.float32)
    # mmcv's order of operations: start + p * bin + (i + 0.5) * bin / grid. Compiled, XLA fuses the first
    # product and sum into one multiply-add, rounded once: a position near 160 may move by its last bit
    # (1.5e-5), which moves a sample's value by that much times the map's local slope.
    pos = (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]
           + (index[None, None, :] + 0.5) * bin_size[:, None, None] / jnp.maximum(grid, 1)[:, None, None])
    used = (index[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = jnp.clip(pos, 0.0, size - 1)
    low = jnp.floor(pos)
    frac = pos - low
    low = low.astype(jnp.int32)
    high = jnp.minimum(low + 1, size - 1)
    scale = used / jnp.maximum(grid, 1)[:, None, None].astype(jnp.float32)
    r, p, s = jnp.meshgrid(jnp.arange(pos.shape[0]), jnp.arange(out), jnp.arange(max_grid), indexing="ij")
    weights = jnp.zeros((pos.shape[0], out, size), jnp.float32)
    weights = weights.at[r, p, low].add((1.0 - frac) * scale)
    return weights.at[r, p, high].add(frac * scale)


def roi_align(features: jnp.ndarray, boxes: jnp.ndarray, output_size: int, spatial_scale: float,
              sampling_ratio: int = 0, aligned: bool = True, chunk: int = 128) -> jnp.ndarray:
    """mmcv's RoIAlign (avg) of one image: (H, W, C) features, (R, 4) boxes in image pixels ->
    (R, output_size, output_size, C). `chunk` RoIs are interpolated at a time (memory, not results)."""
    height, width, _ = features.shape
    offset = 0.5 if aligned else 0.0
    start_x, start_y, end_x, end_y = (boxes[:, i] * spatial_scale - offset for i in range(4))
    roi_w, roi_h = end_x - start_x, end_y - start_y
    if not aligned:  # the legacy mode forces a box of at least one pixel
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    rows = _axis_weights(start_y, roi_h, output_size, height, sampling_ratio)
    cols = _axis_weights(start_x, roi_w, output_size, width, sampling_ratio)
    features = features.astype(jnp.float32)

    def interpolate(weights):
        a, b = weights
        t = jnp.einsum("rph,hwc->rpwc", a, features, precision=_HIGHEST)
        return jnp.einsum("rpwc,rqw->rpqc", t, b, precision=_HIGHEST)

    return _map_in_chunks(interpolate, (rows, cols), chunk)


def _map_in_chunks(fn, per_box: tuple, chunk: int) -> jnp.ndarray:
    """fn over `chunk` boxes at a time (jax.lax.map, for memory): `per_box` arrays share a leading box
    axis, padded to a multiple of `chunk`; the results concatenated, padding dropped."""
    count = per_box[0].shape[0]
    chunk = max(1, min(chunk, count))
    pad = -count % chunk
    per_box = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(-1, chunk, *a.shape[1:]) for a in per_box)
    out = jax.lax.map(fn, per_box)
    return out.reshape(-1, *out.shape[2:])[:count]


def multilevel_roi_align(features: Sequence[jnp.ndarray], boxes: jnp.ndarray, output_size: int,
                         strides: Sequence[int], finest_scale: float = 56.0, sampling_ratio: int = 0,
                         chunk: int = 128) -> jnp.ndarray:
    """mmdet's SingleRoIExtractor for one image: each (R, 4) box pooled from the FPN level its scale maps to
    (`roi_levels`), features[i] (H_i, W_i, C) at stride strides[i] -> (R, output_size, output_size, C)."""
    levels = roi_levels(boxes, len(features), finest_scale)
    out = jnp.zeros((boxes.shape[0], output_size, output_size, features[0].shape[-1]), jnp.float32)
    for i, (level_map, stride) in enumerate(zip(features, strides)):
        pooled = roi_align(level_map, boxes, output_size, 1.0 / stride, sampling_ratio, chunk=chunk)
        out = jnp.where((levels == i)[:, None, None, None], pooled, out)
    return out


def crop_and_resize(masks: jnp.ndarray, index: jnp.ndarray, boxes: jnp.ndarray, output_size: int,
                    chunk: int = 32) -> jnp.ndarray:
    """mmdet's BitmapMasks.crop_and_resize (before binarising): box r of the (R, 4) boxes cut from mask
    index[r] of the (G, H, W) masks by RoIAlign (aligned, sampling_ratio 0, scale 1) -> (R, output_size,
    output_size) float32. Each box reads only its own mask; `chunk` boxes at a time."""
    masks = jnp.asarray(masks)
    _, height, width = masks.shape
    start_x, start_y, end_x, end_y = (boxes[:, i] - 0.5 for i in range(4))
    rows = _axis_weights(start_y, end_y - start_y, output_size, height, 0)
    cols = _axis_weights(start_x, end_x - start_x, output_size, width, 0)

    def interpolate(args):
        a, b, i = args
        return jnp.einsum("rph,rhw,rqw->rpq", a, masks[i].astype(jnp.float32), b, precision=_HIGHEST)

    return _map_in_chunks(interpolate, (rows, cols, jnp.asarray(index)), chunk)
