"""Per-example image transforms in TensorFlow, the host half of the official Swin recipe (timm's
`create_transform`); normalisation and random erasing follow on device (`on_device.py`).

Training: random resized crop (cropped before decoding for JPEGs) -> horizontal flip -> RandAugment.
Evaluation (the one definition, also used by `python -m swin_jax.predict`): resize the shorter side to
int(size / crop_pct) and centre crop, or a plain resize to size x size when crop_pct is 1; crop_pct 0
follows the official rule for the size (`official_crop_pct`). Both return uint8. Every random choice is drawn from a stateless seed
passed in with the example, so the same seed gives the same images on any machine.
"""

from __future__ import annotations

import math

from swin_jax.data import rand_augment as ra
from swin_jax.data.host import tf

CROP_ATTEMPTS = 10  # as timm


def official_crop_pct(size: int) -> float:
    """The official evaluation crop for models at `size`: the shorter side to size / 0.875 (256 for 224)
    and a centre crop (TEST.CROP True); the 384 fine-tuned models resize plainly (TEST.CROP False)."""
    return 1.0 if size >= 384 else 0.875


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32)


def _randint(seed, high):
    """A uniform integer in [0, high], inclusive as Python's random.randint."""
    high = tf.cast(high, tf.int32)
    return tf.random.stateless_uniform([], seed, minval=0, maxval=high + 1, dtype=tf.int32)


def crop_window(seed, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """timm's RandomResizedCrop.get_params: up to ten tries of an area fraction uniform in `scale` and a
    log-uniform aspect ratio; if none fits, a centre crop with the ratio clamped. Returns (y, x, h, w)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    h_in, w_in = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = _uniform(seeds[0], [CROP_ATTEMPTS], scale[0], scale[1]) * h_in * w_in
    aspect = tf.exp(_uniform(seeds[1], [CROP_ATTEMPTS], math.log(ratio[0]), math.log(ratio[1])))
    w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    in_ratio = w_in / h_in
    fall_w = tf.where(in_ratio > ratio[1], tf.cast(tf.round(h_in * ratio[1]), tf.int32), width)
    fall_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w_in / ratio[0]), tf.int32), height)
    found = tf.reduce_any(fits)
    h = tf.where(found, h[first], fall_h)
    w = tf.where(found, w[first], fall_w)
    y = tf.where(found, _randint(seeds[2], height - h), (height - h) // 2)
    x = tf.where(found, _randint(seeds[3], width - w), (width - w) // 2)
    return y, x, h, w


def _decode(image):
    decoded = tf.io.decode_image(image, channels=3, expand_animations=False, dtype=tf.uint8)
    decoded.set_shape([None, None, 3])
    return decoded


def decode(image):
    """uint8 HxWx3 from encoded bytes (grey-scale, CMYK and alpha images become RGB) or as given."""
    return _decode(image) if image.dtype == tf.string else image


def random_crop(image, seed, scale, ratio):
    """A random resized crop window (timm's sampling) of encoded bytes or a decoded array, decoded once:
    JPEGs decode only the window, other formats decode whole and are sliced."""

    def window_of(array):
        y, x, h, w = crop_window(seed, tf.shape(array)[0], tf.shape(array)[1], scale, ratio)
        return array[y:y + h, x:x + w]

    if image.dtype != tf.string:
        return window_of(image)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(image, tf.int32)
        y, x, h, w = crop_window(seed, shape[0], shape[1], scale, ratio)
        return tf.image.decode_and_crop_jpeg(image, tf.stack([y, x, h, w]), channels=3)

    cropped = tf.cond(tf.io.is_jpeg(image), jpeg, lambda: window_of(_decode(image)))
    cropped.set_shape([None, None, 3])
    return cropped


def resize(image, size, method="bicubic"):
    """PIL-like resize to size (an int or (h, w)): antialiased when shrinking, uint8 out."""
    size = [size, size] if isinstance(size, int) else size
    out = tf.image.resize(tf.cast(image, tf.float32), size, method=method, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


@tf.autograph.experimental.do_not_convert
def train_transform(image, seed, *, size: int, scale, ratio, hflip: float, rand_augment: str,
                    interpolation: str = "bicubic", fill=ra.IMAGENET_FILL):
    """One training example: encoded bytes or uint8 HxWx3 in, uint8 size x size x 3 out. RandAugment fills
    uncovered pixels with `fill`, the mean colour."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    out = resize(random_crop(image, seeds[0], scale, ratio), size, interpolation)
    if hflip > 0:
        flip = tf.random.stateless_uniform([], seeds[1]) < hflip
        out = tf.cond(flip, lambda: out[:, ::-1], lambda: out)
    if rand_augment:
        out = ra.rand_augment(out, seeds[2], ra.parse_rand_augment(rand_augment), fill=fill)
    return tf.ensure_shape(out, [size, size, 3])


@tf.autograph.experimental.do_not_convert
def eval_transform(image, *, size: int, crop_pct: float = 0.0, interpolation: str = "bicubic"):
    """The official evaluation transform of encoded bytes or a uint8 HxWx3 array: resize the shorter side
    to int(size / crop_pct) and centre-crop size x size; with crop_pct = 1 a plain resize to size x size
    (the official 384 models); 0 picks `official_crop_pct(size)`."""
    crop_pct = crop_pct or official_crop_pct(size)
    image = decode(image)
    if crop_pct >= 1.0:
        out = resize(image, size, interpolation)
    else:
        short = int(size / crop_pct)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        # torchvision's Resize(short) truncates the long side.
        new_h = tf.where(height <= width, short, tf.cast(short * height / width, tf.int32))
        new_w = tf.where(height <= width, tf.cast(short * width / height, tf.int32), short)
        out = resize(image, tf.stack([new_h, new_w]), interpolation)
        top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2), tf.int32)
        left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2), tf.int32)
        out = out[top:top + size, left:left + size]
    return tf.ensure_shape(out, [size, size, 3])
