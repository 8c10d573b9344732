"""COCO evaluation: a COCO-format folder made here, whose boxes and masks are known; perfect detections
give AP 1.0, dropped and shifted ones the numbers pycocotools computes from the same results JSON read
back from disk; a folder with a missing image is named. The same with the ground truth read from a
mocked TFDS coco/2017, and the evaluation input made of it. Then the detection task in train.py
(eval_only) over the folder, against the same images detected one by one through predict's path and
scored by pycocotools directly."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swin_jax.data import DataError, coco
from swin_jax.tasks import detection

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]


def make_folder(root, whole_image_objects=False):
    """COCO's layout (annotations/instances_val.json, val/N.png): three images with two or three objects
    each, rectangles as boxes and as (polygon) masks; optionally one more as large as the image (what the
    clipped large anchors of a random detector find)."""
    rng = np.random.RandomState(0)
    images, annotations, truth = [], [], []
    (root / "val").mkdir()
    for image_id in (1, 2, 3):
        h, w = 60 + 10 * image_id, 80
        Image.fromarray(rng.randint(0, 256, (h, w, 3), np.uint8)).save(root / "val" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        for k in range(1 + image_id % 2 + 1 + whole_image_objects):
            x, y = float(rng.randint(0, 40)), float(rng.randint(0, 30))
            bw, bh = float(rng.randint(10, 35)), float(rng.randint(10, 25))
            if k == 1 + image_id % 2 + 1:
                x, y, bw, bh = 0.0, 0.0, float(w), float(h)
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
    gt = coco.read_coco_folder(str(path), str(tmp_path / "val"))
    metrics, per_class = detection.coco_metrics(gt, results_of(truth))
    # Polygons are rasterised with their pixel-edge convention: the masks, as pixel rectangles, match them.
    assert metrics["eval_bbox_ap"] == pytest.approx(1.0) and metrics["eval_segm_ap"] > 0.9
    assert per_class["bbox"] == {"car": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert set(metrics) == {f"eval_{t}_{s}" for t in ("bbox", "segm") for s in detection.STATS}

    rows = results_of(truth, keep=lambda i: i != 2, shift=lambda i: 4.0 * (i % 3 == 1))
    metrics, per_class = detection.coco_metrics(gt, rows)
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
    assert detection.coco_metrics(gt, [])[0]["eval_segm_ap"] == 0.0


def test_a_missing_image_or_a_bad_file_is_named(tmp_path):
    path, _ = make_folder(tmp_path)
    (tmp_path / "val" / "2.png").unlink()
    with pytest.raises(DataError, match=r"lists image 2 as 2.png, and .*val/2.png does not exist"):
        coco.read_coco_folder(str(path), str(tmp_path / "val"))
    with pytest.raises(DataError, match="no such annotation file"):
        coco.read_coco_folder(str(tmp_path / "nothing.json"), str(tmp_path / "val"))
    (tmp_path / "val" / "2.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"image 2 \(.*val/2.png\) has no pixels \(listed as 80x80, 0 bytes\)"):
        coco.read_coco_folder(str(path), str(tmp_path / "val"))
    data = json.loads(path.read_text())
    data["images"][0]["height"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"image 1 \(.*val/1.png\) has no pixels \(listed as 0x80"):
        coco.read_coco_folder(str(path), str(tmp_path / "val"))
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="no categories"):
        coco.read_coco_folder(str(path), str(tmp_path / "val"))


# ---------------------------------------------------------------------------------------------------
# The detection task in train.py (eval_only)

ARCH = dict(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
HEADS = dict(channels=16, fc_channels=32, mask_channels=16, rpn_nms_pre=300, rpn_max_per_img=200, max_per_img=30,
             score_thr=0.0)  # a random detector's class scores are near 1 / (classes + 1): keep them all
SCALE = (200, 113)  # the test transform into 200x113: the 70, 80 and 90 by 80 images become 113x129, 113x113, 127x113


def saved_detector(directory, num_classes):
    """A tiny random Mask R-CNN (every tensor drawn), saved as a converted directory; with its variables."""
    import jax

    from swin_jax import checkpoint, create_model
    from test_roi_heads import randomise

    name = "mask_rcnn_swin_tiny_patch4_window7_224"
    model = create_model(name, num_classes=num_classes, **ARCH, **HEADS)
    variables = randomise(jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32)))
    checkpoint.save_pretrained(directory, variables, name, dict(num_classes=num_classes, **ARCH, **HEADS))
    return model, variables


def detected_one_by_one(model, variables, images, category_ids, scale=SCALE):
    """COCO results of predict's path: each image alone through the official test transform."""
    import jax

    from swin_jax import predict

    apply_fn, rows = jax.jit(model.apply), []
    for image_id, path in images:
        _, boxes, scores, labels, masks = predict.detect(model, apply_fn, variables, str(path), scale)
        rows += detection.coco_results(image_id, boxes, scores, labels, masks, category_ids)
    return rows


def detection_config(**input_fields):
    from configs import detection as detection_config_module

    config = detection_config_module.get_config("mask_rcnn_swin_tiny_patch4_window7_224")
    config.eval_only = True
    config.model_overrides.update({k: v for k, v in {**ARCH, **HEADS}.items()})
    config.input.eval_scale = SCALE
    config.input.preview_images = 2
    for key, value in input_fields.items():
        setattr(config.input, key, value)
    return config


def assert_same_metrics(got, want):
    keys = [k for k in want if k.startswith("eval_")]
    assert keys and all(k in got for k in keys), sorted(set(keys) - set(got))
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys], atol=1e-6, err_msg=str(keys))


def test_train_py_evaluates_a_detector_on_a_coco_folder(tmp_path, capsys):
    """configs/detection.py as a user runs it on COCO val2017, on the folder made here: metrics.jsonl holds
    COCOeval's 12 numbers of bbox and segm and the AP of each class, equal to pycocotools' on the same
    images detected one by one; two padded shapes, two compilations; the printed table; the TensorBoard
    preview."""
    from runs import rows
    from swin_jax.train import train_and_evaluate

    (tmp_path / "coco").mkdir()
    path, _ = make_folder(tmp_path / "coco", whole_image_objects=True)
    model, variables = saved_detector(tmp_path / "det", len(CATEGORIES))
    config = detection_config(data_dir=str(tmp_path / "coco"), eval_split="val", eval_batch_size=8)
    config.init_from = str(tmp_path / "det")
    train_and_evaluate(config, str(tmp_path / "work"))
    out = capsys.readouterr().out
    got = rows(tmp_path / "work")[-1]
    gt = coco.read_coco_folder(str(path), str(tmp_path / "coco" / "val"))
    reference = detected_one_by_one(model, variables, [(i, tmp_path / "coco" / "val" / f"{i}.png") for i in (1, 2, 3)],
                                    [c["id"] for c in CATEGORIES])
    want, per_class = detection.coco_metrics(gt, reference)
    want.update({f"eval_{t}_ap/{name}": ap for t, aps in per_class.items() for name, ap in aps.items()})
    assert_same_metrics(got, want)
    assert got["eval_detections"] == len(reference) == 3 * HEADS["max_per_img"] and got["eval_images"] == 3
    assert got["eval_batch_shapes"] == 2  # padded to 128x160 (the 70x80 image) and 128x128 (the other two)
    assert 0 < got["eval_bbox_ap50"] and {"eval_bbox_ap/car", "eval_segm_ap/dog"} <= set(got)
    assert "| bbox |" in out and "| segm |" in out and "bbox AP" in out
    assert list((tmp_path / "work").glob("**/events.out.tfevents.*"))


def mocked_tfds_coco(tmp_path):
    """(TFDS's as_dataset replacement serving the folder's three images as JPEG with their boxes in TFDS's
    relative form and COCO's labels, the truth in pixels, the JPEG files)."""
    import io

    import tensorflow as tf

    path, truth = make_folder(tmp_path, whole_image_objects=True)
    encoded, objects = {}, {i: [] for i in (1, 2, 3)}
    for image_id in (1, 2, 3):
        buffer = io.BytesIO()
        Image.open(tmp_path / "val" / f"{image_id}.png").save(buffer, "JPEG", quality=95)
        encoded[image_id] = buffer.getvalue()
        (tmp_path / f"{image_id}.jpg").write_bytes(encoded[image_id])
    labels = {3: coco.CLASSES.index("car"), 18: coco.CLASSES.index("dog")}
    for image_id, (x0, y0, x1, y1), category, _ in truth:
        h, w = 60 + 10 * image_id, 80
        objects[image_id].append(([y0 / h, x0 / w, y1 / h, x1 / w], labels[category], (x1 - x0) * (y1 - y0)))

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        def examples():
            for image_id in (1, 2, 3):
                boxes, classes, areas = zip(*objects[image_id])
                yield {"image": encoded[image_id], "image/id": image_id, "image/filename": f"{image_id}.jpg",
                       "objects": {"bbox": np.array(boxes, np.float32), "label": np.array(classes, np.int64),
                                   "area": np.array(areas, np.int64), "is_crowd": np.zeros(len(boxes), bool),
                                   "id": np.arange(len(boxes), dtype=np.int64)}}
        signature = {"image": tf.TensorSpec([], tf.string), "image/id": tf.TensorSpec([], tf.int64),
                     "image/filename": tf.TensorSpec([], tf.string),
                     "objects": {"bbox": tf.TensorSpec([None, 4], tf.float32), "label": tf.TensorSpec([None], tf.int64),
                                 "area": tf.TensorSpec([None], tf.int64), "is_crowd": tf.TensorSpec([None], tf.bool),
                                 "id": tf.TensorSpec([None], tf.int64)}}
        dataset = tf.data.Dataset.from_generator(examples, output_signature=signature)
        return dataset.apply(tf.data.experimental.assert_cardinality(3))

    return as_dataset, truth


def test_tfds_coco_ground_truth_scores_perfect_and_shifted_detections(tmp_path):
    """The ground truth read from a mocked TFDS coco/2017: boxes back in pixels with COCO's category ids;
    the known boxes as detections give AP 1.0, dropped and shifted ones pycocotools' own numbers."""
    import tensorflow_datasets as tfds

    as_dataset, truth = mocked_tfds_coco(tmp_path)
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        split = coco.tfds_split("coco/2017", "validation", data_dir=None)
    assert split.class_names == coco.CLASSES and split.category_ids == coco.CATEGORY_IDS and split.num_examples == 3
    assert [(i["id"], i["height"], i["width"]) for i in split.ground_truth.dataset["images"]] == [
        (1, 70, 80), (2, 80, 80), (3, 90, 80)]
    got = [(a["image_id"], a["category_id"], a["bbox"]) for a in split.ground_truth.dataset["annotations"]]
    for (image_id, category, bbox), (want_id, box, want_category, _) in zip(got, truth):
        assert (image_id, category) == (want_id, want_category)
        np.testing.assert_allclose(bbox, [box[0], box[1], box[2] - box[0], box[3] - box[1]], atol=1e-4)

    def rows_of(keep, shift):
        rows = []
        for i, (image_id, box, category, _) in enumerate(truth):
            if keep(i):
                rows += detection.coco_results(image_id, [box + shift(i)], [0.9 - 0.01 * i],
                                               [coco.CATEGORY_IDS.index(category)], None, coco.CATEGORY_IDS)
        return rows

    metrics, _ = detection.coco_metrics(split.ground_truth, rows_of(lambda i: True, lambda i: 0.0), ("bbox",))
    assert metrics["eval_bbox_ap"] == pytest.approx(1.0)
    rows = rows_of(lambda i: i != 1, lambda i: 5.0 * (i % 3 == 0))
    metrics, _ = detection.coco_metrics(split.ground_truth, rows, ("bbox",))
    (tmp_path / "results.json").write_text(json.dumps(rows))
    evaluator = COCOeval(split.ground_truth, split.ground_truth.loadRes(str(tmp_path / "results.json")), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert 0.1 < metrics["eval_bbox_ap"] < 0.95
    np.testing.assert_allclose([metrics[f"eval_bbox_{s}"] for s in detection.STATS], evaluator.stats)


def test_detection_eval_input_from_mocked_tfds_coco(tmp_path):
    """What train.py's detection task reads from TFDS coco/2017 (mocked): every image through the official
    test transform (predict's pixels), batched by padded shape, short batches filled with masked examples,
    each of two processes keeping its rows of every global batch; the ground truth has boxes only, so the
    task scores bbox (perfect detections: AP 1.0) and says segm is not evaluated."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from swin_jax import data
    from swin_jax.data import on_device, transforms

    as_dataset, truth = mocked_tfds_coco(tmp_path)
    config = detection_config(eval_batch_size=4)
    config.dataset = "coco/2017"
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        evaluation = data.detection_eval_input(config.input, process_index=0, process_count=1)
        batches = list(evaluation)
        shares = [list(data.detection_eval_input(config.input, process_index=p, process_count=2)) for p in (0, 1)]
    assert len(batches) == 2 and evaluation.num_classes == 80 and evaluation.category_ids == coco.CATEGORY_IDS
    by_shape = {b["image"].shape[1:3]: b for b in batches}
    assert set(by_shape) == {(128, 160), (128, 128)}  # SCALE: image 1 alone, images 2 and 3 together
    for shape, ids in (((128, 160), [1]), ((128, 128), [2, 3])):
        batch = by_shape[shape]
        assert batch["image_id"][batch["mask"]].tolist() == ids and batch["mask"].sum() == len(ids)
        for row, image_id in enumerate(ids):
            image = transforms.decode(tf.constant((tmp_path / f"{image_id}.jpg").read_bytes())).numpy()
            x, hw, _ = coco.test_image(image, SCALE)
            assert tuple(batch["valid"][row]) == hw and tuple(batch["original_hw"][row]) == image.shape[:2]
            got = on_device.segmentation_batch(batch["image"][row:row + 1], batch["valid"][row:row + 1])[0]
            np.testing.assert_allclose(got, x, atol=1e-6)
    for k, batch in enumerate(batches):
        for p in (0, 1):
            for key, value in batch.items():
                np.testing.assert_array_equal(shares[p][k][key], value[2 * p:2 * p + 2])

    rows = []
    for image_id, box, category, _ in truth:
        rows += detection.coco_results(image_id, [box], [0.9], [coco.CATEGORY_IDS.index(category)], None,
                                       coco.CATEGORY_IDS)
    results = detection.TASK.summarize(rows, evaluation)
    assert results["eval_bbox_ap"] == pytest.approx(1.0) and not any(k.startswith("eval_segm") for k in results)
    assert results["eval_bbox_ap/car"] == pytest.approx(1.0) and results["eval_bbox_ap/person"] == -1.0
    assert "segm not evaluated" in detection.TASK.report(dict(results, eval_batch_shapes=2.0), evaluation.class_names)
