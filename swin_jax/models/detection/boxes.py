"""Box operations of the two-stage detectors, as mmdet 2.x computes them: anchors, the DeltaXYWH coder,
IoU, clipping and the FPN level of a RoI. Boxes are (x1, y1, x2, y2) in image pixels, float32; every
function is pure and shape-static, so it runs under `jax.jit` and `vmap`.

Anchors are NumPy constants (they depend on static shapes only); the rest are jnp functions.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

# mmdet's DeltaXYWHBBoxCoder clamps log-scale deltas at |log(16 / 1000)|: no box grows or shrinks by more
# than a factor of 62.5 in one step.
WH_RATIO_CLIP = 16 / 1000


def base_anchors(base_size: float, ratios: Sequence[float] = (0.5, 1.0, 2.0), scales: Sequence[float] = (8.0,),
                 center_offset: float = 0.0) -> np.ndarray:
    """mmdet's AnchorGenerator base anchors of one level, (len(ratios) * len(scales), 4), ratio-major:
    centred on `center_offset * base_size`, with h / w = ratio and area (base_size * scale)^2, not rounded
    (torchvision's generator rounds them)."""
    ratios = np.asarray(ratios, np.float32)
    scales = np.asarray(scales, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    center = np.float32(center_offset * base_size)
    return np.stack([center - 0.5 * ws, center - 0.5 * hs, center + 0.5 * ws, center + 0.5 * hs],
                    axis=-1).astype(np.float32)


def grid_anchors(feature_hw: tuple[int, int], stride: int, base: np.ndarray) -> np.ndarray:
    """All anchors of a (H, W) feature map, (H * W * A, 4): cell-major (row by row), the A base anchors of
    a cell together, shifted by the cell's top-left corner times `stride` (mmdet's order)."""
    h, w = feature_hw
    shift_x = np.arange(w, dtype=np.float32) * stride
    shift_y = np.arange(h, dtype=np.float32) * stride
    xx, yy = np.meshgrid(shift_x, shift_y)
    shifts = np.stack([xx.ravel(), yy.ravel(), xx.ravel(), yy.ravel()], axis=-1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def decode_deltas(boxes: jnp.ndarray, deltas: jnp.ndarray, means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), max_hw: tuple | jnp.ndarray | None = None,
                  wh_ratio_clip: float = WH_RATIO_CLIP) -> jnp.ndarray:
    """mmdet's delta2bbox: (..., 4) boxes moved by (..., 4k) deltas (k boxes per box, e.g. one per class)
    -> (..., 4k) boxes; log-scale deltas clamped, then clipped to [0, W] x [0, H] when `max_hw` is given."""
    k = deltas.shape[-1] // 4
    deltas = deltas.reshape(*deltas.shape[:-1], k, 4) * jnp.asarray(stds, deltas.dtype) + jnp.asarray(means, deltas.dtype)
    dx, dy, dw, dh = (deltas[..., i] for i in range(4))
    x1, y1, x2, y2 = (boxes[..., None, i] for i in range(4))
    px, py = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    pw, ph = x2 - x1, y2 - y1
    max_ratio = abs(math.log(wh_ratio_clip))
    dw = jnp.clip(dw, -max_ratio, max_ratio)
    dh = jnp.clip(dh, -max_ratio, max_ratio)
    gw, gh = pw * jnp.exp(dw), ph * jnp.exp(dh)
    gx, gy = px + pw * dx, py + ph * dy
    out = jnp.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], axis=-1)
    if max_hw is not None:
        out = clip_boxes(out, max_hw)
    return out.reshape(*out.shape[:-2], 4 * k)


def encode_deltas(boxes: jnp.ndarray, targets: jnp.ndarray, means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jnp.ndarray:
    """mmdet's bbox2delta, the inverse of `decode_deltas`: the (..., 4) deltas that move `boxes` onto
    `targets`, normalised by `means` and `stds`."""
    px, py = (boxes[..., 0] + boxes[..., 2]) * 0.5, (boxes[..., 1] + boxes[..., 3]) * 0.5
    pw, ph = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    gx, gy = (targets[..., 0] + targets[..., 2]) * 0.5, (targets[..., 1] + targets[..., 3]) * 0.5
    gw, gh = targets[..., 2] - targets[..., 0], targets[..., 3] - targets[..., 1]
    deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], axis=-1)
    return (deltas - jnp.asarray(means, deltas.dtype)) / jnp.asarray(stds, deltas.dtype)


def clip_boxes(boxes: jnp.ndarray, max_hw) -> jnp.ndarray:
    """Boxes (..., 4) clipped to [0, W] x [0, H] of `max_hw` = (H, W) (static or traced)."""
    h, w = max_hw[0], max_hw[1]
    upper = jnp.stack([jnp.asarray(w, boxes.dtype), jnp.asarray(h, boxes.dtype)] * 2)
    return jnp.minimum(jnp.maximum(boxes, 0.0), upper)


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes -> (N, M), as mmcv's and torchvision's NMS compute it (no
    +1 on widths); 0 where the union is empty."""
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def aligned_giou(a: jnp.ndarray, b: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """Generalised IoU of (..., 4) boxes with (..., 4) boxes element by element, as mmdet's bbox_overlaps
    (mode "giou", is_aligned): union and enclosing area floored at `eps`."""
    wh = jnp.maximum(jnp.minimum(a[..., 2:], b[..., 2:]) - jnp.maximum(a[..., :2], b[..., :2]), 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = jnp.maximum(box_area(a) + box_area(b) - inter, eps)
    enclosing = jnp.maximum(jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2]), 0.0)
    enclosing = jnp.maximum(enclosing[..., 0] * enclosing[..., 1], eps)
    return inter / union - (enclosing - union) / enclosing


def roi_levels(boxes: jnp.ndarray, num_levels: int, finest_scale: float = 56.0) -> jnp.ndarray:
    """mmdet's SingleRoIExtractor.map_roi_levels: floor(log2(sqrt(area) / finest_scale + 1e-6)), clamped to
    0..num_levels - 1 (int32)."""
    scale = jnp.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    level = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
    return jnp.clip(level, 0, num_levels - 1).astype(jnp.int32)
