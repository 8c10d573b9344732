"""The RoI heads of mmdet 2.11 and their test-time post-processing, with static shapes.

- `BBoxHead`: mmdet's ConvFCBBoxHead. Shared2FCBBoxHead (Mask R-CNN) is 0 convolutions and 2 fully
  connected layers of 1024; the official Swin Cascade heads are 4 convolutions (conv-BN-ReLU) and 1 fully
  connected layer. RoI features are flattened in PyTorch's (C, H, W) order, so the fully connected weights
  are the checkpoint's, transposed. Scores are softmax over the classes and a last background class.
- `MaskHead`: mmdet's FCNMaskHead: 4 conv-ReLU (3x3, 256), a 2x2 stride-2 transposed convolution and
  ReLU, a 1x1 classifier per class: 14x14 RoI features -> 28x28 mask logits per class.
- `detect`: mmdet's bbox_head.get_bboxes + multiclass_nms: decode per class, clip to the image, scores
  above score_thr, NMS within each class, the best max_per_img of all classes.
- `paste_masks`: mmdet's _do_paste_mask (F.grid_sample, bilinear, zero padding, align_corners=False)
  as two interpolation matrices, then the binary threshold; on the host, where image sizes vary.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models.detection import boxes as box_ops
from swin_jax.models.detection.fpn import ConvModule
from swin_jax.models.detection.nms import nms
from swin_jax.models.layers import ConvNormAct, Dtype, kaiming_normal_fan_out

_HIGHEST = jax.lax.Precision.HIGHEST


class BBoxHead(nn.Module):
    """(R, 7, 7, C) RoI features -> (class logits (R, num_classes + 1), deltas (R, 4) class-agnostic or
    (R, 4 * num_classes))."""

    num_classes: int = 80
    num_shared_convs: int = 0
    num_shared_fcs: int = 2
    conv_channels: int = 256
    fc_channels: int = 1024
    class_agnostic: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, rows: jnp.ndarray | None = None
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """`rows` (R,) bool: the RoIs BatchNorm's training statistics are over (the sampled ones)."""
        for i in range(self.num_shared_convs):
            x = ConvNormAct(self.conv_channels, 3, self.dtype, self.param_dtype, name=f"shared_convs_{i}")(
                x, train, rows)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # PyTorch's flatten(1) of (R, C, H, W)
        for i in range(self.num_shared_fcs):
            x = nn.relu(nn.Dense(self.fc_channels, kernel_init=nn.initializers.xavier_uniform(),
                                 bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype,
                                 name=f"shared_fcs_{i}")(x))
        logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01),
                          bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype,
                          name="fc_cls")(x)
        deltas = nn.Dense(4 if self.class_agnostic else 4 * self.num_classes, kernel_init=nn.initializers.normal(0.001),
                          bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype,
                          name="fc_reg")(x)
        return logits.astype(jnp.float32), deltas.astype(jnp.float32)


class Upsample2x(nn.Module):
    """PyTorch's ConvTranspose2d(kernel 2, stride 2): every input pixel becomes a 2x2 block of its own.
    Parameters `kernel` (2, 2, in, out) and `bias`."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", kaiming_normal_fan_out, (2, 2, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        n, h, w, _ = x.shape
        x = jnp.einsum("nhwc,abco->nhawbo", x, kernel.astype(self.dtype), precision=_HIGHEST)
        return x.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class MaskHead(nn.Module):
    """(N, 14, 14, C) RoI features -> (N, 28, 28, num_classes) mask logits."""

    num_classes: int = 80
    num_convs: int = 4
    channels: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for i in range(self.num_convs):
            x = nn.relu(ConvModule(self.channels, 3, self.dtype, self.param_dtype, kernel_init=kaiming_normal_fan_out,
                                   name=f"convs_{i}")(x))
        x = nn.relu(Upsample2x(self.channels, self.dtype, self.param_dtype, name="upsample")(x))
        x = nn.Conv(self.num_classes, (1, 1), kernel_init=kaiming_normal_fan_out, bias_init=nn.initializers.zeros,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="conv_logits")(x)
        return x.astype(jnp.float32)


def detect(rois: jnp.ndarray, valid: jnp.ndarray, logits: jnp.ndarray, deltas: jnp.ndarray, image_hw,
           stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2), score_thr: float = 0.05, iou_threshold: float = 0.5,
           max_per_img: int = 100) -> dict[str, jnp.ndarray]:
    """One image's detections from (R, 4) RoIs (`valid` (R,) marks the real ones), their class logits and
    deltas: {"boxes" (max_per_img, 4), "scores", "labels" (int32), "valid"}, best first."""
    num_classes = logits.shape[-1] - 1
    scores = jax.nn.softmax(logits, axis=-1)[:, :num_classes]
    boxes = box_ops.decode_deltas(rois, deltas, stds=stds, max_hw=image_hw)
    boxes = boxes.reshape(rois.shape[0], -1, 4)
    boxes = jnp.broadcast_to(boxes, (rois.shape[0], num_classes, 4))
    per_class = min(rois.shape[0], max_per_img)

    def one_class(class_boxes, class_scores):
        keep, kept = nms(class_boxes, class_scores, iou_threshold, per_class, valid & (class_scores > score_thr))
        return class_boxes[keep], jnp.where(kept, class_scores[keep], -jnp.inf)

    kept_boxes, kept_scores = jax.vmap(one_class, in_axes=(1, 1))(boxes, scores)  # (classes, per_class, ...)
    labels = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32)[:, None], kept_scores.shape)
    best, index = jax.lax.top_k(kept_scores.reshape(-1), min(max_per_img, kept_scores.size))
    found = jnp.isfinite(best)
    return {"boxes": jnp.where(found[:, None], kept_boxes.reshape(-1, 4)[index], 0.0),
            "scores": jnp.where(found, best, 0.0), "labels": jnp.where(found, labels.reshape(-1)[index], 0),
            "valid": found}


def paste_masks(probabilities, boxes, image_hw: tuple[int, int], threshold: float | None = 0.5) -> np.ndarray:
    """(N, M, M) mask probabilities of (N, 4) boxes -> (N, H, W) masks in an image of `image_hw`, as mmdet's
    _do_paste_mask: each pixel centre mapped into the box, sampled bilinearly with zero padding; bool at
    `threshold` (>=), or the probabilities with threshold None. On the host (image sizes vary), each
    mask only over the pixels it can reach: the box and the half cell of zero padding around it."""
    probabilities, boxes = np.asarray(probabilities, np.float32), np.asarray(boxes, np.float32)
    size = probabilities.shape[-1]
    out = np.zeros((len(boxes), *image_hw), np.float32 if threshold is None else bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        rows, top = _paste_weights(y0, y1, image_hw[0], size)
        cols, left = _paste_weights(x0, x1, image_hw[1], size)
        pasted = rows @ probabilities[i] @ cols.T
        out[i, top:top + len(rows), left:left + len(cols)] = pasted if threshold is None else pasted >= threshold
    return out


def _paste_weights(low, high, pixels: int, size: int) -> tuple[np.ndarray, int]:
    """The bilinear weights (pixels reached, M) of grid_sample (align_corners=False, zero padding) along
    one axis of a box from `low` to `high`, and the first pixel reached. A degenerate box samples the
    middle of the mask everywhere (mmdet sets its infinite coordinates to 0)."""
    extent = high - low
    if extent == 0:
        start, stop = 0, pixels
    else:  # a pixel centre farther than extent / (2 M) outside the box weighs nothing
        margin = abs(float(extent)) / (2 * size) + 1
        start = int(np.clip(np.floor(min(low, high) - margin), 0, pixels))
        stop = int(np.clip(np.ceil(max(low, high) + margin), start, pixels))
    centre = np.arange(start, stop, dtype=np.float32) + np.float32(0.5)
    normalised = (centre - low) / extent * 2 - 1 if extent != 0 else np.zeros_like(centre)
    position = ((normalised + 1) * size - 1) / 2  # grid_sample's unnormalisation
    return np.maximum(0.0, 1.0 - np.abs(position[:, None] - np.arange(size, dtype=np.float32)[None])), start
