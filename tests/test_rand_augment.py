"""The TensorFlow RandAugment against timm's PIL implementation."""

import math
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from timm.data import auto_augment as timm_aa

from swin_jax.data import rand_augment as ra

FILL = (124, 116, 104)
RNG = np.random.default_rng(0)
NOISE_IMAGES = [RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(3)]
NOISE_IMAGES.append(RNG.integers(60, 121, (37, 53, 3), dtype=np.uint8))  # low contrast, for the stretching ops


def _smooth_image(height=37, width=53):
    y, x = np.mgrid[0:height, 0:width]
    channels = [128 + 100 * np.sin(x / 7.0) * np.cos(y / 9.0), 40 + 3 * x + y, 200 - 2 * y - x]
    return np.stack(channels, -1).clip(0, 255).astype(np.uint8)


def _few_level_images(count=12):
    """Images with a handful of grey levels, where the histogram ops hit their special cases."""
    rng = np.random.default_rng(1)
    images = [np.full((5, 7, 3), 77, np.uint8)]
    for _ in range(count):
        levels = rng.integers(0, 256, rng.integers(1, 5))
        weights = rng.dirichlet(np.full(len(levels), 0.3))
        height, width = rng.integers(3, 30, 2)
        images.append(levels[rng.choice(len(levels), (height, width, 3), p=weights)].astype(np.uint8))
    return images


def _max_diff(a, b):
    return int(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).max())


def _pil(fn, image, *args, **kwargs):
    return np.asarray(fn(Image.fromarray(image), *args, **kwargs))


PIXEL_OPS = [
    ("auto_contrast", timm_aa.auto_contrast, [()]),
    ("equalize", timm_aa.equalize, [()]),
    ("invert", timm_aa.invert, [()]),
    ("posterize", timm_aa.posterize, [(bits,) for bits in range(1, 9)]),
    ("solarize", timm_aa.solarize, [(threshold,) for threshold in (0, 1, 26, 128, 230, 256)]),
    ("solarize_add", timm_aa.solarize_add, [(addition,) for addition in (0, 33, 99, 110)]),
    *[(name, getattr(timm_aa, name), [(f,) for f in (0.0, 0.1, 0.19, 0.55, 1.0, 1.37, 1.81, 1.9, 2.5)])
      for name in ("color", "contrast", "brightness", "sharpness")],
]


@pytest.mark.parametrize("name, timm_op, argument_sets", PIXEL_OPS, ids=[op[0] for op in PIXEL_OPS])
def test_pixel_op_matches_pil(name, timm_op, argument_sets):
    ours = getattr(ra, name)
    for image in NOISE_IMAGES:
        for args in argument_sets:
            assert _max_diff(ours(tf.constant(image), *args), _pil(timm_op, image, *args)) <= 1, (name, args)


@pytest.mark.parametrize("name", ["auto_contrast", "equalize", "contrast", "sharpness"])
def test_pixel_op_matches_pil_on_few_grey_levels(name):
    args = () if name in ("auto_contrast", "equalize") else (1.6,)
    for image in _few_level_images():
        assert _max_diff(getattr(ra, name)(tf.constant(image), *args), _pil(getattr(timm_aa, name), image, *args)) <= 1


def test_posterize_to_zero_bits_is_black():
    # Recent Pillow rejects bits=0, which timm's increasing posterize reaches at magnitude 10.
    assert int(tf.reduce_max(ra.posterize(tf.constant(NOISE_IMAGES[0]), 0))) == 0


GEOMETRIC_OPS = [
    ("rotate", timm_aa.rotate, (-30.0, -13.5, 4.2, 27.0)),
    ("shear_x", timm_aa.shear_x, (-0.3, -0.12, 0.27)),
    ("shear_y", timm_aa.shear_y, (-0.27, 0.05, 0.3)),
    ("translate_x", timm_aa.translate_x_abs, (-23.85, -7.0, 1.4, 21.465)),
    ("translate_y", timm_aa.translate_y_abs, (-16.65, 2.2, 14.985)),
]


def _filled(image):
    return (np.asarray(image) == FILL).all(-1)


@pytest.mark.parametrize("name, timm_op, arguments", GEOMETRIC_OPS, ids=[op[0] for op in GEOMETRIC_OPS])
def test_geometric_op_matches_pil_bilinear(name, timm_op, arguments):
    for argument in arguments:
        ours = getattr(ra, name)(tf.constant(NOISE_IMAGES[0]), argument, FILL).numpy()
        theirs = _pil(timm_op, NOISE_IMAGES[0], argument, fillcolor=FILL, resample=Image.BILINEAR)
        assert _max_diff(ours, theirs) <= 1, (name, argument)
        assert _filled(ours).any() and (_filled(ours) == _filled(theirs)).all(), (name, argument)


@pytest.mark.parametrize("name, timm_op, arguments", GEOMETRIC_OPS, ids=[op[0] for op in GEOMETRIC_OPS])
def test_geometric_op_close_to_timm_bicubic(name, timm_op, arguments):
    # The Swin recipe resamples bicubically; on a smooth image bilinear stays well within a grey level.
    image = _smooth_image()
    for argument in arguments:
        ours = getattr(ra, name)(tf.constant(image), argument, FILL).numpy()
        theirs = _pil(timm_op, image, argument, fillcolor=FILL, resample=Image.BICUBIC)
        assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 1.5, (name, argument)
        assert (_filled(ours) == _filled(theirs)).all(), (name, argument)


def test_rotate_turns_counter_clockwise():
    image = np.zeros((31, 31, 3), np.uint8)
    image[15, 25:] = 255  # a bar pointing right from the centre
    rotated = ra.rotate(tf.constant(image), 90.0, (0, 0, 0)).numpy()
    assert rotated[:6, 15].min() > 100 and rotated[15, 25:].max() == 0  # now it points up


@pytest.mark.parametrize("text, expected", [
    ("rand-m9-mstd0.5-inc1", ra.RandAugmentSpec()),
    ("rand-m7-n3", ra.RandAugmentSpec(num_layers=3, magnitude=7.0, magnitude_std=0.0, increasing=False)),
    ("rand-m9-mstd0.5-inc1-p0.7", ra.RandAugmentSpec(prob=0.7)),
    ("rand-m10-mmax15", ra.RandAugmentSpec(magnitude=10.0, magnitude_std=0.0, magnitude_max=15.0, increasing=False)),
    ("rand-n1-mstd101-inc0", ra.RandAugmentSpec(num_layers=1, magnitude=10.0, magnitude_std=math.inf,
                                                 increasing=False)),
    ("rand", ra.RandAugmentSpec(magnitude=10.0, magnitude_std=0.0, increasing=False)),
])
def test_parse_valid(text, expected):
    assert ra.parse_rand_augment(text) == expected


@pytest.mark.parametrize("text, bad_part", [
    ("augmix-m9", "augmix"), ("rand-m9-w0", "w0"), ("rand-m9-tweights", "tweights"), ("rand-m9-q3", "q3"),
    ("rand-mfoo", "mfoo"), ("rand-m9.5", "m9.5"), ("rand-n2x", "n2x"), ("rand-p1.5", "p1.5"), ("rand-inc2", "inc2"),
    ("rand-m9--n2", "''"),
])
def test_parse_invalid(text, bad_part):
    with pytest.raises(ValueError) as error:
        ra.parse_rand_augment(text)
    assert repr(text) in str(error.value) and bad_part in str(error.value)


SPEC = ra.parse_rand_augment("rand-m9-mstd0.5-inc1")
IMAGE = tf.constant(NOISE_IMAGES[0])


def test_output_is_uint8_of_input_shape_and_repeatable():
    out = ra.rand_augment(IMAGE, tf.constant([3, 4]), SPEC)
    assert out.dtype == tf.uint8 and out.shape == IMAGE.shape
    again = ra.rand_augment(IMAGE, tf.constant([3, 4], tf.int64), SPEC)
    assert np.array_equal(out.numpy(), again.numpy())


def test_seeds_give_different_outputs():
    spec = ra.RandAugmentSpec(prob=1.0)
    outputs = {ra.rand_augment(IMAGE, tf.constant([seed, 7]), spec).numpy().tobytes() for seed in range(8)}
    assert len(outputs) >= 7


def test_zero_probability_leaves_image_unchanged():
    spec = ra.RandAugmentSpec(num_layers=3, prob=0.0)
    for seed in range(3):
        assert np.array_equal(ra.rand_augment(IMAGE, tf.constant([seed, 0]), spec).numpy(), NOISE_IMAGES[0])


def test_zero_magnitude_changes_only_through_magnitude_free_ops():
    # At m=0 the increasing ops are identities, except posterize, which keeps 4 bits.
    image = NOISE_IMAGES[3]
    candidates = [image] + [_pil(fn, image) for fn in (timm_aa.auto_contrast, timm_aa.equalize, timm_aa.invert)]
    candidates.append(_pil(timm_aa.posterize, image, 4))
    spec = ra.RandAugmentSpec(num_layers=1, magnitude=0.0, magnitude_std=0.0, prob=1.0)
    unchanged = 0
    for seed in range(20):
        out = ra.rand_augment(tf.constant(image), tf.constant([seed, 1]), spec).numpy()
        assert any(np.array_equal(out, candidate) for candidate in candidates), seed
        unchanged += np.array_equal(out, image)
    assert 0 < unchanged < 20


@pytest.mark.parametrize("increasing", [True, False])
def test_each_layer_is_one_of_timms_ops_at_its_arguments(increasing, monkeypatch):
    """With a fixed magnitude every output must be one of timm's ops applied with timm's argument, either sign."""
    image = _smooth_image()
    hparams = dict(translate_pct=0.45, img_mean=FILL)
    names = timm_aa._RAND_INCREASING_TRANSFORMS if increasing else timm_aa._RAND_TRANSFORMS
    candidates = {}
    for name in names:
        for negate in (False, True):
            monkeypatch.setattr(timm_aa, "random", types.SimpleNamespace(random=lambda: float(negate)))
            level_fn = timm_aa.LEVEL_TO_ARG[name]
            args = level_fn(9, hparams) if level_fn else ()
            candidates[name, negate] = _pil(timm_aa.NAME_TO_OP[name], image, *args, fillcolor=FILL,
                                            resample=Image.BILINEAR)
    spec = ra.RandAugmentSpec(num_layers=1, magnitude=9.0, magnitude_std=0.0, prob=1.0, increasing=increasing)
    seen = set()
    for seed in range(40):
        out = ra.rand_augment(tf.constant(image), tf.constant([seed, 2]), spec).numpy()
        matches = [name for (name, _), candidate in candidates.items() if _max_diff(out, candidate) <= 1]
        assert matches, seed
        seen.update(matches)
    assert len(seen) >= 12  # 40 uniform draws from 15 ops


def test_magnitude_sampling_follows_timm():
    samples = np.array([float(ra._sample_magnitude(SPEC, tf.constant([seed, 5]))) for seed in range(300)])
    assert samples.max() <= 10.0 and abs(samples.mean() - 9.0) < 0.1 and 0.4 < samples.std() < 0.55
    uniform = ra.RandAugmentSpec(magnitude=9.0, magnitude_std=math.inf)
    samples = np.array([float(ra._sample_magnitude(uniform, tf.constant([seed, 5]))) for seed in range(300)])
    assert samples.min() >= 0.0 and samples.max() <= 9.0 and abs(samples.mean() - 4.5) < 0.6


def test_runs_in_dataset_map_with_dynamic_shapes():
    sizes = [(20, 30), (33, 17), (24, 24)]

    def images():
        for i, (height, width) in enumerate(sizes):
            yield np.full((height, width, 3), 40 * i, np.uint8), np.array([i, 9], np.int64)

    signature = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64))
    dataset = tf.data.Dataset.from_generator(images, output_signature=signature)
    dataset = dataset.map(lambda image, seed: ra.rand_augment(image, seed, SPEC))
    first, second = [[out.numpy() for out in dataset] for _ in range(2)]
    assert [out.shape[:2] for out in first] == sizes
    assert all(out.dtype == np.uint8 for out in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_rejects_non_uint8_images():
    with pytest.raises(TypeError):
        ra.rand_augment(tf.zeros([4, 4, 3]), tf.constant([0, 0]), SPEC)
