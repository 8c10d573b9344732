"""The training transform of the official Swin detection configs (configs/swin/*_mstrain_480-800_*: mmdet
2.11's RandomFlip, then AutoAugment choosing one of two policies) with static output shapes for jit:

  policy 1: Resize to one of img_scale [(1333, 480), (1333, 512), ..., (1333, 800)], keep ratio;
  policy 2: Resize to one of [(1333, 400), (1333, 500), (1333, 600)], RandomCrop "absolute_range"
            (384, 600) with allow_negative_crop, then Resize to one of the policy-1 scales.

Boxes are scaled with the image and clipped to it (bbox_clip_border); a crop keeps the boxes that keep an
area (x2 > x1 and y2 > y1), with their masks. Masks are resized nearest-neighbour (half-pixel centres,
as the segmentation labels). The image is padded with zeros at the bottom and right to `pad_hw`, the
boxes, labels and masks to `max_objects` with a validity mask, so every batch has one shape.

Annotations come in as mmdet's CocoDataset reads them (`instance_boxes`): crowd boxes left out (they only
feed gt_bboxes_ignore, which the official assigners do not use), boxes without area dropped, boxes
reaching outside the image clipped; both counted.
"""

from __future__ import annotations

import numpy as np

from swin_jax.data.host import tf
from swin_jax.data.segmentation import _resize_image, rescale_size
from swin_jax.data.sources import DataError

LONG_SIDE = 1333
SHORT_SIDES = tuple(range(480, 801, 32))  # policy 1 and the last resize of policy 2
CROP_SHORT_SIDES = (400, 500, 600)
CROP_RANGE = (384, 600)
PAD_HW = (1344, 1344)  # the largest resized image (800 x 1333) in either orientation, to a multiple of 32


def instance_boxes(annotations, height: int, width: int, category_index: dict, where: str):
    """mmdet's CocoDataset._parse_ann_info for training, from COCO annotation dicts: (boxes (n, 4) x1 y1 x2 y2
    float32 clipped to the image, class indices (n,) int32, the annotations kept, the number of boxes
    clipped, the number dropped for having no area inside the image). Crowd and `ignore` annotations are
    left out; `where` names the image in errors."""
    boxes, labels, kept, clipped, dropped = [], [], [], 0, 0
    for ann in annotations:
        if ann.get("ignore", False) or ann.get("iscrowd", 0):
            continue
        if ann["category_id"] not in category_index:
            raise DataError(f"{where}: annotation {ann.get('id')} has category_id {ann['category_id']}, which the "
                            f"categories do not list")
        x, y, w, h = (float(v) for v in ann["bbox"])
        inter_w = max(0.0, min(x + w, width) - max(x, 0.0))
        inter_h = max(0.0, min(y + h, height) - max(y, 0.0))
        if inter_w * inter_h == 0 or ann.get("area", w * h) <= 0 or w < 1 or h < 1:
            dropped += 1
            continue
        if x < 0 or y < 0 or x + w > width or y + h > height:
            clipped += 1
        boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
        labels.append(category_index[ann["category_id"]])
        kept.append(ann)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32), kept, clipped, dropped)


def check_object_count(count: int, max_objects: int, where: str) -> None:
    if count > max_objects:
        raise DataError(f"{where} has {count} objects, more than config.input.max_objects={max_objects} holds; "
                        f"raise config.input.max_objects to at least {count}")


def _choice(seed, values):
    index = tf.random.stateless_uniform([], seed, minval=0, maxval=len(values), dtype=tf.int32)
    return tf.gather(tf.constant(values, tf.int32), index)


def _resize(image, boxes, masks, short_side, long_side):
    """mmdet's keep-ratio Resize of the image (bilinear), its boxes (scaled, clipped) and masks (nearest)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    new_h, new_w = rescale_size(h, w, (long_side, short_side))
    size = tf.stack([new_h, new_w])
    sx = tf.cast(new_w, tf.float32) / tf.cast(w, tf.float32)
    sy = tf.cast(new_h, tf.float32) / tf.cast(h, tf.float32)
    boxes = boxes * tf.stack([sx, sy, sx, sy])
    boxes = tf.minimum(tf.maximum(boxes, 0.0), tf.cast(tf.stack([new_w, new_h, new_w, new_h]), tf.float32))
    if masks is not None:
        masks = tf.transpose(tf.image.resize(tf.transpose(masks, [1, 2, 0]), size, method="nearest"), [2, 0, 1])
    return _resize_image(image, size), boxes, masks


def _crop(image, boxes, labels, masks, seed, crop_range):
    """mmdet's RandomCrop(crop_type="absolute_range", allow_negative_crop=True): a crop of height and width
    each uniform in [min(side, low), min(side, high)] at a uniform offset; the boxes shifted and clipped,
    those left without area dropped with their labels and masks."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    low, high = crop_range

    def uniform_int(s, lo, hi):  # inclusive
        return tf.random.stateless_uniform([], s, minval=lo, maxval=hi + 1, dtype=tf.int32)

    crop_h = uniform_int(seeds[0], tf.minimum(h, low), tf.minimum(h, high))
    crop_w = uniform_int(seeds[1], tf.minimum(w, low), tf.minimum(w, high))
    top = uniform_int(seeds[2], 0, tf.maximum(h - crop_h, 0))
    left = uniform_int(seeds[3], 0, tf.maximum(w - crop_w, 0))
    image = image[top:top + crop_h, left:left + crop_w]
    offset = tf.cast(tf.stack([left, top, left, top]), tf.float32)
    limit = tf.cast(tf.stack([crop_w, crop_h, crop_w, crop_h]), tf.float32)
    boxes = tf.minimum(tf.maximum(boxes - offset, 0.0), limit)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
    if masks is not None:
        masks = tf.boolean_mask(masks[:, top:top + crop_h, left:left + crop_w], keep)
    return image, boxes, labels, masks


@tf.autograph.experimental.do_not_convert
def train_transform(image, boxes, labels, masks, seed, *, short_sides=SHORT_SIDES, long_side=LONG_SIDE,
                    crop_short_sides=CROP_SHORT_SIDES, crop_range=CROP_RANGE, hflip=0.5, pad_hw=PAD_HW,
                    max_objects=100, image_id=None):
    """One training example: uint8 (H, W, 3) image, (n, 4) float32 boxes in its pixels, (n,) class indices,
    (n, H, W) uint8 masks or None -> {"image" (pad_h, pad_w, 3) uint8, "valid" (h, w) of the resized image,
    "gt_boxes" (max_objects, 4), "gt_labels", "gt_valid", "gt_masks" (max_objects, pad_h, pad_w) uint8}.
    Without `crop_short_sides` only policy 1 is used."""
    seeds = tf.random.experimental.stateless_split(seed, 6)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    if hflip > 0:
        flip = tf.random.stateless_uniform([], seeds[0]) < hflip
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        mirrored = tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
        boxes = tf.where(flip, mirrored, boxes)
        if masks is not None:
            masks = tf.cond(flip, lambda: masks[:, :, ::-1], lambda: masks)

    def resize_only():
        out = _resize(image, boxes, masks, _choice(seeds[2], short_sides), long_side)
        return out[0], out[1], labels, out[2]

    def resize_crop_resize():
        i, b, m = _resize(image, boxes, masks, _choice(seeds[3], crop_short_sides), long_side)
        i, b, lb, m = _crop(i, b, labels, m, seeds[4], crop_range)
        i, b, m = _resize(i, b, m, _choice(seeds[5], short_sides), long_side)
        return i, b, lb, m

    if crop_short_sides:
        image, boxes, labels, masks = tf.cond(tf.random.stateless_uniform([], seeds[1]) < 0.5, resize_only,
                                              resize_crop_resize)
    else:
        image, boxes, labels, masks = resize_only()
    count = tf.shape(boxes)[0]
    if image_id is not None:
        tf.debugging.Assert(count <= max_objects, [
            f"more objects than config.input.max_objects={max_objects} holds (raise it) in the image with id",
            image_id, "objects:", count])
    count = tf.minimum(count, max_objects)
    valid = tf.shape(image)[:2]
    pad_h, pad_w = pad_hw
    image = tf.pad(image, [[0, pad_h - valid[0]], [0, pad_w - valid[1]], [0, 0]])
    missing = max_objects - count
    out = {"image": tf.ensure_shape(image, [pad_h, pad_w, 3]), "valid": valid,
           "gt_boxes": tf.ensure_shape(tf.pad(boxes[:count], [[0, missing], [0, 0]]), [max_objects, 4]),
           "gt_labels": tf.ensure_shape(tf.pad(tf.cast(labels[:count], tf.int32), [[0, missing]]), [max_objects]),
           "gt_valid": tf.range(max_objects) < count}
    if masks is not None:
        masks = tf.pad(tf.cast(masks[:count], tf.uint8), [[0, missing], [0, pad_h - valid[0]], [0, pad_w - valid[1]]])
        out["gt_masks"] = tf.ensure_shape(masks, [max_objects, pad_h, pad_w])
    return out
