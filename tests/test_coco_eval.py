"""COCO evaluation: a COCO-format folder made here, whose boxes and masks are known; perfect detections
give AP 1.0, dropped and shifted ones the numbers pycocotools computes from the same results JSON read
back from disk; a folder with a missing image is named."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swin_jax.data import DataError
from swin_jax.tasks import detection

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]


def make_folder(root):
    """Three images with two or three objects each: rectangles as boxes and as (polygon) masks."""
    rng = np.random.RandomState(0)
    images, annotations, truth = [], [], []
    (root / "images").mkdir()
    for image_id in (1, 2, 3):
        h, w = 60 + 10 * image_id, 80
        Image.fromarray(rng.randint(0, 256, (h, w, 3), np.uint8)).save(root / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        for k in range(1 + image_id % 2 + 1):
            x, y = float(rng.randint(0, 40)), float(rng.randint(0, 30))
            bw, bh = float(rng.randint(10, 35)), float(rng.randint(10, 25))
            category = CATEGORIES[k % 2]["id"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
            mask = np.zeros((h, w), bool)
            mask[int(y):int(y + bh), int(x):int(x + bw)] = True
            truth.append((image_id, np.array([x, y, x + bw, y + bh]), category, mask))
    (root / "annotations").mkdir()
    path = root / "annotations" / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path, truth


def results_of(truth, keep=lambda i: True, shift=lambda i: 0.0):
    ids = [c["id"] for c in CATEGORIES]
    rows = []
    for i, (image_id, box, category, mask) in enumerate(truth):
        if keep(i):
            moved = box + shift(i)
            rows += detection.coco_results(image_id, [moved], [0.9 - 0.01 * i], [ids.index(category)],
                                           [np.roll(mask, int(shift(i)), axis=(0, 1))], ids)
    return rows


def test_perfect_dropped_and_shifted_detections(tmp_path):
    path, truth = make_folder(tmp_path)
    coco = detection.read_coco_folder(str(path), str(tmp_path / "images"))
    metrics, per_class = detection.coco_metrics(coco, results_of(truth))
    # Polygons are rasterised with their pixel-edge convention: the masks, as pixel rectangles, match them.
    assert metrics["eval_bbox_ap"] == pytest.approx(1.0) and metrics["eval_segm_ap"] > 0.9
    assert per_class["bbox"] == {"car": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert set(metrics) == {f"eval_{t}_{s}" for t in ("bbox", "segm") for s in detection.STATS}

    rows = results_of(truth, keep=lambda i: i != 2, shift=lambda i: 4.0 * (i % 3 == 1))
    metrics, per_class = detection.coco_metrics(coco, rows)
    assert 0.2 < metrics["eval_bbox_ap"] < 0.95
    (tmp_path / "results.json").write_text(json.dumps(rows))
    gt = COCO(str(path))
    for iou_type in ("bbox", "segm"):
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "results.json")), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        np.testing.assert_allclose([metrics[f"eval_{iou_type}_{s}"] for s in detection.STATS], evaluator.stats)
    print(detection.metrics_table(metrics))
    assert detection.coco_metrics(coco, [])[0]["eval_segm_ap"] == 0.0


def test_a_missing_image_or_a_bad_file_is_named(tmp_path):
    path, _ = make_folder(tmp_path)
    (tmp_path / "images" / "2.png").unlink()
    with pytest.raises(DataError, match=r"lists image 2 as 2.png, and .*images/2.png does not exist"):
        detection.read_coco_folder(str(path), str(tmp_path / "images"))
    with pytest.raises(DataError, match="no such annotation file"):
        detection.read_coco_folder(str(tmp_path / "nothing.json"), str(tmp_path / "images"))
    data = json.loads(path.read_text())
    data["images"][0]["height"] = 0
    path.write_text(json.dumps(data))
    (tmp_path / "images" / "2.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"image 1 \(1.png\) has no size \(0x80\)"):
        detection.read_coco_folder(str(path), str(tmp_path / "images"))
