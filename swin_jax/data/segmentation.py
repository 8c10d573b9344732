"""Per-example transforms for semantic segmentation in TensorFlow: the host half of mmsegmentation's ADE20K
recipe as the official Swin segmentation repository runs it (mmseg 0.11, configs/_base_/datasets/ade20k.py).

Training: keep-ratio resize to (2048, 512) times a ratio uniform in [0.5, 2] -> random 512 x 512 crop that
re-draws up to ten times while one class covers >= 75% of it -> horizontal flip -> photometric distortion
-> pad to the crop size (image 0, label 255). Evaluation: the keep-ratio resize to (2048, 512) alone.
Normalisation follows on device, which zeroes the padding again in normalised space from `valid`, as
mmseg's Pad after Normalize does. Every function runs in graph mode inside `tf.data.Dataset.map`, and every
random choice is drawn from a stateless seed passed in with the example, so the same seed gives the same
example on any machine.
"""

from __future__ import annotations

import numbers

from swin_jax.data.host import tf

CROP_RETRIES = 10  # as mmseg's RandomCrop: the first box and up to ten re-draws


def _is_static(*values):
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def rescale_size(height, width, scale):
    """mmcv's keep-ratio size rule: the largest factor that fits the long side in max(scale) and the short
    side in min(scale), sizes rounded half up. Python ints in, ints out; int32 tensors in, tensors out."""
    long_edge, short_edge = scale
    if _is_static(height, width, long_edge, short_edge):
        long_edge, short_edge = max(long_edge, short_edge), min(long_edge, short_edge)
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
        return int(height * factor + 0.5), int(width * factor + 0.5)
    # float64 as mmcv's Python floats, so that the rounding lands on the same integer.
    h, w, a, b = (tf.cast(v, tf.float64) for v in (height, width, long_edge, short_edge))
    factor = tf.minimum(tf.maximum(a, b) / tf.maximum(h, w), tf.minimum(a, b) / tf.minimum(h, w))
    new_h = tf.cast(tf.floor(h * factor + 0.5), tf.int32)
    new_w = tf.cast(tf.floor(w * factor + 0.5), tf.int32)
    return new_h, new_w


def decode_label(encoded):
    """uint8 HxW class map from PNG bytes, or from an already decoded HxW or HxWx1 uint8 array."""
    if encoded.dtype == tf.string:
        label = tf.io.decode_png(encoded, channels=1, dtype=tf.uint8)
    else:
        label = tf.convert_to_tensor(encoded)
    label = tf.reshape(label, tf.shape(label)[:2])
    label.set_shape([None, None])
    return label


def _resize_image(image, size):
    # cv2's INTER_LINEAR: half-pixel centres and no antialiasing, even when shrinking.
    out = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def _resize_label(label, size):
    out = tf.image.resize(label[..., None], size, method="nearest")
    return out[..., 0]


def _rescale_pair(image, label, scale):
    new_h, new_w = rescale_size(tf.shape(image)[0], tf.shape(image)[1], scale)
    size = tf.stack([new_h, new_w])
    return _resize_image(image, size), _resize_label(label, size)


@tf.autograph.experimental.do_not_convert
def random_rescale(image, label, seed, scale=(2048, 512), ratio_range=(0.5, 2.0)):
    """mmseg's Resize with a ratio range: ratio r uniform in `ratio_range`, target scale
    (int(scale[0] * r), int(scale[1] * r)), then the keep-ratio resize (`rescale_size`); `ratio_range`
    None resizes to `scale` itself. The image is bilinear (cv2's INTER_LINEAR), uint8 out.

    The label is nearest-neighbour with half-pixel centres: each label pixel is the source pixel under
    the point the image was sampled at (within half a source pixel of it). mmseg's cv2 INTER_NEAREST
    takes source pixel floor(i * s), s = source / target size: the pixel under the target pixel's corner
    rather than its centre, half a target pixel early, which leaves the label up to (s + 1) / 2 source
    pixels off the image (1.5 pixels when halving). This is the aligned version of the same resize."""
    if ratio_range is None:
        return _rescale_pair(image, label, scale)
    low, high = ratio_range
    ratio = tf.cast(tf.random.stateless_uniform([], seed, dtype=tf.float32), tf.float64) * (high - low) + low
    # int() truncates, as mmseg's random_sample_ratio.
    target = tuple(tf.cast(tf.floor(float(s) * ratio), tf.int32) for s in scale)
    return _rescale_pair(image, label, target)


def crop_candidates(seed, height, width, crop_size=(512, 512)):
    """The CROP_RETRIES + 1 boxes mmseg's RandomCrop may draw, in order: int32 [11, 2] (y, x) offsets,
    each uniform in [0, max(size - crop, 0)] inclusive."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    offsets = []
    for axis, (size, crop) in enumerate(zip((height, width), crop_size)):
        margin = tf.maximum(tf.cast(size, tf.int32) - crop, 0)
        offsets.append(tf.random.stateless_uniform([CROP_RETRIES + 1], seeds[axis], minval=0,
                                                   maxval=margin + 1, dtype=tf.int32))
    return tf.stack(offsets, axis=1)


def _crop_ok(label, offset, crop_size, cat_max_ratio, ignore_index):
    """mmseg's acceptance test: more than one class and none covering cat_max_ratio of the counted
    pixels, ignore_index not counted."""
    crop = label[offset[0]:offset[0] + crop_size[0], offset[1]:offset[1] + crop_size[1]]
    counts = tf.math.bincount(tf.reshape(tf.cast(crop, tf.int32), [-1]), minlength=256, maxlength=256,
                              dtype=tf.int64)
    if 0 <= ignore_index < 256:
        counts = tf.tensor_scatter_nd_update(counts, [[ignore_index]], tf.zeros([1], tf.int64))
    classes = tf.math.count_nonzero(counts)
    largest = tf.math.divide_no_nan(tf.cast(tf.reduce_max(counts), tf.float64),
                                    tf.cast(tf.reduce_sum(counts), tf.float64))
    return (classes > 1) & (largest < cat_max_ratio)


def crop_offset(label, seed, crop_size=(512, 512), cat_max_ratio=0.75, ignore_index=255):
    """The (y, x) offset mmseg's RandomCrop keeps: the first of `crop_candidates` whose label passes the
    class test, checking at most ten; after ten failures the eleventh box, unchecked, as mmseg's loop
    re-draws after each failure and keeps the last draw."""
    candidates = crop_candidates(seed, tf.shape(label)[0], tf.shape(label)[1], crop_size)
    if cat_max_ratio >= 1.0:
        return candidates[0]

    def failed(i):
        return (i < CROP_RETRIES) & tf.logical_not(
            _crop_ok(label, candidates[i], crop_size, cat_max_ratio, ignore_index))

    # A loop rather than all ten tests at once: most crops pass the first test.
    index = tf.while_loop(failed, lambda i: (i + 1,), (tf.constant(0),))[0]
    return candidates[index]


@tf.autograph.experimental.do_not_convert
def random_crop(image, label, seed, crop_size=(512, 512), cat_max_ratio=0.75, ignore_index=255):
    """mmseg's RandomCrop of an image and its label together (`crop_offset`); a side shorter than the crop
    stays as it is, so the result is at most crop_size."""
    offset = crop_offset(label, seed, crop_size, cat_max_ratio, ignore_index)
    y, x = offset[0], offset[1]
    return (image[y:y + crop_size[0], x:x + crop_size[1]], label[y:y + crop_size[0], x:x + crop_size[1]])


def photometric_params(seed, brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                       hue_delta=18):
    """The random decisions of one PhotoMetricDistortion, as scalar tensors (see `apply_photometric`)."""
    seeds = tf.random.experimental.stateless_split(seed, 6)

    def uniform(s, low, high):
        return tf.random.stateless_uniform([], s, minval=low, maxval=high, dtype=tf.float32)

    coins = tf.random.stateless_uniform([5], seeds[0]) < 0.5
    return {
        "brightness": coins[0], "beta": uniform(seeds[1], -brightness_delta, brightness_delta),
        "contrast_first": coins[1],  # mmseg's mode == 1
        "contrast": coins[2], "contrast_alpha": uniform(seeds[2], *contrast_range),
        "saturation": coins[3], "saturation_alpha": uniform(seeds[3], *saturation_range),
        # numpy's randint(-delta, delta), whose upper end is exclusive.
        "hue": coins[4],
        "hue_shift": tf.random.stateless_uniform([], seeds[4], minval=-hue_delta, maxval=hue_delta,
                                                 dtype=tf.int32),
    }


def _convert(x, alpha=1.0, beta=0.0):
    # mmseg's convert: float32 multiply-add, clip, then astype(uint8), which truncates. The image stays
    # float32 between steps, holding those integers.
    return tf.floor(tf.clip_by_value(x * alpha + beta, 0.0, 255.0))


def _to_hsv(rgb):
    # cv2's uint8 HSV: H in [0, 180) (half degrees), S and V in [0, 255], all rounded integers.
    hsv = tf.image.rgb_to_hsv(rgb / 255.0)
    h = tf.math.floormod(tf.round(hsv[..., 0] * 180.0), 180.0)
    return h, tf.round(hsv[..., 1] * 255.0), tf.round(hsv[..., 2] * 255.0)


def _from_hsv(h, s, v):
    rgb = tf.image.hsv_to_rgb(tf.stack([h / 180.0, s / 255.0, v / 255.0], axis=-1))
    return tf.clip_by_value(tf.round(rgb * 255.0), 0.0, 255.0)


def apply_photometric(image, params):
    """PhotoMetricDistortion with the decisions given (`photometric_params`): uint8 RGB in and out."""
    x = tf.cast(image, tf.float32)

    def maybe(flag, step, x):
        return tf.cond(flag, lambda: step(x), lambda: x)

    def contrast(x):
        return _convert(x, alpha=params["contrast_alpha"])

    def saturation(x):
        h, s, v = _to_hsv(x)
        return _from_hsv(h, _convert(s, alpha=params["saturation_alpha"]), v)

    def hue(x):
        h, s, v = _to_hsv(x)
        return _from_hsv(tf.math.floormod(h + tf.cast(params["hue_shift"], tf.float32), 180.0), s, v)

    x = maybe(params["brightness"], lambda x: _convert(x, beta=params["beta"]), x)
    x = maybe(params["contrast_first"] & params["contrast"], contrast, x)
    # Saturation and hue each go to HSV and back, as mmseg's do.
    x = maybe(params["saturation"], saturation, x)
    x = maybe(params["hue"], hue, x)
    x = maybe(tf.logical_not(params["contrast_first"]) & params["contrast"], contrast, x)
    out = tf.cast(x, tf.uint8)
    out.set_shape(image.shape)
    return out


@tf.autograph.experimental.do_not_convert
def photometric_distortion(image, seed, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
    """mmseg's PhotoMetricDistortion of a uint8 RGB image: brightness (add uniform(-delta, delta)), then
    contrast (multiply) either first or last around saturation (scale S) and hue (shift H by an integer in
    [-delta, delta), numpy's randint, modulo 180), each step with probability 0.5, each clipping and
    truncating to uint8. Saturation and hue each round-trip through cv2's uint8 HSV (H in [0, 180)); done
    with tf.image's float HSV quantised as cv2 holds it, it matches cv2 up to +-1 rounding of the HSV
    round trip (cv2 rounds through fixed-point tables; a step of H moves a channel by up to diff / 30,
    diff = max - min, in about 1% of pixels). RGB here against mmseg's BGR changes nothing."""
    params = photometric_params(seed, brightness_delta, contrast_range, saturation_range, hue_delta)
    return apply_photometric(image, params)


@tf.autograph.experimental.do_not_convert
def train_transform(image, label, seed, *, scale=(2048, 512), ratio_range=(0.5, 2.0), crop_size=(512, 512),
                    cat_max_ratio=0.75, hflip=0.5, photometric=True, ignore_index=255):
    """One training example: uint8 HxWx3 image and uint8 HxW label in; dict of image uint8 (crop_h,
    crop_w, 3) padded with 0 at the bottom and right, label int32 (crop_h, crop_w) padded with
    ignore_index, and valid int32 [2], the (h, w) of the unpadded region."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image, label = random_rescale(image, label, seeds[0], scale, ratio_range)
    image, label = random_crop(image, label, seeds[1], crop_size, cat_max_ratio, ignore_index)
    if hflip > 0:
        flip = tf.random.stateless_uniform([], seeds[2]) < hflip
        image, label = tf.cond(flip, lambda: (image[:, ::-1], label[:, ::-1]), lambda: (image, label))
    if photometric:
        image = photometric_distortion(image, seeds[3])
    valid = tf.shape(label)[:2]
    pad = [[0, crop_size[0] - valid[0]], [0, crop_size[1] - valid[1]]]
    image = tf.pad(image, pad + [[0, 0]], constant_values=0)
    label = tf.pad(tf.cast(label, tf.int32), pad, constant_values=ignore_index)
    return {"image": tf.ensure_shape(image, [crop_size[0], crop_size[1], 3]),
            "label": tf.ensure_shape(label, list(crop_size)), "valid": tf.ensure_shape(valid, [2])}


@tf.autograph.experimental.do_not_convert
def eval_resize(image, scale=(2048, 512)):
    """The test pipeline's resize: keep-ratio bilinear to `scale` (`rescale_size`), uint8 out."""
    size = tf.stack(rescale_size(tf.shape(image)[0], tf.shape(image)[1], scale))
    out = _resize_image(image, size)
    out.set_shape([None, None, 3])
    return out
