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

Training (`targets` given, mmdet's forward_train with the official train_cfg): the RPN's targets over
every anchor and its loss; proposals from the detached RPN outputs (train_cfg.rpn_proposal); per box
stage the proposals assigned and sampled with the ground truth added, the box head's loss on the sampled
RoIs and the mask head's on the positive ones (28x28 targets cut from the instance masks); Cascade
re-assigns each stage from the previous stage's refined boxes (its ground-truth RoIs left out) and
weighs the stages' losses. Random sampling draws from `sampling_key` (else the "sampling" RNG stream)
through `targets.sampling_priorities`; `targets.*` hold the rules. Returns the losses by name (mmdet's: loss_rpn_cls, loss_rpn_bbox, loss_cls, loss_bbox,
loss_mask; Cascade: s{k}.loss_*).

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
from swin_jax.models.detection import targets as tgt
from swin_jax.models.detection.fpn import FPN
from swin_jax.models.detection.roi_align import multilevel_roi_align
from swin_jax.models.detection.roi_heads import BBoxHead, MaskHead, detect
from swin_jax.models.layers import Dtype
from swin_jax.models.swin import Swin

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
    # train_cfg: proposals for the box heads, RPN anchors allowed outside the image (-1: all), RoIs sampled
    # per image and stage; each stage's IoU threshold and loss weight; the Cascade's GIoU loss weight
    rpn_train_nms_pre: int = 2000
    rpn_train_max_per_img: int = 1000
    rpn_allowed_border: int = -1
    rpn_samples: int = tgt.RPN_SAMPLE["num"]
    rcnn_samples: int = tgt.RCNN_SAMPLE["num"]
    stage_ious: Sequence[float] = (0.5,)
    stage_loss_weights: Sequence[float] = (1.0,)
    giou_weight: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.backbone.input_hw

    @property
    def in_chans(self) -> int:
        return self.backbone.in_chans

    @property
    def roi_strides(self) -> tuple[int, ...]:
        """The strides of the backbone's stage maps, the pyramid levels RoIs are pooled from: (4, 8, 16, 32)
        for the official patch 4 and four stages."""
        return tuple(self.backbone.patch_size * 2 ** i for i in range(len(self.backbone.depths)))

    @property
    def anchor_strides(self) -> tuple[int, ...]:
        """Every pyramid level's stride: the stage maps' and one more, max-pooled from the last."""
        return (*self.roi_strides, 2 * self.roi_strides[-1])

    @property
    def cascade(self) -> bool:
        return len(self.stage_stds) > 1

    def _suffix(self, k: int) -> str:
        return f"_{k}" if self.cascade else ""

    @nn.compact
    def __call__(self, images: jnp.ndarray, image_hw: jnp.ndarray | None = None,
                 train: bool = False, targets: dict[str, jnp.ndarray] | None = None,
                 sampling_key: jax.Array | None = None) -> dict[str, jnp.ndarray]:
        """Detections of `images` (B, H, W, 3); with `targets` (gt_boxes (B, G, 4), gt_labels (B, G),
        gt_valid (B, G), and gt_masks (B, G, H, W) where the data has masks) the training losses instead."""
        batch, height, width = images.shape[:3]
        if image_hw is None:
            image_hw = jnp.tile(jnp.array([[height, width]], jnp.int32), (batch, 1))
        image_hw = jnp.asarray(image_hw).astype(jnp.float32)
        levels = FPN(self.channels, len(self.anchor_strides), self.dtype, self.param_dtype, name="neck")(
            self.backbone(images, train=train))
        logits, deltas = rpn.RPNHead(3, self.channels, self.dtype, self.param_dtype, name="rpn_head")(levels)
        anchors = rpn.level_anchors([level.shape[1:3] for level in levels], self.anchor_strides)
        box_heads = [BBoxHead(self.num_classes, self.num_shared_convs, self.num_shared_fcs, self.channels,
                              self.fc_channels, self.class_agnostic, self.dtype, self.param_dtype,
                              name=f"bbox_head{self._suffix(k)}") for k in range(len(self.stage_stds))]
        mask_heads = [MaskHead(self.num_classes, 4, self.mask_channels, self.dtype, self.param_dtype,
                               name=f"mask_head{self._suffix(k)}") for k in range(len(self.stage_stds))]

        def pooled(boxes, size):
            """(B, N, 4) boxes -> (B * N, size, size, C) features from each box's pyramid level."""
            out = jax.vmap(lambda maps, b: multilevel_roi_align(maps, b, size, self.roi_strides, chunk=self.roi_chunk))(
                list(levels[:len(self.roi_strides)]), boxes)
            return out.reshape(-1, size, size, out.shape[-1]).astype(self.dtype)

        if targets is not None:
            key = self.make_rng("sampling") if sampling_key is None else sampling_key
            return self._losses(logits, deltas, anchors, image_hw, targets, key, pooled, box_heads, mask_heads, train)
        proposals = jax.vmap(lambda lg, dl, hw: rpn.proposals(lg, dl, anchors, hw, self.rpn_nms_pre,
                                                               self.rpn_max_per_img, self.rpn_iou))
        rois, _, valid = proposals(logits, deltas, image_hw)

        stage_logits = []
        for k, stds in enumerate(self.stage_stds):
            cls, reg = box_heads[k](pooled(rois, 7), train)
            cls, reg = cls.reshape(batch, -1, cls.shape[-1]), reg.reshape(batch, -1, reg.shape[-1])
            stage_logits.append(cls)
            if k < len(self.stage_stds) - 1:  # mmdet's regress_by_class with the stage's best class
                rois = jax.vmap(lambda r, c, d, hw: _regress_by_label(
                    r, jnp.argmax(c[:, :-1], axis=-1), d, hw, stds, self.class_agnostic))(rois, cls, reg, image_hw)
        mean_logits = sum(stage_logits) / len(stage_logits)
        detections = jax.vmap(lambda r, v, c, d, hw: detect(r, v, c, d, hw, self.stage_stds[-1], self.score_thr,
                                                             self.iou_threshold, self.max_per_img))(
            rois, valid, mean_logits, reg, image_hw)

        features = pooled(detections["boxes"], 14)
        probabilities = [jax.nn.sigmoid(head(features)) for head in mask_heads]
        masks = (sum(probabilities) / len(probabilities)).reshape(batch, self.max_per_img, 28, 28, self.num_classes)
        labels = detections["labels"]
        detections["masks"] = jnp.take_along_axis(masks, labels[:, :, None, None, None], axis=-1)[..., 0]
        return detections

    def _losses(self, logits, deltas, anchors, image_hw, targets, key, pooled, box_heads, mask_heads, train):
        """mmdet's TwoStageDetector.forward_train with the official train_cfg (see the module's docstring)."""
        batch = image_hw.shape[0]
        gt_boxes, gt_labels, gt_valid = targets["gt_boxes"], targets["gt_labels"], targets["gt_valid"]
        flat_logits = jnp.concatenate([lg.reshape(batch, -1) for lg in logits], axis=1)
        flat_deltas = jnp.concatenate([dl.reshape(batch, -1, 4) for dl in deltas], axis=1)
        level_hw = [lg.shape[1:3] for lg in logits]
        all_anchors = jnp.concatenate([jnp.asarray(a) for a in anchors])
        anchor_valid = jax.vmap(lambda hw: anchor_flags(all_anchors, level_hw, self.anchor_strides, hw,
                                                         self.rpn_allowed_border))(image_hw)
        rpn_rules = dict(num=self.rpn_samples, pos_fraction=tgt.RPN_SAMPLE["pos_fraction"])
        priorities = tgt.sampling_priorities(key, 0, flat_logits.shape)
        rpn_t = jax.vmap(lambda g, v, p, a: tgt.rpn_targets(all_anchors, g, v, p, a, sample=rpn_rules))(
            gt_boxes, gt_valid, priorities, anchor_valid)
        losses = dict(zip(("loss_rpn_cls", "loss_rpn_bbox"), tgt.rpn_loss(flat_logits, flat_deltas, rpn_t)))
        self.sow("intermediates", "rpn_targets", rpn_t)

        detached = jax.tree.map(jax.lax.stop_gradient, (logits, deltas))
        boxes, _, valid = jax.vmap(lambda lg, dl, hw: rpn.proposals(
            lg, dl, anchors, hw, self.rpn_train_nms_pre, self.rpn_train_max_per_img, self.rpn_iou))(*detached, image_hw)
        positives = int(self.rcnn_samples * tgt.RCNN_SAMPLE["pos_fraction"])  # the slots positives can fill
        for k, stds in enumerate(self.stage_stds):
            assign = tgt.RCNN_ASSIGN if not self.cascade else tgt.cascade_assign(self.stage_ious[k])
            priorities = tgt.sampling_priorities(key, k + 1, (batch, gt_boxes.shape[1] + boxes.shape[1]))
            t = jax.vmap(lambda b, v, g, lb, gv, p: tgt.rcnn_targets(
                b, v, g, lb, gv, p, self.num_classes, num=self.rcnn_samples, stds=stds, assign=assign))(
                boxes, valid, gt_boxes, gt_labels, gt_valid, priorities)
            self.sow("intermediates", f"rcnn_targets{self._suffix(k)}", t)
            cls, reg = box_heads[k](pooled(t["rois"], 7), train, t["sampled"].reshape(-1))  # BN over mmdet's RoIs
            cls, reg = cls.reshape(batch, -1, cls.shape[-1]), reg.reshape(batch, -1, reg.shape[-1])
            loss_cls, loss_box = tgt.rcnn_loss(cls, reg, t, giou_weight=self.giou_weight, stds=stds)
            weight = self.stage_loss_weights[k]
            prefix = f"s{k}." if self.cascade else ""
            losses.update({f"{prefix}loss_cls": weight * loss_cls, f"{prefix}loss_bbox": weight * loss_box})
            if "gt_masks" in targets:  # boxes-only data (TFDS's COCO) trains the rest
                rois, gt_index = t["rois"][:, :positives], t["gt_index"][:, :positives]
                mask_t = jax.vmap(tgt.mask_targets)(targets["gt_masks"], rois, gt_index)
                mask_logits = mask_heads[k](pooled(rois, 14)).reshape(batch, positives, *mask_t.shape[2:], -1)
                losses[f"{prefix}loss_mask"] = weight * tgt.mask_loss(
                    mask_logits, t["labels"][:, :positives], mask_t, t["positive"][:, :positives])
            if k < len(self.stage_stds) - 1:  # mmdet's refine_bboxes: negatives move by their best class
                labels = jnp.where(t["positive"], t["labels"], jnp.argmax(cls[..., :-1], axis=-1))
                boxes = jax.lax.stop_gradient(jax.vmap(lambda r, lb, d, hw: _regress_by_label(
                    r, lb, d, hw, stds, self.class_agnostic))(t["rois"], labels, reg, image_hw))
                valid = t["sampled"] & ~t["from_gt"]
        return losses


def anchor_flags(anchors: jnp.ndarray, level_hw, strides, image_hw: jnp.ndarray, allowed_border: int) -> jnp.ndarray:
    """mmdet's anchor validity for one image: the anchors of the cells inside its padded size (rounded up to
    32, as the Pad step) on every level, and with `allowed_border` >= 0 only those lying inside the
    image by that margin (anchor_inside_flags)."""
    padded = jnp.ceil(image_hw / 32.0) * 32.0
    flags = []
    for (h, w), stride in zip(level_hw, strides):
        rows = jnp.arange(h) < jnp.ceil(padded[0] / stride)
        cols = jnp.arange(w) < jnp.ceil(padded[1] / stride)
        cells = (rows[:, None] & cols[None, :]).reshape(-1)
        flags.append(jnp.repeat(cells, anchors.shape[0] // sum(a * b for a, b in level_hw)))
    flags = jnp.concatenate(flags)
    if allowed_border >= 0:
        b = float(allowed_border)
        flags &= ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < image_hw[1] + b)
                  & (anchors[:, 3] < image_hw[0] + b))
    return flags


def _regress_by_label(rois, labels, deltas, image_hw, stds, class_agnostic):
    """mmdet's BBoxHead.regress_by_class: boxes moved by the deltas of the given class (at test time each
    box's best non-background class), clipped to the image."""
    if not class_agnostic:
        deltas = jnp.take_along_axis(deltas.reshape(deltas.shape[0], -1, 4), labels[:, None, None], axis=1)[:, 0]
    return box_ops.decode_deltas(rois, deltas, stds=stds, max_hw=image_hw)
