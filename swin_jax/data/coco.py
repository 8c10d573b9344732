"""COCO for the detectors: the 80 category names and their ids in COCO's annotation files, and the official
test transform of the Swin detection configs (mmdet's coco_instance test pipeline)."""

from __future__ import annotations

import numpy as np

from swin_jax.data import segmentation
from swin_jax.data.host import tf
from swin_jax.data.on_device import normalize

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
