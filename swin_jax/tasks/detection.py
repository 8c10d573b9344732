"""Detection evaluation as the official code runs it: detections in COCO's results format and pycocotools'
COCOeval (bbox and segm): the 12 summary numbers and the AP of every class.

Metric names: eval_bbox_ap (AP@[.5:.95]), eval_bbox_ap50, eval_bbox_ap75, eval_bbox_ap_small / _medium /
_large, eval_bbox_ar1, _ar10, _ar100, eval_bbox_ar_small / _medium / _large; the same with segm.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swin_jax.data import DataError

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


def read_coco_folder(annotation_file: str, image_dir: str) -> COCO:
    """The ground truth of a COCO-format folder (`annotations/instances_*.json` and its images), every
    image it lists checked to exist."""
    if not os.path.isfile(annotation_file):
        raise DataError(f"{annotation_file}: no such annotation file")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports its loading on stdout
        try:
            coco = COCO(annotation_file)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{annotation_file}: not a COCO annotation file ({e})") from None
    for image in coco.dataset.get("images", []):
        path = os.path.join(image_dir, image["file_name"])
        if not os.path.isfile(path):
            raise DataError(f"{annotation_file} lists image {image['id']} as {image['file_name']}, and {path} "
                            f"does not exist")
        if not image.get("height") or not image.get("width"):
            raise DataError(f"{annotation_file}: image {image['id']} ({image['file_name']}) has no size "
                            f"({image.get('height')}x{image.get('width')})")
    return coco


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
    types = sorted({k.split("_")[1] for k in metrics})
    lines = ["| | " + " | ".join(STATS) + " |", "|---" * (len(STATS) + 1) + "|"]
    for t in types:
        lines.append(f"| {t} | " + " | ".join(f"{metrics[f'eval_{t}_{s}']:.3f}" for s in STATS) + " |")
    return "\n".join(lines)
