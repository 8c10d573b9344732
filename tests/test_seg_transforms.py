"""The segmentation transforms (`swin_jax.data.segmentation`) against mmseg 0.11's ADE20K pipeline: the
geometry of image and label together, RandomCrop's cat_max_ratio loop, PhotoMetricDistortion's formulas
and mmcv's keep-ratio size rule, each against a NumPy/Python re-implementation."""

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from swin_jax.data import segmentation as seg


def _seed(i):
    return tf.constant([11, i], tf.int64)


def _mmcv_rescale_size(h, w, scale):
    """mmcv.rescale_size with keep ratio, (h, w) in and out."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


# --- geometry -------------------------------------------------------------------------------------------

# A 100 x 120 image whose pixels hold twice their coordinates (R = 2y, G = 2x: a quarter-pixel reading of
# where bilinear sampling looked) and B = 255 (0 only in the padding). The label holds the coordinates
# modulo 16 and 15, which nearest resampling keeps exact and which, given the image's reading, name the
# label's source pixel.
GEO_H, GEO_W = 100, 120
GEO_CROP = (80, 96)


def _geometry_example():
    y, x = np.mgrid[0:GEO_H, 0:GEO_W]
    image = np.stack([2 * y, 2 * x, np.full_like(y, 255)], -1).astype(np.uint8)
    label = ((y % 16) * 15 + x % 15).astype(np.uint8)  # at most 239: never the ignore index
    return image, label


def _nearest_congruent(estimate, residue, modulus):
    """The integer = residue (mod modulus) closest to estimate."""
    return np.round(estimate + ((residue - estimate + modulus / 2) % modulus) - modulus / 2)


def test_train_transform_keeps_label_under_image():
    image, label = _geometry_example()
    # scale (240, 100) makes the resize factor the ratio itself, 0.5..2 for this image.
    transform = tf.function(lambda s: seg.train_transform(
        tf.constant(image), tf.constant(label), s, scale=(240, 100), crop_size=GEO_CROP, photometric=False))
    flips, padded, cropped = 0, 0, 0
    for i in range(40):
        out = {k: v.numpy() for k, v in transform(_seed(i)).items()}
        assert out["image"].shape == GEO_CROP + (3,) and out["image"].dtype == np.uint8
        assert out["label"].shape == GEO_CROP and out["label"].dtype == np.int32
        vh, vw = out["valid"]
        assert 0 < vh <= GEO_CROP[0] and 0 < vw <= GEO_CROP[1]
        inside = np.zeros(GEO_CROP, bool)
        inside[:vh, :vw] = True
        # Padding: 0 in the image, 255 in the label, exactly outside `valid`.
        assert np.all(out["image"][~inside] == 0) and np.all(out["label"][~inside] == 255)
        assert np.all(out["image"][inside][:, 2] == 255) and np.all(out["label"][inside] < 255)
        padded += vh < GEO_CROP[0] or vw < GEO_CROP[1]
        cropped += vh == GEO_CROP[0] and vw == GEO_CROP[1]

        img, lab = out["image"][:vh, :vw].astype(np.float64), out["label"][:vh, :vw]
        y_img, x_img = img[..., 0] / 2, img[..., 1] / 2
        y_lab = _nearest_congruent(y_img, lab // 15, 16)
        x_lab = _nearest_congruent(x_img, lab % 15, 15)
        # Half a pixel of nearest sampling and a quarter of reading; cv2's INTER_NEAREST would be off by
        # up to 1.5 source pixels when halving.
        assert np.abs(y_lab - y_img).max() <= 0.75, i
        assert np.abs(x_lab - x_img).max() <= 0.75, i
        if vw > 4:
            step = np.sign(np.diff(x_img[vh // 2]).sum())
            assert step != 0
            # A flip reverses image and label together.
            assert np.sign(np.diff(x_lab[vh // 2]).sum()) == step
            flips += step < 0
    assert 5 <= flips <= 35 and padded >= 3 and cropped >= 3


def test_train_transform_in_a_dataset_is_deterministic():
    image, label = _geometry_example()
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, image.shape).astype(np.uint8)
    ds = tf.data.Dataset.from_tensor_slices(tf.stack([_seed(i) for i in range(3)])).map(
        lambda s: seg.train_transform(tf.constant(image), tf.constant(label), s, scale=(240, 100),
                                      crop_size=GEO_CROP))
    first, second = list(ds.as_numpy_iterator()), list(ds.as_numpy_iterator())
    for a, b in zip(first, second):
        for key in ("image", "label", "valid"):
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["image"], first[1]["image"])


# --- RandomCrop's cat_max_ratio ----------------------------------------------------------------------------

CROP = (24, 24)


def _crop_label():
    """Mostly class 0, a 16 x 16 patch of class 1 and a band of ignored pixels: a random 24 x 24 crop
    passes (two classes, the larger under 75%) about a quarter of the time."""
    label = np.zeros((64, 72), np.uint8)
    label[30:46, 40:56] = 1
    label[:6] = 255
    return label


def _mmseg_crop(label, candidates, crop_size, cat_max_ratio, ignore_index=255):
    """mmseg's RandomCrop.__call__ loop, with its draws taken in order from `candidates`."""
    draws = iter(candidates)
    bbox = next(draws)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            crop = label[bbox[0]:bbox[0] + crop_size[0], bbox[1]:bbox[1] + crop_size[1]]
            labels, cnt = np.unique(crop, return_counts=True)
            cnt = cnt[labels != ignore_index]
            if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
            bbox = next(draws)
    return tuple(bbox)


def test_crop_matches_mmseg_loop():
    label = _crop_label()
    image = np.random.RandomState(0).randint(0, 256, label.shape + (3,)).astype(np.uint8)
    candidates = tf.function(lambda s: seg.crop_candidates(s, label.shape[0], label.shape[1], CROP))
    crop = tf.function(lambda s: seg.random_crop(tf.constant(image), tf.constant(label), s, CROP, 0.75))
    picked = []
    for i in range(150):
        boxes = candidates(_seed(i)).numpy()
        assert boxes.shape == (11, 2)
        y, x = _mmseg_crop(label, boxes, CROP, 0.75)
        picked.append(next(j for j, b in enumerate(boxes) if tuple(b) == (y, x)))
        out_image, out_label = (t.numpy() for t in crop(_seed(i)))
        np.testing.assert_array_equal(out_label, label[y:y + CROP[0], x:x + CROP[1]])
        np.testing.assert_array_equal(out_image, image[y:y + CROP[0], x:x + CROP[1]])
    picked = np.array(picked)
    # First draws accepted, later ones, and all ten rejected (the eleventh kept) all occur.
    assert (picked == 0).sum() >= 10 and ((picked > 0) & (picked < 10)).sum() >= 10
    assert (picked == 10).sum() >= 3


def test_crop_ratio_property():
    """With cat_max_ratio the kept crops pass whenever a passing one was drawn; without, they don't."""
    label = _crop_label()

    def passes(y, x):
        crop = label[y:y + CROP[0], x:x + CROP[1]]
        counts = np.bincount(crop[crop != 255].ravel(), minlength=2)
        return (counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75

    with_ratio = tf.function(lambda s: seg.crop_offset(tf.constant(label), s, CROP, 0.75))
    without = tf.function(lambda s: seg.crop_offset(tf.constant(label), s, CROP, 1.0))
    kept = {"with": [], "without": []}
    for i in range(150):
        boxes = seg.crop_candidates(_seed(i), label.shape[0], label.shape[1], CROP).numpy()
        offset = with_ratio(_seed(i)).numpy()
        if any(passes(*b) for b in boxes[:10]):
            assert passes(*offset)
        kept["with"].append(passes(*offset))
        offset = without(_seed(i)).numpy()
        np.testing.assert_array_equal(offset, boxes[0])
        kept["without"].append(passes(*offset))
    assert np.mean(kept["with"]) > 0.8 and np.mean(kept["without"]) < 0.5


def test_crop_without_a_passing_box_keeps_the_last_draw():
    # One class beside ignored pixels: no crop can pass (it would, were the ignored pixels counted).
    label = np.full((50, 60), 3, np.uint8)
    label[:, :30] = 255
    for i in range(8):
        boxes = seg.crop_candidates(_seed(i), 50, 60, CROP).numpy()
        offset = seg.crop_offset(tf.constant(label), _seed(i), CROP, 0.75).numpy()
        np.testing.assert_array_equal(offset, boxes[10])


def test_crop_offsets_are_inclusive_and_small_images_stay():
    boxes = np.concatenate([seg.crop_candidates(_seed(i), 30, 27, CROP).numpy() for i in range(40)])
    assert set(boxes[:, 0]) == set(range(7)) and set(boxes[:, 1]) == set(range(4))
    image = np.zeros((10, 40, 3), np.uint8)
    label = np.arange(400).reshape(10, 40).astype(np.uint8) % 7
    out_image, out_label = seg.random_crop(tf.constant(image), tf.constant(label), _seed(0), CROP, 0.75)
    assert out_image.shape == (10, 24, 3) and out_label.shape == (10, 24)


# --- PhotoMetricDistortion ---------------------------------------------------------------------------------

def _varied_image(h=40, w=40, seed=0):
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    smooth = np.stack([np.sin(2 * np.pi * (rng.rand() * 3 * x + rng.rand() * 3 * y) + rng.rand() * 6)
                       for _ in range(3)], -1)
    image = ((smooth + 1) * 127.5).astype(np.uint8)
    image[: h // 4] = rng.randint(0, 256, (h // 4, w, 3))  # noise
    image[h // 4: h // 4 + 3] = rng.randint(0, 256, (3, w, 1))  # greys
    image[-2:] = rng.choice([0, 255], (2, w, 3))  # black, white and saturated primaries
    return image


def _convert(img, alpha=1.0, beta=0.0):
    """mmseg's PhotoMetricDistortion.convert."""
    out = img.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


_rgb_to_hsv = np.vectorize(colorsys.rgb_to_hsv)
_hsv_to_rgb = np.vectorize(colorsys.hsv_to_rgb)


def _to_hsv(img):
    """cv2's uint8 HSV in float64: H = round(h * 180) % 180, S and V rounded to [0, 255]; and where H or S
    is an exact rounding tie (which way it goes is arbitrary, and cv2's fixed point has its own)."""
    h, s, v = _rgb_to_hsv(*(img[..., c] / 255.0 for c in range(3)))
    tie = (np.abs((h * 180) % 1 - 0.5) < 1e-4) | (np.abs((s * 255) % 1 - 0.5) < 1e-4)
    return np.round(h * 180) % 180, np.round(s * 255), np.round(v * 255), tie


def _from_hsv(h, s, v):
    rgb = np.stack(_hsv_to_rgb(h / 180.0, s / 255.0, v / 255.0), -1)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def _reference_photometric(img, p):
    """mmseg's PhotoMetricDistortion.__call__ with its random draws given; also the tie mask."""
    tie = np.zeros(img.shape[:2], bool)

    def saturation(img):
        h, s, v, t = _to_hsv(img)
        tie[:] |= t
        return _from_hsv(h, _convert(s, alpha=p["saturation_alpha"]).astype(np.float64), v)

    def hue(img):
        h, s, v, t = _to_hsv(img)
        tie[:] |= t
        return _from_hsv((h.astype(int) + p["hue_shift"]) % 180, s, v)

    if p["brightness"]:
        img = _convert(img, beta=p["beta"])
    if p["contrast_first"] and p["contrast"]:  # mode == 1
        img = _convert(img, alpha=p["contrast_alpha"])
    if p["saturation"]:
        img = saturation(img)
    if p["hue"]:
        img = hue(img)
    if not p["contrast_first"] and p["contrast"]:  # mode == 0
        img = _convert(img, alpha=p["contrast_alpha"])
    return img, tie


def test_photometric_matches_mmseg_formulas():
    image = _varied_image()
    params = tf.function(lambda s: seg.photometric_params(s))
    distort = tf.function(lambda s: seg.photometric_distortion(tf.constant(image), s))
    seen = {k: set() for k in ("brightness", "contrast_first", "contrast", "saturation", "hue")}
    ties = []
    for i in range(48):
        p = {k: v.numpy() for k, v in params(_seed(i)).items()}
        for k, values in seen.items():
            values.add(bool(p[k]))
        ours = distort(_seed(i)).numpy()
        ref, tie = _reference_photometric(image, p)
        diff = np.abs(ours.astype(int) - ref.astype(int)).max(-1)
        if not (p["saturation"] or p["hue"]):
            np.testing.assert_array_equal(ours, ref)  # brightness and contrast alone are exact
        else:
            assert diff[~tie].max() <= (2 if p["hue"] else 1), i
            ties.append(tie.mean())
    assert all(len(v) == 2 for v in seen.values())
    assert np.mean(ties) < 0.03


def test_photometric_draws():
    draws = [{k: v.numpy() for k, v in seg.photometric_params(_seed(i)).items()} for i in range(400)]
    shifts = {int(d["hue_shift"]) for d in draws}
    # numpy's randint(-18, 18): -18..17.
    assert shifts == set(range(-18, 18))
    beta = np.array([d["beta"] for d in draws])
    assert beta.min() >= -32 and beta.max() < 32 and beta.min() < -28 and beta.max() > 28
    for key in ("contrast_alpha", "saturation_alpha"):
        alpha = np.array([d[key] for d in draws])
        assert alpha.min() >= 0.5 and alpha.max() < 1.5 and alpha.max() - alpha.min() > 0.9
    for key in ("brightness", "contrast_first", "contrast", "saturation", "hue"):
        assert 0.4 < np.mean([d[key] for d in draws]) < 0.6, key


def _params(**kwargs):
    base = {"brightness": False, "beta": 0.0, "contrast_first": False, "contrast": False,
            "contrast_alpha": 1.0, "saturation": False, "saturation_alpha": 1.0, "hue": False, "hue_shift": 0}
    base.update(kwargs)
    return {k: tf.constant(v) for k, v in base.items()}


def test_photometric_parts():
    image = _varied_image()
    x = image.astype(int)

    def apply(**kw):
        return seg.apply_photometric(tf.constant(image), _params(**kw)).numpy().astype(int)

    # Nothing drawn: unchanged.
    np.testing.assert_array_equal(apply(), x)
    # Brightness shifts every channel by the truncated delta, clipping at the ends.
    np.testing.assert_array_equal(apply(brightness=True, beta=10.7), np.minimum(x + 10, 255))
    np.testing.assert_array_equal(apply(brightness=True, beta=-10.7), np.maximum(np.floor(x - 10.7), 0))
    # Contrast scales (in float32, as mmseg's float32 image times a Python float).
    scaled = np.floor(x.astype(np.float32) * np.float32(1.3))
    np.testing.assert_array_equal(apply(contrast=True, contrast_alpha=1.3), np.minimum(scaled, 255))
    # Saturation 0 leaves the value (the largest channel) as grey.
    grey = apply(saturation=True, saturation_alpha=0.0)
    np.testing.assert_array_equal(grey, np.repeat(x.max(-1, keepdims=True), 3, -1))
    # Hue rotates the colour, keeping value and saturation (the largest and smallest channel up to 1).
    for shift in (-18, 9, 60):
        out = apply(hue=True, hue_shift=shift)
        assert np.abs(out.max(-1) - x.max(-1)).max() <= 1 and np.abs(out.min(-1) - x.min(-1)).max() <= 1
        h_in, h_out = (_to_hsv(a.astype(np.uint8))[0] for a in (x, out))
        colourful = (x.max(-1) - x.min(-1)) > 60
        turned = (h_out - h_in - shift + 90) % 180 - 90
        assert np.abs(turned[colourful]).max() <= 1
    # Saturation truncates the scaled S like mmseg's convert: these pixels, alpha 1.1 and 0.7, as cv2 gives.
    pixels = tf.constant([[[255, 128, 128], [200, 40, 90], [30, 180, 60], [10, 20, 250]]], tf.uint8)
    for alpha, expected in ((1.1, [[255, 116, 116], [200, 24, 77], [15, 180, 48], [0, 8, 250]]),
                            (0.7, [[255, 167, 167], [200, 89, 122], [75, 180, 96], [82, 88, 250]])):
        out = seg.apply_photometric(pixels, _params(saturation=True, saturation_alpha=alpha)).numpy()
        np.testing.assert_array_equal(out[0], expected)
    # Contrast first or last around a saturation change gives different results.
    kw = {"contrast": True, "contrast_alpha": 1.4, "saturation": True, "saturation_alpha": 1.4}
    assert not np.array_equal(apply(contrast_first=True, **kw), apply(contrast_first=False, **kw))


# --- sizes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(512, 683), (683, 512), (300, 400), (1000, 500), (375, 500), (2000, 3000),
                                  (100, 4000), (511, 2049), (333, 777),
                                  (512, 681), (681, 512)])  # 681 * 0.5 = 340.5: rounded half up, not to even
def test_rescale_size_is_mmcv(size):
    h, w = size
    for scale in ((2048, 512), (512, 2048), (1024, 256)):
        expected = _mmcv_rescale_size(h, w, scale)
        assert seg.rescale_size(h, w, scale) == expected
        got = seg.rescale_size(tf.constant(h), tf.constant(w), scale)
        assert tuple(int(v) for v in got) == expected


def test_rescale_size_tensor_sweep():
    rng = np.random.RandomState(0)
    hs, ws = rng.randint(16, 3000, 500), rng.randint(16, 3000, 500)
    new_h, new_w = seg.rescale_size(tf.constant(hs, tf.int32), tf.constant(ws, tf.int32), (2048, 512))
    expected = np.array([_mmcv_rescale_size(h, w, (2048, 512)) for h, w in zip(hs, ws)])
    np.testing.assert_array_equal(np.stack([new_h.numpy(), new_w.numpy()], 1), expected)


def test_random_rescale_sizes():
    image, label = np.zeros((64, 85, 3), np.uint8), np.zeros((64, 85), np.uint8)
    scale = (160, 64)
    for ratio in (0.5, 0.7, 1.0, 1.37, 2.0):
        out_image, out_label = seg.random_rescale(tf.constant(image), tf.constant(label), _seed(0), scale,
                                                  (ratio, ratio))
        target = (int(scale[0] * ratio), int(scale[1] * ratio))
        assert out_image.shape[:2] == _mmcv_rescale_size(64, 85, target) == out_label.shape, ratio
        assert out_image.dtype == tf.uint8 and out_label.dtype == tf.uint8
    out_image, _ = seg.random_rescale(tf.constant(image), tf.constant(label), _seed(0), (2048, 512), None)
    assert out_image.shape[:2] == (512, 680)
    shorts = [seg.random_rescale(tf.constant(image), tf.constant(label), _seed(i), scale)[0].shape[0]
              for i in range(30)]
    assert min(shorts) >= 32 and max(shorts) <= 128 and max(shorts) - min(shorts) > 40


def test_eval_resize():
    photo = np.random.RandomState(0).randint(0, 256, (512, 683, 3)).astype(np.uint8)
    np.testing.assert_array_equal(seg.eval_resize(tf.constant(photo)).numpy(), photo)
    assert seg.eval_resize(tf.zeros([300, 400, 3], tf.uint8)).shape == (512, 683, 3)
    assert seg.eval_resize(tf.zeros([1200, 900, 3], tf.uint8)).shape == (683, 512, 3)
    # Bilinear without antialiasing (cv2's INTER_LINEAR): a third samples the middle of every three
    # columns exactly, where an antialiasing filter would blend them.
    stripes = np.tile(np.array([0, 200, 50], np.uint8), 30)[None, :, None].repeat(90, 0).repeat(3, 2)
    np.testing.assert_array_equal(seg.eval_resize(tf.constant(stripes), (30, 30)).numpy(), 200)
    # Halving a ramp 0, 2, 4, ... averages pixel pairs to 1, 5, 9, ...
    ramp = np.repeat(np.repeat(np.arange(0, 200, 2, dtype=np.uint8)[None, :, None], 100, 0), 3, 2)
    out = seg.eval_resize(tf.constant(ramp), (200, 50)).numpy().astype(int)
    assert out.shape == (50, 50, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(4 * np.arange(50)[None, :, None] + 1, out.shape))


def test_decode_label():
    label = (np.arange(30 * 20).reshape(30, 20) % 151).astype(np.uint8)
    png = tf.io.encode_png(tf.constant(label[..., None]))
    decode = tf.function(seg.decode_label)
    for encoded in (png, tf.constant(label), tf.constant(label[..., None])):
        out = decode(encoded)
        assert out.dtype == tf.uint8 and out.shape.rank == 2
        np.testing.assert_array_equal(out.numpy(), label)
