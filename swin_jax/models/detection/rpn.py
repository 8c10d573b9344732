"""The region proposal network of mmdet 2.11's RPNHead: one 3x3 convolution shared by every pyramid level,
then per anchor a sigmoid objectness and four box deltas; and its test-time proposals, with static
shapes: per level the `nms_pre` best anchors, decoded (DeltaXYWH, clipped to the image), NMS within each
level, then the `max_per_img` best of all levels, padded with a validity mask.

Parameters: rpn_conv, rpn_cls, rpn_reg (convolutions with bias, normal(0, 0.01) as mmdet initialises them).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models.detection import boxes as box_ops
from swin_jax.models.detection.nms import nms
from swin_jax.models.layers import Dtype


class RPNHead(nn.Module):
    """Pyramid levels (NHWC) -> per level (objectness logits (B, H, W, A), deltas (B, H, W, 4A))."""

    num_anchors: int = 3
    channels: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, levels: Sequence[jnp.ndarray]) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
        def conv(features, kernel, name):
            pad = kernel // 2
            return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                           kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros,
                           dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        shared, cls, reg = conv(self.channels, 3, "rpn_conv"), conv(self.num_anchors, 1, "rpn_cls"), \
            conv(4 * self.num_anchors, 1, "rpn_reg")
        logits, deltas = [], []
        for x in levels:
            x = nn.relu(shared(x))
            logits.append(cls(x).astype(jnp.float32))
            deltas.append(reg(x).astype(jnp.float32))
        return logits, deltas


def level_anchors(level_hw: Sequence[tuple[int, int]], strides: Sequence[int] = (4, 8, 16, 32, 64),
                  ratios: Sequence[float] = (0.5, 1.0, 2.0), scales: Sequence[float] = (8.0,)) -> list[np.ndarray]:
    """mmdet's anchors of every level, (H_i * W_i * A, 4) each (base size = stride)."""
    return [box_ops.grid_anchors(hw, s, box_ops.base_anchors(s, ratios, scales)) for hw, s in zip(level_hw, strides)]


def proposals(logits: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray], anchors: Sequence[np.ndarray],
              image_hw, nms_pre: int = 1000, max_per_img: int = 1000, iou_threshold: float = 0.7
              ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One image's proposals, as mmdet 2.11's RPNHead._get_bboxes with min_bbox_size 0: logits (H, W, A)
    and deltas (H, W, 4A) per level, `image_hw` the (H, W) of the image before padding (boxes are clipped to
    it). Returns (boxes (max_per_img, 4), scores (max_per_img,), valid (max_per_img,)), best first."""
    level_boxes, level_scores = [], []
    for level_logits, level_deltas, level_anchors_ in zip(logits, deltas, anchors):
        scores = jax.nn.sigmoid(level_logits.reshape(-1))
        level_deltas = level_deltas.reshape(-1, 4)
        k = min(nms_pre, scores.shape[0]) if nms_pre > 0 else scores.shape[0]
        scores, index = jax.lax.top_k(scores, k)
        decoded = box_ops.decode_deltas(jnp.asarray(level_anchors_)[index], level_deltas[index], max_hw=image_hw)
        kept, valid = nms(decoded, scores, iou_threshold, min(k, max_per_img))
        level_boxes.append(jnp.where(valid[:, None], decoded[kept], 0.0))
        level_scores.append(jnp.where(valid, scores[kept], -jnp.inf))
    all_boxes, all_scores = jnp.concatenate(level_boxes), jnp.concatenate(level_scores)
    count = min(max_per_img, all_scores.shape[0])
    scores, index = jax.lax.top_k(all_scores, count)
    boxes, valid = all_boxes[index], jnp.isfinite(scores)
    pad = max_per_img - count
    return (jnp.pad(boxes, ((0, pad), (0, 0))), jnp.pad(jnp.where(valid, scores, 0.0), (0, pad)),
            jnp.pad(valid, (0, pad)))
