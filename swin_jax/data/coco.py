"""COCO for the detectors: the 80 category names and their ids in COCO's annotation files, the official
test transform of the Swin detection configs (mmdet's coco_instance test pipeline), and the evaluation
splits with their ground truth (a COCO-format folder, or TFDS)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os

import numpy as np
from pycocotools.coco import COCO

from swin_jax.data import segmentation, sources
from swin_jax.data.host import tf
from swin_jax.data.on_device import normalize
from swin_jax.data.sources import DataError

CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")
# The category_id of each class in instances_*.json (1..90 with gaps), in CLASSES' order.
CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
                32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58,
                59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89,
                90)
TEST_SCALE = (1333, 800)
SIZE_DIVISOR = 32


def test_image(image, scale=TEST_SCALE) -> tuple[np.ndarray, tuple[int, int], tuple[float, float]]:
    """The official test transform of a decoded uint8 (H, W, 3) image: keep-ratio bilinear resize to `scale`
    (mmcv's imrescale, uint8), ImageNet normalisation, zero padding to a multiple of 32. Returns (the
    (H32, W32, 3) float32 array, the resized (h, w) before padding, the (w_scale, h_scale) factors that
    map original pixels to resized ones)."""
    image = tf.convert_to_tensor(image)
    resized = segmentation.eval_resize(image, scale).numpy()
    h, w = resized.shape[:2]
    x = np.asarray(normalize(resized[None]))[0]
    padded = np.zeros((-(-h // SIZE_DIVISOR) * SIZE_DIVISOR, -(-w // SIZE_DIVISOR) * SIZE_DIVISOR, 3), np.float32)
    padded[:h, :w] = x
    return padded, (h, w), (w / image.shape[1], h / image.shape[0])


@dataclasses.dataclass
class DetectionSplit:
    """A detection split in a fixed order, every process reading all of it: {"image": encoded bytes,
    "image_id": int64}, the ground truth COCOeval scores against, and the classes in the model's order."""
    dataset: tf.data.Dataset
    ground_truth: COCO
    category_ids: tuple[int, ...]  # the category_id of each class index
    class_names: tuple[str, ...]

    @property
    def num_examples(self) -> int:
        return len(self.ground_truth.dataset["images"])


def read_coco_folder(annotation_file: str, image_dir: str) -> COCO:
    """The ground truth of a COCO-format folder (`annotations/instances_*.json` and its images), every
    image it lists checked to exist, to hold bytes and to have a size."""
    if not os.path.isfile(annotation_file):
        raise DataError(f"{annotation_file}: no such annotation file")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports its loading on stdout
        try:
            coco = COCO(annotation_file)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{annotation_file}: not a COCO annotation file ({e})") from None
    if not coco.dataset.get("categories"):
        raise DataError(f"{annotation_file}: no categories")
    for image in coco.dataset.get("images", []):
        path = os.path.join(image_dir, image["file_name"])
        if not os.path.isfile(path):
            raise DataError(f"{annotation_file} lists image {image['id']} as {image['file_name']}, and {path} "
                            f"does not exist")
        if not image.get("height") or not image.get("width") or not os.path.getsize(path):
            raise DataError(f"{annotation_file}: image {image['id']} ({path}) has no pixels (listed as "
                            f"{image.get('height')}x{image.get('width')}, {os.path.getsize(path)} bytes)")
    return coco


def _classes(coco: COCO) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """mmdet's class order: the categories by id (COCO's 80 give CLASSES)."""
    categories = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    return tuple(c["id"] for c in categories), tuple(c["name"] for c in categories)


def folder_split(root: str, split: str) -> DetectionSplit:
    """root/annotations/instances_SPLIT.json with its images in root/SPLIT/ (COCO's layout; mmdet's
    CocoDataset with ann_file and img_prefix), in the annotation file's order."""
    annotation_file = os.path.join(root, "annotations", f"instances_{split}.json")
    image_dir = os.path.join(root, split)
    coco = read_coco_folder(annotation_file, image_dir)
    images = coco.dataset["images"]
    if not images:
        raise DataError(f"{annotation_file} lists no images")
    paths = [os.path.join(image_dir, image["file_name"]) for image in images]
    dataset = tf.data.Dataset.from_tensor_slices({"path": paths, "image_id": [int(i["id"]) for i in images]})
    dataset = dataset.map(lambda ex: {"image": tf.io.read_file(ex["path"]), "image_id": ex["image_id"]})
    return DetectionSplit(dataset, coco, *_classes(coco))


def _encoded_hw(encoded):
    """An encoded image's (h, w): from the JPEG header without decoding, else by decoding."""
    return tf.cond(tf.io.is_jpeg(encoded), lambda: tf.io.extract_jpeg_shape(encoded)[:2],
                   lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))[:2])


def tfds_split(name: str, split: str, *, data_dir: str | None, download: bool = False) -> DetectionSplit:
    """A TFDS detection split (coco/2017: image, image/id, objects with bbox, label, is_crowd, area). Its
    ground truth is read in one pass: boxes (TFDS stores them relative to the image) back in pixels,
    COCO's category ids, areas and crowd flags. TFDS's COCO has no instance masks, so no segm ground truth."""
    dataset, _, _, _, features = sources.tfds_examples(
        name, split, data_dir=data_dir, process_index=0, process_count=1, download=download,
        fields={"image": "image", "image_id": "image/id", "objects": "objects"}, others="'folder'",
        kind="a detection dataset (image, image/id, objects) is needed")
    objects = features["objects"]
    wanted = ("bbox", "label", "is_crowd", "area")
    if any(f not in objects.feature for f in wanted):
        raise DataError(f"TFDS dataset {name!r}: its objects have {list(objects.feature)}, not {', '.join(wanted)}")
    names = tuple(objects.feature["label"].names)
    if len(names) == len(CLASSES):  # TFDS's COCO: its labels are the 80 categories in id order
        names, category_ids = CLASSES, CATEGORY_IDS
    else:
        category_ids = tuple(range(1, len(names) + 1))
    summary = dataset.map(lambda ex: {"hw": _encoded_hw(ex["image"]), "image_id": ex["image_id"],
                                      **{f: ex["objects"][f] for f in wanted}}, num_parallel_calls=tf.data.AUTOTUNE)
    images, annotations = [], []
    for ex in summary.as_numpy_iterator():
        h, w = (int(v) for v in ex["hw"])
        images.append({"id": int(ex["image_id"]), "height": h, "width": w})
        for (y0, x0, y1, x1), label, crowd, area in zip(ex["bbox"], ex["label"], ex["is_crowd"], ex["area"]):
            annotations.append({"id": len(annotations) + 1, "image_id": int(ex["image_id"]),
                                "category_id": category_ids[int(label)], "iscrowd": int(crowd), "area": float(area),
                                "bbox": [float(x0 * w), float(y0 * h), float((x1 - x0) * w), float((y1 - y0) * h)]})
    if not images:
        raise DataError(f"TFDS dataset {name!r} split {split!r} has no examples")
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": i, "name": n} for i, n in zip(category_ids, names)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return DetectionSplit(dataset.map(lambda ex: {"image": ex["image"], "image_id": ex["image_id"]}), coco,
                          tuple(category_ids), names)
