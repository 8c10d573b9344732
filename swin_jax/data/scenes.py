"""The offline segmentation demo: scenes of handwritten digits, made on the fly.

Every scene is a small RGB canvas (96x96 by default) with a textured, noisy background and two to four of
scikit-learn's 8x8 handwritten digits (`sklearn.datasets.load_digits`, shipped with the package, so
nothing is downloaded) scaled up to 20-40 px, each in a colour that stands out from the background
under it, later digits drawn over earlier ones. The label map has 11 classes: 0 for background and
d + 1 for a pixel on the stroke of digit d, where the digit's upscaled intensity (its blending alpha)
exceeds one half. Where a later digit's box covers an earlier digit but its own stroke does not (alpha
<= 0.5, so the earlier digit still shows through), the earlier label stays.

The digits are split as in the classification demo (`sources.demo_arrays`): the permutation
`np.random.RandomState(0).permutation(1797)`, the first 360 for "test" and the rest for "train". Test
scenes are made only of test digits and training scenes only of training digits.
"""

from __future__ import annotations

import functools

import numpy as np

SCENE_CLASSES = ("background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
SPLITS = ("train", "test")
NUM_DIGITS = 1797  # in sklearn's digits data set
TEST_DIGITS = 360  # the classification demo's held-out share (sources.DEMO_TEST_EXAMPLES)
MAX_INTENSITY = 16.0  # the digits' pixel values run 0..16

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_MIN_CONTRAST = 100.0  # luminance gap (0..255) between a digit's colour and the background under it


# ---------------------------------------------------------------------------------------------------
# Source digits


@functools.lru_cache(maxsize=None)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32)
    labels = digits.target.astype(np.uint8)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(split: str) -> np.ndarray:
    """Indices into `load_digits()` of the digits that `split`'s scenes are made of."""
    _check_split(split)
    order = np.random.RandomState(0).permutation(NUM_DIGITS)
    return order[:TEST_DIGITS] if split == "test" else order[TEST_DIGITS:]


def split_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's source digits: 8x8 float32 intensities (0..16) and their classes 0..9 (uint8)."""
    images, labels = _all_digits()
    take = split_indices(split)
    return images[take], labels[take]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"the digit scenes have splits 'train' and 'test', not {split!r}")


# ---------------------------------------------------------------------------------------------------
# Resampling matrices (separable: an upscaled image is R @ image @ R.T)


@functools.lru_cache(maxsize=None)
def _bicubic_matrix(size: int, source: int = 8) -> np.ndarray:
    """(size, source) weights of PIL's bicubic resize along one axis, read off by resizing the identity."""
    from PIL import Image

    # Resizing only the width of the identity image gives row i = the weights applied to input pixel i.
    eye = Image.fromarray(np.eye(source, dtype=np.float32))
    weights = np.asarray(eye.resize((size, source), Image.BICUBIC), dtype=np.float32).T
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=None)
def _linear_matrix(size: int, source: int) -> np.ndarray:
    """(size, source) weights of linear interpolation with the end points aligned."""
    where = np.linspace(0.0, source - 1, size)
    low = np.minimum(np.floor(where).astype(int), source - 2)
    frac = where - low
    weights = np.zeros((size, source), np.float32)
    weights[np.arange(size), low] = 1.0 - frac
    weights[np.arange(size), low + 1] = frac
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=None)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    return axis[:, None], axis[None, :]


def upscale_digit(image: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (intensities 0..16) resized bicubically to size x size, as blending alpha in [0, 1]."""
    weights = _bicubic_matrix(int(size), image.shape[0])
    alpha = weights @ (np.asarray(image, np.float32) / MAX_INTENSITY) @ weights.T
    return np.clip(alpha, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# Scenes


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    """A float32 (size, size, 3) canvas: a colour gradient in a random direction plus low-frequency
    colour noise (a coarse random grid interpolated up)."""
    start = rng.uniform(0.0, 255.0, size=3).astype(np.float32)
    change = rng.uniform(-90.0, 90.0, size=3).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    rows, cols = _unit_grid(size)
    ramp = (np.float32(np.sin(angle)) * rows + np.float32(np.cos(angle)) * cols) / np.float32(np.sqrt(2.0)) + 0.5
    canvas = start + ramp[..., None] * change
    cells = rng.randint(3, 7)
    grid = rng.normal(0.0, rng.uniform(12.0, 30.0), size=(3, cells, cells)).astype(np.float32)
    weights = _linear_matrix(size, cells)
    canvas += (weights @ grid @ weights.T).transpose(1, 2, 0)
    return np.clip(canvas, 0.0, 255.0)


def _contrasting_colour(rng: np.random.RandomState, under: np.ndarray) -> np.ndarray:
    """A random colour whose luminance is at least _MIN_CONTRAST away from that of the mean colour
    `under`: darker on a light background, lighter on a dark one, hue kept from a random draw."""
    colour = rng.uniform(0.0, 255.0, size=3).astype(np.float32)
    shade = rng.uniform()
    ground = float(under @ _LUMA)
    if ground >= 127.5:
        target = shade * max(ground - _MIN_CONTRAST, 0.0)
    else:
        target = min(ground + _MIN_CONTRAST, 255.0) + shade * (255.0 - min(ground + _MIN_CONTRAST, 255.0))
    luma = float(colour @ _LUMA)
    if target <= luma:  # darken: scale towards black
        return colour * np.float32(target / max(luma, 1e-3))
    # lighten: move towards white
    return 255.0 - (255.0 - colour) * np.float32((255.0 - target) / max(255.0 - luma, 1e-3))


def paste_digit(canvas: np.ndarray, label: np.ndarray, alpha: np.ndarray, colour: np.ndarray, top: int, left: int,
                cls: int) -> None:
    """Draws one digit in place: blends `colour` into `canvas` with `alpha` at (top, left) and writes
    `cls` into `label` where alpha > 0.5 (the stroke); the rest of the box keeps its label."""
    height, width = alpha.shape
    box = (slice(top, top + height), slice(left, left + width))
    a = alpha[..., None]
    canvas[box] = canvas[box] * (1.0 - a) + colour * a
    label[box][alpha > 0.5] = cls


def _draw(rng, digit_images, digit_labels, size, digits, digit_size):
    """(image uint8, owner int (size, size): the index of the digit whose stroke shows at each pixel, -1
    for none, and each drawn digit's class)."""
    low, high = digit_size
    if not 1 <= low <= high <= size:
        raise ValueError(f"digit_size {digit_size} must be an increasing range within 1..{size} (the canvas)")
    if not 0 <= digits[0] <= digits[1]:
        raise ValueError(f"digits {digits} must be an increasing range of counts")
    if len(digit_images) == 0:
        raise ValueError("no source digits to draw from")
    canvas = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    classes = []
    for k in range(rng.randint(digits[0], digits[1] + 1)):
        pick = rng.randint(len(digit_images))
        side = rng.randint(low, high + 1)
        top, left = rng.randint(0, size - side + 1), rng.randint(0, size - side + 1)
        alpha = upscale_digit(digit_images[pick], side)
        under = canvas[top:top + side, left:left + side].reshape(-1, 3).mean(axis=0)
        paste_digit(canvas, owner, alpha, _contrasting_colour(rng, under), top, left, k)
        classes.append(int(digit_labels[pick]))
    # Per-pixel noise over everything, digits included.
    spread = rng.randint(4, 17)
    canvas += rng.randint(0, 2 * spread + 1, size=canvas.shape, dtype=np.uint8) - np.float32(spread)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), owner, np.array(classes, np.int64)


def make_scene(rng: np.random.RandomState, digit_images, digit_labels, size: int = 96, digits=(2, 4),
               digit_size=(20, 40)) -> tuple[np.ndarray, np.ndarray]:
    """One scene drawn with `rng` from the given source digits (8x8, intensities 0..16, classes 0..9):
    image uint8 (size, size, 3) and label uint8 (size, size), 0 background and d + 1 for digit d.
    `digits` and `digit_size` are inclusive ranges: how many digits, and their side in pixels."""
    image, owner, classes = _draw(rng, digit_images, digit_labels, size, digits, digit_size)
    label = np.append(classes + 1, 0)[owner].astype(np.uint8)  # owner -1 (no stroke) picks the 0
    return image, label


def make_instance_scene(rng: np.random.RandomState, digit_images, digit_labels, size: int = 96, digits=(2, 4),
                        digit_size=(20, 40)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene `make_scene` draws with the same `rng`, as instances: (image, masks bool (K, size, size),
    classes (K,) 0..9), one per digit whose stroke still shows (later digits cover earlier ones)."""
    image, owner, classes = _draw(rng, digit_images, digit_labels, size, digits, digit_size)
    masks = owner[None] == np.arange(len(classes))[:, None, None]
    shown = masks.any(axis=(1, 2))
    return image, masks[shown], classes[shown]


def scene_rng(split: str, index: int, seed: int = 0) -> np.random.RandomState:
    """The generator of scene `index` of `split`: depends on (seed, split, index) only."""
    _check_split(split)
    return np.random.RandomState([int(seed), SPLITS.index(split), int(index)])


def scene_arrays(split: str, count: int, *, size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` scenes of `split` ("train" or "test"): images (count, size, size, 3) and labels
    (count, size, size), both uint8. Scene i is the same whatever `count` is."""
    _check_split(split)
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    digit_images, digit_labels = split_digits(split)
    high = min(40, size)
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty((count, size, size), np.uint8)
    for i in range(count):
        images[i], labels[i] = make_scene(scene_rng(split, i, seed), digit_images, digit_labels, size=size,
                                          digit_size=(min(20, high), high))
    return images, labels


def digit_arrays(split: str, size: int = 32, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every digit of `split` alone on a size x size canvas, drawn as the scenes draw digits (filling
    the canvas): images (n, size, size, 3) uint8 in `split_digits` order and their classes 0..9. Digit
    i is drawn with its own generator, independent of the scenes'. Pre-training on these gives a
    backbone the scenes' digits look familiar to."""
    _check_split(split)
    digit_images, digit_labels = split_digits(split)
    images = np.empty((len(digit_images), size, size, 3), np.uint8)
    for i, digit in enumerate(digit_images):
        rng = np.random.RandomState([int(seed), SPLITS.index(split), i, 1])
        images[i] = make_scene(rng, digit[None], digit_labels[i:i + 1], size=size, digits=(1, 1),
                               digit_size=(size, size))[0]
    return images, digit_labels.copy()


# ---------------------------------------------------------------------------------------------------
# Preview


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """Label maps as RGB uint8, in the ADE20K palette's first 11 colours."""
    from swin_jax.data.ade20k import palette

    return palette(len(SCENE_CLASSES))[labels]


def save_scene_preview(path, images, labels, *, count: int = 8, columns: int = 4, scale: int = 2) -> None:
    """Writes a PNG grid of the first `count` scenes, each image with its colour-coded label map to its
    right, `columns` scenes a row, enlarged `scale` times, and a legend of the label colours below."""
    from PIL import Image, ImageDraw

    from swin_jax.data.ade20k import palette

    images, labels = np.asarray(images)[:count], np.asarray(labels)[:count]
    count = len(images)
    if count == 0:
        raise ValueError("no scenes to preview")
    height, width = images.shape[1:3]
    gap = 6
    columns = min(columns, count)
    rows = -(-count // columns)
    tile_h, tile_w = height * scale, width * scale
    cell_w = 2 * tile_w + gap // 2 + gap
    legend_h = 22
    sheet = np.full((rows * (tile_h + gap) + gap + legend_h, columns * cell_w + gap, 3), 255, np.uint8)
    coloured = colour_labels(labels)
    for k in range(count):
        r, c = divmod(k, columns)
        y, x = gap + r * (tile_h + gap), gap + c * cell_w
        sheet[y:y + tile_h, x:x + tile_w] = images[k].repeat(scale, 0).repeat(scale, 1)
        x += tile_w + gap // 2
        sheet[y:y + tile_h, x:x + tile_w] = coloured[k].repeat(scale, 0).repeat(scale, 1)
    picture = Image.fromarray(sheet)
    draw = ImageDraw.Draw(picture)
    x, y = gap, sheet.shape[0] - legend_h + 4
    for name, colour in zip(SCENE_CLASSES, palette(len(SCENE_CLASSES))):
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(v) for v in colour), outline=(0, 0, 0))
        text = "bg" if name == "background" else name
        draw.text((x + 16, y), text, fill=(0, 0, 0))
        x += 16 + 8 * len(text) + 10
    picture.save(path)
