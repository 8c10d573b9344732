"""Mask R-CNN and Cascade Mask R-CNN on a Swin backbone, as the official Swin detection code configures
them (mmdet 2.11: configs/_base_/models/mask_rcnn_swin_fpn.py, cascade_mask_rcnn_swin_fpn.py and the
configs/swin/ files), at test time, with static shapes.

  images (B, H, W, 3), padded -> Swin stage maps (each through its norm) -> FPN (5 levels) -> RPN
  proposals per image (max_per_img of them, padded) -> per box stage: RoIAlign 7x7 from the level of each
  box, the box head; Cascade refines the boxes between stages with the stage's argmax class and averages
  the class scores of the stages -> per-class NMS, the best 100 -> RoIAlign 14x14 of the detections,
  the mask head(s), sigmoid (Cascade: the mean of its three heads), the detected class's mask.

`image_hw` (B, 2) gives each image's size before padding: proposals and detections are clipped to it,
as mmdet clips to `img_shape`. Outputs are in the input's pixels; `paste_masks` and the predict and
evaluation code turn them into full-image masks at the original size.

Parameter names follow the checkpoints: backbone, neck (lateral_convs_i, fpn_convs_i), rpn_head
(rpn_conv, rpn_cls, rpn_reg), bbox_head / mask_head (Cascade: bbox_head_k / mask_head_k).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from swin_jax.models.detection import boxes as box_ops
from swin_jax.models.detection import rpn
from swin_jax.models.detection.fpn import FPN
from swin_jax.models.detection.roi_align import multilevel_roi_align
from swin_jax.models.detection.roi_heads import BBoxHead, MaskHead, detect
from swin_jax.models.layers import Dtype
from swin_jax.models.swin import Swin

ROI_STRIDES = (4, 8, 16, 32)  # RoIs are pooled from the first four pyramid levels
ANCHOR_STRIDES = (4, 8, 16, 32, 64)
MASK_RCNN_STDS = ((0.1, 0.1, 0.2, 0.2),)
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


class TwoStageDetector(nn.Module):
    """Swin + FPN + RPN + box stages (one: Mask R-CNN; three: Cascade) + mask heads.

    `stage_stds` has one entry per box stage (the DeltaXYWH coder's stds); `num_shared_convs` and
    `num_shared_fcs` shape every box head (Mask R-CNN: 0 and 2; the official Swin Cascade: 4 and 1, with
    BatchNorm). `rpn_nms_pre`, `rpn_max_per_img`, `rpn_iou`, `score_thr`, `iou_threshold`, `max_per_img`
    are mmdet's test_cfg.
    """

    backbone: Swin
    num_classes: int = 80
    channels: int = 256
    stage_stds: Sequence[Sequence[float]] = MASK_RCNN_STDS
    num_shared_convs: int = 0
    num_shared_fcs: int = 2
    fc_channels: int = 1024
    class_agnostic: bool = False
    mask_channels: int = 256
    rpn_nms_pre: int = 1000
    rpn_max_per_img: int = 1000
    rpn_iou: float = 0.7
    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    roi_chunk: int = 128  # RoIs interpolated at a time by RoIAlign (memory, not results)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.backbone.input_hw

    @property
    def in_chans(self) -> int:
        return self.backbone.in_chans

    @property
    def cascade(self) -> bool:
        return len(self.stage_stds) > 1

    def _suffix(self, k: int) -> str:
        return f"_{k}" if self.cascade else ""

    @nn.compact
    def __call__(self, images: jnp.ndarray, image_hw: jnp.ndarray | None = None,
                 train: bool = False) -> dict[str, jnp.ndarray]:
        batch, height, width = images.shape[:3]
        if image_hw is None:
            image_hw = jnp.tile(jnp.array([[height, width]], jnp.int32), (batch, 1))
        image_hw = jnp.asarray(image_hw).astype(jnp.float32)
        levels = FPN(self.channels, len(ANCHOR_STRIDES), self.dtype, self.param_dtype, name="neck")(
            self.backbone(images, train=train))
        logits, deltas = rpn.RPNHead(3, self.channels, self.dtype, self.param_dtype, name="rpn_head")(levels)
        anchors = rpn.level_anchors([level.shape[1:3] for level in levels], ANCHOR_STRIDES)
        proposals = jax.vmap(lambda lg, dl, hw: rpn.proposals(lg, dl, anchors, hw, self.rpn_nms_pre,
                                                               self.rpn_max_per_img, self.rpn_iou))
        rois, _, valid = proposals(logits, deltas, image_hw)

        def pooled(boxes, size):
            """(B, N, 4) boxes -> (B * N, size, size, C) features from each box's pyramid level."""
            out = jax.vmap(lambda maps, b: multilevel_roi_align(maps, b, size, ROI_STRIDES, chunk=self.roi_chunk))(
                list(levels[:len(ROI_STRIDES)]), boxes)
            return out.reshape(-1, size, size, out.shape[-1]).astype(self.dtype)

        stage_logits = []
        for k, stds in enumerate(self.stage_stds):
            head = BBoxHead(self.num_classes, self.num_shared_convs, self.num_shared_fcs, self.channels,
                            self.fc_channels, self.class_agnostic, self.dtype, self.param_dtype,
                            name=f"bbox_head{self._suffix(k)}")
            cls, reg = head(pooled(rois, 7), train)
            cls, reg = cls.reshape(batch, -1, cls.shape[-1]), reg.reshape(batch, -1, reg.shape[-1])
            stage_logits.append(cls)
            if k < len(self.stage_stds) - 1:  # mmdet's regress_by_class with the stage's best class
                rois = jax.vmap(lambda r, c, d, hw: _regress(r, c, d, hw, stds, self.class_agnostic))(
                    rois, cls, reg, image_hw)
        mean_logits = sum(stage_logits) / len(stage_logits)
        detections = jax.vmap(lambda r, v, c, d, hw: detect(r, v, c, d, hw, self.stage_stds[-1], self.score_thr,
                                                             self.iou_threshold, self.max_per_img))(
            rois, valid, mean_logits, reg, image_hw)

        features = pooled(detections["boxes"], 14)
        probabilities = [jax.nn.sigmoid(MaskHead(self.num_classes, 4, self.mask_channels, self.dtype, self.param_dtype,
                                                 name=f"mask_head{self._suffix(k)}")(features))
                         for k in range(len(self.stage_stds))]
        masks = (sum(probabilities) / len(probabilities)).reshape(batch, self.max_per_img, 28, 28, self.num_classes)
        labels = detections["labels"]
        detections["masks"] = jnp.take_along_axis(masks, labels[:, :, None, None, None], axis=-1)[..., 0]
        return detections


def _regress(rois, logits, deltas, image_hw, stds, class_agnostic):
    """mmdet's BBoxHead.regress_by_class: the boxes moved by the deltas of their best non-background class."""
    if not class_agnostic:
        label = jnp.argmax(logits[:, :-1], axis=-1)
        deltas = jnp.take_along_axis(deltas.reshape(deltas.shape[0], -1, 4), label[:, None, None], axis=1)[:, 0]
    return box_ops.decode_deltas(rois, deltas, stds=stds, max_hw=image_hw)
