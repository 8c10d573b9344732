"""Object detection and instance segmentation (Mask R-CNN, Cascade Mask R-CNN), evaluated as the official
Swin detection code does (mmdet 2.11's CocoDataset.evaluate): every image's detections, boxes divided by
its resize factors and masks pasted at its original size, in COCO's results format, scored by
pycocotools' COCOeval (bbox, and segm where the ground truth has masks): the 12 summary numbers and the
AP of every class.

Metric names: eval_bbox_ap (AP@[.5:.95]), eval_bbox_ap50, eval_bbox_ap75, eval_bbox_ap_small / _medium /
_large, eval_bbox_ar1, _ar10, _ar100, eval_bbox_ar_small / _medium / _large, eval_bbox_ap/CLASS; the same
with segm.

The eval step gives every image's fixed-size detections to every process (replicated); each process
turns them into COCO results on the host and computes the same metrics.
"""

from __future__ import annotations

import contextlib
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swin_jax import data
from swin_jax.data import on_device
from swin_jax.models import create_model
from swin_jax.models.detection.roi_heads import paste_masks
from swin_jax.tasks.base import Task, model_options, stack_panels

STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small",
         "ar_medium", "ar_large")


def coco_results(image_id, boxes, scores, labels, masks, category_ids) -> list[dict]:
    """COCO's results format of one image's detections (boxes (N, 4) x1 y1 x2 y2 in the image's pixels,
    0-based labels, masks (N, H, W) bool or None): bbox [x, y, w, h], score, category_id
    (`category_ids[label]`) and the mask as RLE."""
    rows = []
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        row = {"image_id": image_id, "category_id": int(category_ids[int(label)]), "score": float(score),
               "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(np.asarray(masks[i], np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            row["segmentation"] = rle
        rows.append(row)
    return rows


def coco_metrics(coco: COCO, results: list[dict], iou_types=("bbox", "segm")) -> tuple[dict, dict]:
    """(the summary numbers as eval_{type}_{stat}, the AP of every category as {type: {name: ap}}) of
    `results` against `coco`; -1 where COCOeval has nothing to measure (no detections give 0)."""
    metrics, per_class = {}, {}
    names = {c["id"]: c["name"] for c in coco.dataset.get("categories", [])}
    for iou_type in iou_types:
        if not results:
            metrics.update({f"eval_{iou_type}_{s}": 0.0 for s in STATS})
            per_class[iou_type] = {name: 0.0 for name in names.values()}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(coco, coco.loadRes(results), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics.update({f"eval_{iou_type}_{s}": float(v) for s, v in zip(STATS, evaluator.stats)})
        precision = evaluator.eval["precision"]  # (iou thresholds, recall, categories, areas, max dets)
        per_class[iou_type] = {}
        for k, category in enumerate(evaluator.params.catIds):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            per_class[iou_type][names[category]] = float(values.mean()) if values.size else -1.0
    return metrics, per_class


def metrics_table(metrics: dict) -> str:
    """The summary numbers as a table, one row per IoU type."""
    types = [t for t in ("bbox", "segm") if f"eval_{t}_ap" in metrics]
    lines = ["| | " + " | ".join(STATS) + " |", "|---" * (len(STATS) + 1) + "|"]
    for t in types:
        lines.append(f"| {t} | " + " | ".join(f"{metrics[f'eval_{t}_{s}']:.3f}" for s in STATS) + " |")
    return "\n".join(lines)


@functools.lru_cache(maxsize=4)  # asked at every evaluation batch; a split's ground truth does not change
def iou_types(ground_truth: COCO) -> tuple[str, ...]:
    """bbox, and segm when the ground truth has masks (TFDS's COCO has boxes only)."""
    annotations = ground_truth.dataset.get("annotations", [])
    return ("bbox", "segm") if any("segmentation" in a for a in annotations) else ("bbox",)


def in_original_pixels(boxes, masks, resized_hw, original_hw, with_masks: bool = True):
    """Detections of a resized image -> (boxes, masks) in the original image: boxes divided by mmdet's
    scale factors (new_w / w, new_h / h in float32), masks (N, M, M) pasted at the original size (None
    without `with_masks`)."""
    (h, w), (new_h, new_w) = (int(v) for v in original_hw), (int(v) for v in resized_hw)
    sx, sy = new_w / w, new_h / h
    boxes = np.asarray(boxes, np.float32) / np.array([sx, sy, sx, sy], np.float32)
    return boxes, (paste_masks(masks, boxes, (h, w)) if with_masks else None)


def draw_detections(image, boxes, scores, labels, masks, names, min_score: float):
    """The image with each detection scoring at least `min_score`: its mask blended in, its box, name and score."""
    from swin_jax.data.ade20k import palette

    colours = palette(len(names) + 1)[1:]
    canvas = image.astype(np.float32)
    shown = scores >= min_score
    for label, mask in zip(labels[shown], masks[shown]):
        canvas[mask] = 0.5 * canvas[mask] + 0.5 * colours[label]
    picture = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for box, score, label in zip(boxes[shown], scores[shown], labels[shown]):
        colour = tuple(int(c) for c in colours[label])
        draw.rectangle([float(v) for v in box], outline=colour, width=2)
        draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{names[label]} {score:.2f}", fill=colour)
    return picture


class Detection(Task):
    name = "detection"
    best_metric = "eval_bbox_ap"

    def inputs(self, config, *, train: bool):
        training = data.detection_train_input(config.input, seed=config.seed) if train else None
        return training, data.detection_eval_input(config.input)

    def build_model(self, config, num_classes: int):
        return create_model(config.model, num_classes=num_classes, **model_options(config), **config.model_overrides)

    def init_variables(self, model, rng):
        return dict(model.init(rng, jnp.zeros((1, *model.input_hw, model.in_chans), jnp.float32)))

    def train_loss(self, model, params, model_state, batch, rngs, config, num_classes):
        """The sum of mmdet's losses (RPN, box heads, mask heads; Cascade's stages weighted), each also
        reported, with the boxes the input clipped and dropped in this batch."""
        images = on_device.segmentation_batch(batch["image"], batch["valid"], dtype=jnp.dtype(config.model_dtype))
        targets = {k: batch[k] for k in ("gt_boxes", "gt_labels", "gt_valid", "gt_masks") if k in batch}
        losses, updated = model.apply({"params": params, **model_state}, images, batch["valid"], train=True,
                                      targets=targets, sampling_key=rngs[0], mutable=["batch_stats"],
                                      rngs={"dropout": rngs[1]})
        extra = {name.replace(".", "_"): value for name, value in losses.items()}
        extra["boxes_clipped"] = jnp.sum(batch["boxes_clipped"]).astype(jnp.float32)
        extra["boxes_dropped"] = jnp.sum(batch["boxes_dropped"]).astype(jnp.float32)
        return sum(losses.values()), (dict(updated), extra)

    def eval_sums(self, model, variables, batch, config):
        """Every image's detections with what the host needs to score them (not sums: `accumulate` collects)."""
        images = on_device.segmentation_batch(batch["image"], batch["valid"], dtype=jnp.dtype(config.model_dtype))
        out = model.apply(variables, images, batch["valid"])
        return {**out, "image_id": batch["image_id"], "resized_hw": batch["valid"],
                "original_hw": batch["original_hw"], "example": batch["mask"]}

    def accumulate(self, totals, outputs, evaluation):
        """The batch's real images' detections appended to the COCO results so far."""
        out, rows = jax.device_get(outputs), totals or []
        with_masks = "segm" in iou_types(evaluation.ground_truth)
        for i in np.flatnonzero(out["example"]):
            keep = out["valid"][i]
            boxes, masks = in_original_pixels(out["boxes"][i][keep], out["masks"][i][keep], out["resized_hw"][i],
                                              out["original_hw"][i], with_masks)
            rows += coco_results(int(out["image_id"][i]), boxes, out["scores"][i][keep], out["labels"][i][keep],
                                 masks, evaluation.category_ids)
        return rows

    def summarize(self, totals, evaluation):
        metrics, per_class = coco_metrics(evaluation.ground_truth, totals or [], iou_types(evaluation.ground_truth))
        for iou_type, aps in per_class.items():
            metrics.update({f"eval_{iou_type}_ap/{name}": ap for name, ap in aps.items()})
        metrics["eval_detections"] = float(len(totals or []))
        metrics["eval_images"] = float(len(evaluation.ground_truth.dataset["images"]))
        return metrics

    def report(self, results, class_names):
        types = [t for t in ("bbox", "segm") if f"eval_{t}_ap" in results]
        line = ", ".join(f"{t} AP {results[f'eval_{t}_ap']:.4f}" for t in types)
        if "segm" not in types:
            line += " (no masks in the ground truth: segm not evaluated)"
        line += (f" ({int(results['eval_detections']):,} detections in {int(results['eval_images']):,} images, "
                 f"{int(results.get('eval_batch_shapes', 0))} padded shapes)")
        return "\n".join([line, metrics_table({k: results[k] for k in results if k.count("/") == 0})])

    def previews(self, model, variables, evaluation, config, batch_sharding):
        """A few held-out images (as resized) with their detections scoring at least 0.3."""
        count = config.input.preview_images
        if not count:
            return {}

        def predict(variables, batch):
            return self.eval_sums(model, variables, batch, config)

        batch, out = self.preview_outputs(model, variables, evaluation, batch_sharding, predict)
        images, panels = jax.device_get(batch["image"]), []
        for i in np.flatnonzero(out["example"])[:count]:
            h, w = (int(v) for v in out["resized_hw"][i])
            keep = out["valid"][i]
            boxes = out["boxes"][i][keep]
            picture = draw_detections(images[i, :h, :w], boxes, out["scores"][i][keep], out["labels"][i][keep],
                                      paste_masks(out["masks"][i][keep], boxes, (h, w)), evaluation.class_names, 0.3)
            panels.append(np.asarray(picture))
        return {"eval/detections": stack_panels(panels)} if panels else {}


TASK = Detection()
