"""timm's RandAugment (the Swin recipe uses `rand-m9-mstd0.5-inc1`) as TensorFlow graph ops for `tf.data`.

Every op takes and returns a uint8 [H, W, 3] tensor and is given timm's already-converted argument
(degrees, enhancement factor, bits, threshold, pixels), so each can be checked against timm's PIL op.
Pixel ops reproduce PIL's integer and float32 arithmetic; geometric ops sample bilinearly.
"""

from __future__ import annotations

import dataclasses
import math
import re

from swin_jax.data.host import tf

from swin_jax.data.on_device import IMAGENET_MEAN

IMAGENET_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # timm's fill colour for the Swin recipe
_LEVEL_DENOM = 10.0


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
    num_layers: int = 2  # n
    magnitude: float = 9.0  # m
    magnitude_std: float = 0.5  # mstd; 0: fixed magnitude, inf: uniform in [0, magnitude]
    magnitude_max: float = 10.0  # mmax
    prob: float = 0.5  # p, for each chosen op
    increasing: bool = True  # inc1: timm's _RAND_INCREASING_TRANSFORMS rather than _RAND_TRANSFORMS


def parse_rand_augment(spec: str) -> RandAugmentSpec:
    """timm's config string, e.g. 'rand-m9-mstd0.5-inc1'; absent sections take timm's defaults
    (m10, n2, mstd0, mmax10, p0.5, inc0), which are not those of RandAugmentSpec()."""
    sections = spec.split("-")
    if sections[0] != "rand":
        raise ValueError(f"RandAugment config {spec!r} must start with 'rand', not {sections[0]!r}")
    fields = dict(num_layers=2, magnitude=10.0, magnitude_std=0.0, magnitude_max=10.0, prob=0.5, increasing=False)
    for section in sections[1:]:
        def bad(reason):
            return ValueError(f"RandAugment config {spec!r}: section {section!r} {reason}")

        if section.startswith("t") or section.startswith("w"):
            raise bad("selects a weighted or named transform set, which is not supported")
        match = re.fullmatch(r"([a-z]+)(\d.*)", section)
        if match is None:
            raise bad("is not a key followed by a number")
        key, value = match.groups()
        parse = {"m": int, "n": int, "mmax": int, "inc": int, "mstd": float, "p": float}.get(key)
        if parse is None:
            raise bad(f"has unknown key {key!r}")
        try:
            number = parse(value)
        except ValueError:
            raise bad(f"needs {'an integer' if parse is int else 'a number'}, not {value!r}") from None
        if key == "m":
            fields["magnitude"] = float(number)
        elif key == "n":
            fields["num_layers"] = number
        elif key == "mmax":
            fields["magnitude_max"] = float(number or _LEVEL_DENOM)  # timm treats mmax0 as unset
        elif key == "mstd":
            fields["magnitude_std"] = math.inf if number > 100 else number  # timm: > 100 means uniform
        elif key == "p":
            if not 0.0 <= number <= 1.0:
                raise bad("needs a probability in [0, 1]")
            fields["prob"] = number
        else:
            if number not in (0, 1):
                raise bad("needs 0 or 1")
            fields["increasing"] = bool(number)
    return RandAugmentSpec(**fields)


# ---------------------------------------------------------------------------------------------- pixel ops

def _apply_luts(image, luts):
    """Per-channel lookup: luts is [256] or [3, 256] integers."""
    luts = tf.reshape(tf.broadcast_to(tf.clip_by_value(tf.cast(luts, tf.int32), 0, 255), [3, 256]), [-1])
    return tf.cast(tf.gather(luts, tf.cast(image, tf.int32) + tf.range(3) * 256), tf.uint8)


def _grayscale(image):
    # PIL's RGB -> L: ITU-R 601-2 luma in 16-bit fixed point, rounded.
    r, g, b = tf.unstack(tf.cast(image, tf.int32), axis=-1)
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) // 65536


def _blend(degenerate, image, factor):
    # Image.blend works in float32 and truncates when storing back to uint8.
    start = tf.cast(degenerate, tf.float32)
    mixed = start + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - start)
    return tf.cast(tf.clip_by_value(mixed, 0.0, 255.0), tf.uint8)


def auto_contrast(image):
    pixels = tf.cast(tf.reshape(image, [-1, 3]), tf.float64)
    low, high = tf.reduce_min(pixels, 0)[:, None], tf.reduce_max(pixels, 0)[:, None]
    # Same float64 expression as PIL's LUT so truncation lands on the same side.
    scale = 255.0 / tf.maximum(high - low, 1.0)
    levels = tf.range(256, dtype=tf.float64)[None]
    stretched = tf.floor(tf.maximum(levels * scale + (-low * scale), 0.0))
    return _apply_luts(image, tf.where(high > low, stretched, levels))


def equalize(image):
    channels = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
    histogram = tf.math.bincount(channels, minlength=256, maxlength=256, axis=-1)
    # PIL spreads all pixels but those of the brightest level over 255 steps.
    brightest_count = tf.gather(histogram, tf.reduce_max(channels, 1), batch_dims=1)
    step = ((tf.reduce_sum(histogram, 1) - brightest_count) // 255)[:, None]
    safe_step = tf.maximum(step, 1)
    luts = (safe_step // 2 + tf.cumsum(histogram, axis=1, exclusive=True)) // safe_step
    return _apply_luts(image, tf.where(step > 0, luts, tf.range(256)[None]))


def invert(image):
    return 255 - image


def posterize(image, bits):
    # Keeping 0 bits gives black, as older PIL and the TF reference implementations do.
    step = tf.bitwise.left_shift(1, 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8))
    return tf.cast(tf.cast(image, tf.int32) // step * step, tf.uint8)


def solarize(image, threshold):
    pixels = tf.cast(image, tf.int32)
    return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), pixels, 255 - pixels), tf.uint8)


def solarize_add(image, addition, threshold=128):
    pixels = tf.cast(image, tf.int32)
    added = tf.minimum(pixels + tf.cast(addition, tf.int32), 255)
    return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), added, pixels), tf.uint8)


def color(image, factor):
    return _blend(tf.repeat(_grayscale(image)[..., None], 3, axis=-1), image, factor)


def contrast(image, factor):
    mean = tf.reduce_mean(tf.cast(_grayscale(image), tf.float64))
    return _blend(tf.fill(tf.shape(image), tf.floor(mean + 0.5)), image, factor)


def brightness(image, factor):
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    # PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, summed row by row in float32 and
    # rounded; the one-pixel border is left as it is.
    pixels = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    edge, centre = tf.constant(1 / 13, tf.float32), tf.constant(5 / 13, tf.float32)
    total = tf.constant(0.5, tf.float32)
    for dy in (1, 0, -1):
        row = pixels[1 + dy:height - 1 + dy]
        weight = centre if dy == 0 else edge
        total += row[:, :-2] * edge + row[:, 1:-1] * weight + row[:, 2:] * edge
    smoothed = tf.cast(tf.clip_by_value(total, 0.0, 255.0), tf.uint8)
    smoothed = tf.pad(smoothed, [[1, 1], [1, 1], [0, 0]])
    inner = tf.pad(tf.ones([height - 2, width - 2, 1], tf.bool), [[1, 1], [1, 1], [0, 0]])
    return _blend(tf.where(inner, smoothed, image), image, factor)


# ------------------------------------------------------------------------------------------ geometric ops

def _affine(image, coefficients, fill):
    """PIL's Image.transform(AFFINE): output pixel centre (x, y) samples the input at
    (a x + b y + c, d x + e y + f), and is `fill` when that point lies outside the image."""
    # Bilinear, not timm's bicubic: ImageProjectiveTransformV3 has no bicubic mode.
    a, b, c, d, e, f = [tf.cast(v, tf.float64) for v in coefficients]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # V3 addresses pixels by index, PIL by centre (index + 0.5).
    index_transform = tf.stack([a, b, c + (a + b - 1) / 2, d, e, f + (d + e - 1) / 2, 0.0, 0.0])
    pixels = tf.cast(image, tf.float32)
    with_coverage = tf.concat([pixels, tf.ones_like(pixels[..., :1])], axis=-1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=with_coverage[None], transforms=tf.cast(index_transform, tf.float32)[None],
        output_shape=tf.stack([height, width]), fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")[0]
    # V3 mixes zeros in for neighbours off the image; dividing by the coverage channel renormalises
    # the weights over the neighbours on it, which is what PIL's edge clamping amounts to.
    sampled = warped[..., :3] / tf.maximum(warped[..., 3:], 1e-6)
    x = tf.range(tf.cast(width, tf.float64))[None] + 0.5
    y = tf.range(tf.cast(height, tf.float64))[:, None] + 0.5
    source_x, source_y = a * x + b * y + c, d * x + e * y + f
    inside = ((source_x >= 0) & (source_x < tf.cast(width, tf.float64))
              & (source_y >= 0) & (source_y < tf.cast(height, tf.float64)))
    # PIL truncates; the small offset keeps float32 error from pulling whole-number results down a level.
    out = tf.where(inside[..., None], tf.floor(sampled + 1e-3), tf.constant(fill, tf.float32))
    return tf.ensure_shape(tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8), image.shape)


def rotate(image, degrees, fill=IMAGENET_FILL):
    """Counter-clockwise about the image centre for positive degrees, as PIL's Image.rotate."""
    angle = -tf.cast(degrees, tf.float64) * (math.pi / 180)
    cos, sin = tf.cos(angle), tf.sin(angle)
    centre_x = tf.cast(tf.shape(image)[1], tf.float64) / 2
    centre_y = tf.cast(tf.shape(image)[0], tf.float64) / 2
    return _affine(image, (cos, sin, centre_x - cos * centre_x - sin * centre_y,
                           -sin, cos, centre_y + sin * centre_x - cos * centre_y), fill)


def shear_x(image, factor, fill=IMAGENET_FILL):
    return _affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image, factor, fill=IMAGENET_FILL):
    return _affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x(image, pixels, fill=IMAGENET_FILL):
    return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y(image, pixels, fill=IMAGENET_FILL):
    return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


# ------------------------------------------------------------------------------------------- RandAugment

# timm's _RAND_TRANSFORMS order; with spec.increasing the six level-dependent ops are the *Increasing ones.
OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _branches(image, magnitude, negate, spec, fill, translate_pct):
    """One thunk per entry of OP_NAMES plus a final identity, with timm's magnitude-to-argument maps."""
    level = magnitude / _LEVEL_DENOM

    def signed(value):
        return tf.where(negate, -value, value)

    def truncated(value):
        return tf.cast(tf.floor(value), tf.int32)

    solarize_threshold = tf.minimum(256, truncated(level * 256))
    if spec.increasing:  # the *Increasing variants: larger magnitude, stronger change
        bits = 4 - truncated(level * 4)
        solarize_threshold = 256 - solarize_threshold
        factor = tf.maximum(0.1, 1.0 + signed(level * 0.9))
    else:
        bits = truncated(level * 4)
        factor = level * 1.8 + 0.1
    height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    shift = signed(level * translate_pct)
    return [
        lambda: auto_contrast(image),
        lambda: equalize(image),
        lambda: invert(image),
        lambda: rotate(image, signed(level * 30.0), fill),
        lambda: posterize(image, bits),
        lambda: solarize(image, solarize_threshold),
        lambda: solarize_add(image, tf.minimum(128, truncated(level * 110))),
        lambda: color(image, factor),
        lambda: contrast(image, factor),
        lambda: brightness(image, factor),
        lambda: sharpness(image, factor),
        lambda: shear_x(image, signed(level * 0.3), fill),
        lambda: shear_y(image, signed(level * 0.3), fill),
        lambda: translate_x(image, shift * width, fill),
        lambda: translate_y(image, shift * height, fill),
        lambda: image,
    ]


def _sample_magnitude(spec, seed):
    if spec.magnitude_std == math.inf:
        magnitude = tf.random.stateless_uniform([], seed, 0.0, spec.magnitude)
    elif spec.magnitude_std > 0:
        magnitude = spec.magnitude + spec.magnitude_std * tf.random.stateless_normal([], seed)
    else:
        magnitude = tf.constant(spec.magnitude, tf.float32)
    return tf.clip_by_value(magnitude, 0.0, spec.magnitude_max)


def rand_augment(image: tf.Tensor, seed: tf.Tensor, spec: RandAugmentSpec, fill=IMAGENET_FILL,
                 translate_pct: float = 0.45) -> tf.Tensor:
    """Applies spec.num_layers ops chosen uniformly with replacement, each with probability spec.prob.

    image: uint8 [H, W, 3]; seed: int32/int64 [2] stateless seed, the only source of randomness."""
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"rand_augment needs a uint8 image, got {image.dtype.name}")
    if spec.num_layers <= 0:
        return image
    # stateless_split draws seeds of the seed's own dtype; fixing it makes [3, 4] mean one thing.
    seed = tf.cast(seed, tf.int64)
    for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, spec.num_layers)):
        op_seed, apply_seed, magnitude_seed, sign_seed = tf.unstack(
            tf.random.experimental.stateless_split(layer_seed, 4))
        op_index = tf.random.stateless_uniform([], op_seed, 0, len(OP_NAMES), dtype=tf.int32)
        applied = tf.random.stateless_uniform([], apply_seed) < spec.prob
        negate = tf.random.stateless_uniform([], sign_seed) > 0.5
        magnitude = _sample_magnitude(spec, magnitude_seed)
        branches = _branches(image, magnitude, negate, spec, fill, translate_pct)
        image = tf.switch_case(tf.where(applied, op_index, len(OP_NAMES)), branches)
    return image
