"""Greedy non-maximum suppression with static shapes: a fixed number of candidates in, a fixed number of
kept indices out with a validity mask, so one compiled function serves every image.

The rule is mmcv's and torchvision's: visit the boxes by decreasing score; a box is kept unless a kept
box overlaps it with IoU > threshold. Invalid candidates (padding) are never kept and suppress nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from swin_jax.models.detection.boxes import box_area


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold: float, max_output: int,
        valid: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(indices (max_output,) int32 into `boxes`, by decreasing score; valid (max_output,) bool) of the
    boxes greedy NMS keeps among (N, 4) `boxes` with (N,) `scores`. Unused output slots hold index 0
    and valid False."""
    boxes, scores = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores)
    n = boxes.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid)
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
    boxes, valid = boxes[order], valid[order]
    areas = box_area(boxes)

    def visit(i, keep):
        # Box i survives if no kept box before it overlaps it by more than the threshold.
        lt = jnp.maximum(boxes[i, :2], boxes[:, :2])
        rb = jnp.minimum(boxes[i, 2:], boxes[:, 2:])
        wh = jnp.maximum(rb - lt, 0.0)
        inter = wh[:, 0] * wh[:, 1]
        iou = inter / (areas[i] + areas - inter)
        suppressed = jnp.any(keep & (iou > iou_threshold))
        return keep.at[i].set(valid[i] & ~suppressed)

    keep = jax.lax.fori_loop(0, n, visit, jnp.zeros((n,), bool))
    # The kept positions in score order, first max_output of them.
    rank = jnp.where(keep, jnp.arange(n), n)
    positions = jnp.sort(rank)[:max_output] if max_output <= n else jnp.pad(jnp.sort(rank), (0, max_output - n),
                                                                             constant_values=n)
    kept = positions < n
    return jnp.where(kept, order[jnp.minimum(positions, n - 1)], 0).astype(jnp.int32), kept


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, groups: jnp.ndarray, num_groups: int,
                iou_threshold: float, max_output: int, valid: jnp.ndarray | None = None
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """NMS within each group (class or level) independently, then the `max_output` best survivors of all
    groups by score, as mmcv's batched_nms followed by taking its first `max_output`: (indices, valid)."""
    boxes, scores, groups = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores), jnp.asarray(groups)
    n = boxes.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid)
    per_group = min(n, max_output)

    def one_group(g):
        return nms(boxes, scores, iou_threshold, per_group, valid & (groups == g))

    indices, kept = jax.vmap(one_group)(jnp.arange(num_groups))
    indices, kept = indices.reshape(-1), kept.reshape(-1)
    order = jnp.argsort(jnp.where(kept, -scores[indices], jnp.inf), stable=True)[:max_output]
    return indices[order], kept[order]
