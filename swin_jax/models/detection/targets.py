"""Training targets of the two-stage detectors as mmdet 2.x assigns and samples them, with static shapes:
ground truth padded to a fixed number of boxes with a validity mask, candidates (anchors or proposals)
with a validity mask of their own, and sampling as a masked top-k over random priorities instead of
mmdet's variable-length index lists. Every function is pure and runs under `jax.jit` and `vmap` (one
image at a time; vmap over the batch).

Assignment codes (mmdet's `assigned_gt_inds`): -1 ignored, 0 negative, k + 1 positive for ground truth k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from swin_jax.models.detection.boxes import aligned_giou, box_iou, decode_deltas, encode_deltas
from swin_jax.models.detection.roi_align import crop_and_resize

IGNORED, NEGATIVE = -1, 0


def max_iou_assign(candidates: jnp.ndarray, candidate_valid: jnp.ndarray, gt_boxes: jnp.ndarray,
                   gt_valid: jnp.ndarray, *, pos_iou: float, neg_iou: float, min_pos_iou: float,
                   match_low_quality: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """mmdet's MaxIoUAssigner (gt_max_assign_all=True, no ignore_iof): (N,) codes and each candidate's
    largest IoU with a valid ground-truth box.

    A candidate whose largest IoU is below `neg_iou` is negative, at `pos_iou` or above positive for the
    box it overlaps most (the first on ties); with `match_low_quality`, every ground-truth box whose best
    IoU reaches `min_pos_iou` also takes each candidate that attains that best IoU, later boxes winning.
    Invalid candidates are ignored; with no valid ground truth every valid candidate is negative."""
    overlaps = jnp.where(gt_valid[:, None] & candidate_valid[None, :], box_iou(gt_boxes, candidates), -1.0)
    max_overlaps = jnp.max(overlaps, axis=0)
    argmax = jnp.argmax(overlaps, axis=0)
    codes = jnp.full(candidates.shape[:1], IGNORED, jnp.int32)
    codes = jnp.where((max_overlaps >= 0) & (max_overlaps < neg_iou), NEGATIVE, codes)
    codes = jnp.where(max_overlaps >= pos_iou, argmax + 1, codes)
    if match_low_quality:
        gt_max = jnp.max(overlaps, axis=1)
        takes = (gt_max[:, None] >= min_pos_iou) & (overlaps == gt_max[:, None]) & candidate_valid[None, :]
        last = jnp.max(jnp.where(takes, jnp.arange(1, gt_boxes.shape[0] + 1)[:, None], 0), axis=0)
        codes = jnp.where(last > 0, last, codes)
    no_gt = ~jnp.any(gt_valid)
    codes = jnp.where(no_gt, jnp.where(candidate_valid, NEGATIVE, IGNORED), codes)
    return codes, jnp.where(no_gt, 0.0, jnp.maximum(max_overlaps, 0.0))


def random_sample(codes: jnp.ndarray, priorities: jnp.ndarray, *, num: int, pos_fraction: float
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """mmdet's RandomSampler (neg_pos_ub -1) over assignment codes: up to int(num * pos_fraction)
    positives, then negatives up to `num` in all, each drawn uniformly without replacement. The draw is
    the candidates with the highest `priorities` (e.g. `jax.random.uniform`), so a test can replay any
    choice. Returns (positive, negative) boolean masks over the candidates."""
    positive, negative = codes > 0, codes == NEGATIVE
    num_pos = jnp.minimum(jnp.sum(positive), int(num * pos_fraction))
    pos_mask = _top_k_mask(priorities, positive, num_pos)
    neg_mask = _top_k_mask(priorities, negative, jnp.minimum(jnp.sum(negative), num - num_pos))
    return pos_mask, neg_mask


def _top_k_mask(priorities: jnp.ndarray, eligible: jnp.ndarray, count: jnp.ndarray) -> jnp.ndarray:
    """The `count` eligible entries of highest priority (count may be traced), as a mask."""
    keys = jnp.where(eligible, priorities, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-keys, stable=True), stable=True)  # 0 for the highest key
    return eligible & (rank < count)


def sampling_priorities(key: jax.Array, stage: int, shape: tuple[int, ...]) -> jnp.ndarray:
    """Uniform priorities for `random_sample` of one sampling stage (0 the RPN, k + 1 box stage k): the
    candidates a draw keeps are those it ranks highest. One key per training step gives every stage's."""
    return jax.random.uniform(jax.random.fold_in(key, stage), shape)


# ---- the RPN's targets and loss (mmdet's AnchorHead.get_targets and loss with RPNHead's config) -------

RPN_ASSIGN = dict(pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3, match_low_quality=True)
RPN_SAMPLE = dict(num=256, pos_fraction=0.5)


def rpn_targets(anchors: jnp.ndarray, gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray, priorities: jnp.ndarray,
                anchor_valid: jnp.ndarray | None = None, sample=None) -> dict[str, jnp.ndarray]:
    """One image's RPN targets over its (A, 4) anchors (every level, concatenated): `objectness` 1 for a
    sampled positive, 0 otherwise; `weight` 1 for every sampled anchor; `deltas` (A, 4) from each
    positive anchor to its box (stds 1) and `box_weight` 1 for positives; the sampled counts."""
    valid = jnp.ones(anchors.shape[:1], bool) if anchor_valid is None else anchor_valid
    codes, _ = max_iou_assign(anchors, valid, gt_boxes, gt_valid, **RPN_ASSIGN)
    positive, negative = random_sample(codes, priorities, **(sample or RPN_SAMPLE))
    matched = gt_boxes[jnp.maximum(codes - 1, 0)]
    deltas = jnp.where(positive[:, None], encode_deltas(anchors, jnp.where(positive[:, None], matched, anchors)), 0.0)
    return {"objectness": positive.astype(jnp.float32), "weight": (positive | negative).astype(jnp.float32),
            "deltas": deltas, "box_weight": positive.astype(jnp.float32),
            "num_pos": jnp.sum(positive), "num_neg": jnp.sum(negative)}


def rpn_loss(logits: jnp.ndarray, deltas: jnp.ndarray, targets: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """mmdet's RPN losses over a batch: (B, A) objectness logits and (B, A, 4) deltas against `rpn_targets`
    vmapped over the images. Sigmoid cross entropy and L1, each summed over the sampled anchors and divided
    by the batch's sum over images of max(positives, 1) + max(negatives, 1), as mmdet's avg_factor."""
    average = jnp.sum(jnp.maximum(targets["num_pos"], 1) + jnp.maximum(targets["num_neg"], 1)).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, targets["objectness"])
    loss_cls = jnp.sum(bce * targets["weight"]) / average
    loss_box = jnp.sum(jnp.abs(deltas - targets["deltas"]) * targets["box_weight"][..., None]) / average
    return loss_cls, loss_box


# ---- the box head's targets and loss (mmdet's BBoxHead.get_targets and loss, Shared2FCBBoxHead) ------

RCNN_ASSIGN = dict(pos_iou=0.5, neg_iou=0.5, min_pos_iou=0.5, match_low_quality=True)  # Mask R-CNN's


def cascade_assign(iou: float) -> dict:
    """The official Cascade's assigner of a stage: one threshold for positive, negative and the minimum,
    no low-quality matching."""
    return dict(pos_iou=iou, neg_iou=iou, min_pos_iou=iou, match_low_quality=False)
RCNN_SAMPLE = dict(num=512, pos_fraction=0.25)
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


def rcnn_targets(proposals: jnp.ndarray, proposal_valid: jnp.ndarray, gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray,
                 gt_valid: jnp.ndarray, priorities: jnp.ndarray, num_classes: int, *, num: int = RCNN_SAMPLE["num"],
                 pos_fraction: float = RCNN_SAMPLE["pos_fraction"], stds=RCNN_STDS, assign=None) -> dict[str, jnp.ndarray]:
    """One image's sampled RoIs and their targets, `num` slots: the ground truth joins the proposals as
    candidates (first, assigned to itself, as mmdet's add_gt_as_proposals), the candidates are assigned
    and sampled, and the sampled ones fill the slots positives first. Returns `rois` (num, 4), `labels`
    (the class of a positive, `num_classes` for a negative), `sampled` and `positive` masks over the
    slots, `deltas` (num, 4) from each positive RoI to its box, `gt_index` of each positive, `index`
    of each slot's candidate (0..G-1 the ground truth, then the proposals) and `from_gt` (a positive
    that is a ground-truth box). `priorities` covers the G + P candidates."""
    rules = RCNN_ASSIGN if assign is None else assign
    short = max(num - gt_boxes.shape[0] - proposals.shape[0], 0)  # fewer candidates than slots: pad them
    candidates = jnp.concatenate([gt_boxes, proposals, jnp.zeros((short, 4), proposals.dtype)])
    valid = jnp.concatenate([gt_valid, proposal_valid, jnp.zeros((short,), bool)])
    priorities = jnp.concatenate([priorities, jnp.zeros((short,), priorities.dtype)])
    # mmdet assigns the proposals alone (low-quality matches among them), then adds the ground truth
    codes, _ = max_iou_assign(candidates[gt_boxes.shape[0]:], valid[gt_boxes.shape[0]:], gt_boxes, gt_valid, **rules)
    own = jnp.where(gt_valid, jnp.arange(1, gt_boxes.shape[0] + 1), IGNORED)
    codes = jnp.concatenate([own, codes])
    positive, negative = random_sample(codes, priorities, num=num, pos_fraction=pos_fraction)
    # slots: positives (by priority), then negatives (by priority), then the rest
    order = jnp.lexsort((-priorities, jnp.where(positive, 0, jnp.where(negative, 1, 2))))[:num]
    slot_positive, slot_sampled = positive[order], (positive | negative)[order]
    rois = candidates[order]
    gt_index = jnp.maximum(codes[order] - 1, 0)
    labels = jnp.where(slot_positive, gt_labels[gt_index], num_classes)
    unit = jnp.array([0.0, 0.0, 1.0, 1.0], rois.dtype)  # stands in for the rest, whose padding has no width
    source = jnp.where(slot_positive[:, None], rois, unit)
    target = jnp.where(slot_positive[:, None], gt_boxes[gt_index], unit)
    deltas = jnp.where(slot_positive[:, None], encode_deltas(source, target, stds=stds), 0.0)
    return {"rois": rois, "labels": labels, "sampled": slot_sampled, "positive": slot_positive, "deltas": deltas,
            "gt_index": gt_index, "gt_boxes": jnp.where(slot_positive[:, None], gt_boxes[gt_index], 0.0),
            "index": order, "from_gt": slot_positive & (order < gt_boxes.shape[0])}


def rcnn_loss(class_logits: jnp.ndarray, box_deltas: jnp.ndarray, targets: dict[str, jnp.ndarray], *,
              giou_weight: float = 0.0, stds=RCNN_STDS) -> tuple[jnp.ndarray, jnp.ndarray]:
    """mmdet's box-head losses over a batch of sampled RoIs: (B, num, classes + 1) logits and
    (B, num, 4 * classes) class-specific deltas (or (B, num, 4) class-agnostic). Softmax cross entropy
    over the sampled RoIs divided by their count; L1 on each positive's deltas for its class, divided by
    the number of sampled RoIs (mmdet's avg_factor bbox_targets.size(0)). With `giou_weight` (the official
    Cascade's reg_decoded_bbox with GIoULoss) the deltas are decoded from the RoIs with `stds`, unclipped,
    and the loss is giou_weight x (1 - GIoU) with the box, over the same count."""
    sampled = targets["sampled"].astype(jnp.float32)
    count = jnp.maximum(jnp.sum(sampled), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(class_logits, targets["labels"])
    loss_cls = jnp.sum(ce * sampled) / count
    if box_deltas.shape[-1] != 4:
        per_class = box_deltas.reshape(*box_deltas.shape[:-1], -1, 4)
        label = jnp.minimum(targets["labels"], per_class.shape[-2] - 1)
        box_deltas = jnp.take_along_axis(per_class, label[..., None, None], axis=-2)[..., 0, :]
    if giou_weight:
        boxes = decode_deltas(targets["rois"], box_deltas, stds=stds)
        per_roi = giou_weight * (1.0 - aligned_giou(boxes, targets["gt_boxes"]))
    else:
        per_roi = jnp.sum(jnp.abs(box_deltas - targets["deltas"]), axis=-1)
    loss_box = jnp.sum(per_roi * targets["positive"]) / count
    return loss_cls, loss_box


# ---- the mask head's targets and loss (mmdet's FCNMaskHead.get_targets and loss) -----------------------

def mask_targets(gt_masks: jnp.ndarray, rois: jnp.ndarray, gt_index: jnp.ndarray, size: int = 28) -> jnp.ndarray:
    """(K, size, size) binary targets of K positive RoIs: each RoI's box cut from its ground-truth instance
    mask (G, H, W) by RoIAlign and thresholded at 0.5 (mmdet's mask_target with binarize=True)."""
    return (crop_and_resize(gt_masks, gt_index, rois, size) >= 0.5).astype(jnp.float32)


def mask_loss(mask_logits: jnp.ndarray, labels: jnp.ndarray, targets: jnp.ndarray, positive: jnp.ndarray) -> jnp.ndarray:
    """mmdet's mask_cross_entropy: (..., K, S, S, classes) logits (`MaskHead`'s), each positive RoI's map
    of its class against its (..., K, S, S) target, binary cross entropy averaged over every positive's
    pixels."""
    own = jnp.take_along_axis(mask_logits, labels[..., None, None, None], axis=-1)[..., 0]
    bce = optax.sigmoid_binary_cross_entropy(own, targets).mean(axis=(-1, -2))
    return jnp.sum(bce * positive) / jnp.maximum(jnp.sum(positive), 1)
