"""The digit-scene demo (swin_jax.data.scenes) and the ADE20K metadata (swin_jax.data.ade20k)."""

import time

import numpy as np
import pytest
from PIL import Image

from swin_jax.data import ade20k, scenes

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def train_scenes():
    return scenes.scene_arrays("train", 100)


def _digit_of_class(cls: int, which: int = 0) -> np.ndarray:
    images, labels = scenes.split_digits("train")
    return images[np.flatnonzero(labels == cls)[which]]


# ---------------------------------------------------------------------------------------------------
# Scene arrays


def test_deterministic_and_independent_of_count(train_scenes):
    images, labels = train_scenes
    again_images, again_labels = scenes.scene_arrays("train", 100)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    few_images, few_labels = scenes.scene_arrays("train", 7)
    np.testing.assert_array_equal(few_images, images[:7])
    np.testing.assert_array_equal(few_labels, labels[:7])
    other_seed, _ = scenes.scene_arrays("train", 7, seed=1)
    held_out, _ = scenes.scene_arrays("test", 7)
    for k in range(7):
        assert not np.array_equal(other_seed[k], images[k])
        assert not np.array_equal(held_out[k], images[k])
    assert not np.array_equal(images[0], images[1])
    # the split is part of the seed: the held-out scenes' backgrounds are not the training ones'
    shift = [np.abs(np.median(held_out[k].reshape(-1, 3), 0) - np.median(images[k].reshape(-1, 3), 0)).max()
             for k in range(7)]
    assert np.mean(shift) > 20


def test_shapes_dtypes_and_label_values(train_scenes):
    images, labels = train_scenes
    assert images.shape == (100, 96, 96, 3) and images.dtype == np.uint8
    assert labels.shape == (100, 96, 96) and labels.dtype == np.uint8
    assert labels.max() <= 10 and len(scenes.SCENE_CLASSES) == 11
    assert scenes.SCENE_CLASSES == ("background",) + tuple(str(d) for d in range(10))
    small_images, small_labels = scenes.scene_arrays("test", 3, size=64)
    assert small_images.shape == (3, 64, 64, 3) and small_labels.shape == (3, 64, 64)
    assert small_images.dtype == np.uint8 and small_labels.dtype == np.uint8
    empty_images, empty_labels = scenes.scene_arrays("test", 0)
    assert empty_images.shape == (0, 96, 96, 3) and empty_labels.shape == (0, 96, 96)


def test_every_scene_has_two_to_four_digits(train_scenes):
    _, labels = train_scenes
    present = [set(np.unique(label).tolist()) - {0} for label in labels]
    counts = np.array([len(p) for p in present])
    assert counts.min() >= 1 and counts.max() <= 4  # two digits of one class count once
    assert (counts >= 2).mean() >= 0.7
    assert all((label == 0).mean() > 0.5 for label in labels)  # background stays the majority
    seen = set().union(*present)
    assert seen == set(range(1, 11))


def test_every_scene_draws_two_to_four_digits(monkeypatch):
    """Counted where they are drawn (a digit may hide another, so the labels alone undercount)."""
    drawn, real = [], scenes.paste_digit

    def counting(*args, **kwargs):
        drawn[-1] += 1
        return real(*args, **kwargs)

    real_scene = scenes.make_scene

    def scene(*args, **kwargs):
        drawn.append(0)
        return real_scene(*args, **kwargs)

    monkeypatch.setattr(scenes, "paste_digit", counting)
    monkeypatch.setattr(scenes, "make_scene", scene)
    scenes.scene_arrays("train", 200, size=64)
    assert len(drawn) == 200 and set(drawn) == {2, 3, 4}


def test_background_is_textured_and_varies(train_scenes):
    images, labels = train_scenes
    means = []
    for image, label in zip(images[:20], labels[:20]):
        background = image[label == 0].astype(np.float64)
        assert background.std(axis=0).max() > 4.0  # not a flat colour
        # neighbouring pixels differ (per-pixel noise), not only a smooth ramp
        assert np.abs(np.diff(image.astype(np.int16), axis=1)).mean() > 1.5
        means.append(background.mean(axis=0))
    assert np.ptp(np.array(means), axis=0).max() > 60.0  # background colours differ between scenes


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="'validation'"):
        scenes.scene_arrays("validation", 2)
    with pytest.raises(ValueError, match="'val'"):
        scenes.split_digits("val")


def test_generation_is_fast():
    scenes.split_digits("train")  # loading sklearn's digits once is not part of the cost
    start = time.perf_counter()
    scenes.scene_arrays("train", 300, seed=5)
    assert time.perf_counter() - start < 3.0  # the real use, 2000 scenes, takes about 1 s


# ---------------------------------------------------------------------------------------------------
# Source digits: the classification demo's split


def test_train_and_test_digits_are_disjoint():
    from sklearn.datasets import load_digits

    train, test = scenes.split_indices("train"), scenes.split_indices("test")
    assert len(test) == 360 and len(train) == 1797 - 360
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    # sources.demo_arrays' rule
    np.testing.assert_array_equal(test, np.random.RandomState(0).permutation(1797)[:360])
    digits = load_digits()
    for split, take in (("train", train), ("test", test)):
        images, labels = scenes.split_digits(split)
        np.testing.assert_array_equal(images, digits.images[take])
        np.testing.assert_array_equal(labels, digits.target[take])


def test_each_split_draws_only_its_own_digits(monkeypatch):
    real = scenes.split_digits
    asked = []

    def only_one_class(split):
        asked.append(split)
        images, labels = real(split)
        keep = labels == (7 if split == "test" else 2)
        return images[keep], labels[keep]

    monkeypatch.setattr(scenes, "split_digits", only_one_class)
    _, test_labels = scenes.scene_arrays("test", 10)
    _, train_labels = scenes.scene_arrays("train", 10)
    assert asked == ["test", "train"]
    assert set(np.unique(test_labels).tolist()) == {0, 8}
    assert set(np.unique(train_labels).tolist()) == {0, 3}


# ---------------------------------------------------------------------------------------------------
# Labels: the stroke, and occlusion


def test_upscaling_is_pil_bicubic_of_the_intensity():
    digit = _digit_of_class(5)
    for side in (20, 31, 40):
        pil = np.asarray(Image.fromarray(digit.astype(np.float32)).resize((side, side), Image.BICUBIC))
        np.testing.assert_allclose(scenes.upscale_digit(digit, side), np.clip(pil / 16.0, 0, 1), atol=1e-5)


def test_label_is_the_stroke_not_the_box():
    digit = _digit_of_class(0)
    side = 32
    alpha = scenes.upscale_digit(digit, side)
    stroke = alpha > 0.5
    faint = (alpha > 0.02) & ~stroke
    assert stroke.sum() > 50 and faint.sum() > 50  # the box has both, so the test can tell them apart
    rows, cols = np.nonzero(stroke)
    offsets = set()
    for seed in range(8):
        image, label = scenes.make_scene(np.random.RandomState(seed), [digit], [0], digits=(1, 1),
                                         digit_size=(side, side))
        assert set(np.unique(label).tolist()) == {0, 1}
        got_rows, got_cols = np.nonzero(label)
        top, left = got_rows.min() - rows.min(), got_cols.min() - cols.min()
        assert 0 <= top <= 96 - side and 0 <= left <= 96 - side
        offsets.add((top, left))
        expected = np.zeros((96, 96), np.uint8)
        expected[top:top + side, left:left + side][stroke] = 1
        np.testing.assert_array_equal(label, expected)
        box = (slice(top, top + side), slice(left, left + side))
        assert (label[box][faint] == 0).all()
        # the digit stands out from what is around it
        luma = image.astype(np.float64) @ LUMA
        assert abs(luma[box][alpha > 0.9].mean() - luma[box][alpha < 0.01].mean()) > 50
    assert len(offsets) > 4  # positions vary


def test_later_stroke_overwrites_earlier_label():
    # A canvas as large as the digits puts both at (0, 0): each one's place is known.
    one, seven = _digit_of_class(1, 2), _digit_of_class(7, 2)
    side = 40
    m1, m7 = scenes.upscale_digit(one, side) > 0.5, scenes.upscale_digit(seven, side) > 0.5
    overlap = m1 & m7
    assert overlap.sum() > 20 and (m1 & ~m7).any() and (m7 & ~m1).any()

    def layered(first, second):
        label = np.zeros((side, side), np.uint8)
        for cls, mask in (first, second):
            label[mask] = cls
        return label

    orders = {"1 then 7": layered((2, m1), (8, m7)), "7 then 1": layered((8, m7), (2, m1)),
              "1 twice": layered((2, m1), (2, m1)), "7 twice": layered((8, m7), (8, m7))}
    # Which digit is on top shows in the image: where both are opaque, the pixels take the later colour.
    a1, a7 = scenes.upscale_digit(one, side), scenes.upscale_digit(seven, side)
    core, only1, only7 = (a1 > 0.8) & (a7 > 0.8), (a1 > 0.8) & (a7 < 0.05), (a7 > 0.8) & (a1 < 0.05)
    assert core.sum() >= 30 and only1.sum() >= 30 and only7.sum() >= 30
    seen = set()
    for seed in range(30):
        image, label = scenes.make_scene(np.random.RandomState(seed), [one, seven], [1, 7], size=side,
                                         digits=(2, 2), digit_size=(side, side))
        matches = [name for name, expected in orders.items() if np.array_equal(label, expected)]
        assert len(matches) == 1, f"seed {seed}: the label is none of the layerings"
        if matches[0] in ("1 then 7", "7 then 1"):
            colour1, colour7, top = (np.median(image[m].astype(np.float64), axis=0) for m in (only1, only7, core))
            if np.abs(colour1 - colour7).max() > 40:  # colours far enough apart to tell
                on_top = "7" if np.abs(top - colour7).max() < np.abs(top - colour1).max() else "1"
                assert matches[0].endswith(on_top), f"seed {seed}: digit {on_top} is drawn on top"
                seen.add(matches[0])
    assert seen == {"1 then 7", "7 then 1"}
    # the two layerings differ on the overlap, where the later digit's class wins
    assert (orders["1 then 7"][overlap] == 8).all() and (orders["7 then 1"][overlap] == 2).all()


def test_faint_part_of_a_later_box_keeps_the_earlier_label():
    canvas = np.zeros((10, 10, 3), np.float32)
    label = np.zeros((10, 10), np.uint8)
    scenes.paste_digit(canvas, label, np.ones((6, 6), np.float32), np.full(3, 200.0, np.float32), 0, 0, 4)
    later = np.full((6, 6), 0.3, np.float32)
    later[2:4, 2:4] = 0.9
    scenes.paste_digit(canvas, label, later, np.zeros(3, np.float32), 3, 3, 9)
    expected = np.zeros((10, 10), np.uint8)
    expected[:6, :6] = 4
    expected[5:7, 5:7] = 9
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_allclose(canvas[4, 4], 200.0 * 0.7)  # blended by alpha


# ---------------------------------------------------------------------------------------------------
# Preview and ADE20K metadata


def test_preview_is_written(tmp_path, train_scenes):
    images, labels = train_scenes
    path = tmp_path / "preview.png"
    scenes.save_scene_preview(path, images, labels, count=6, columns=3)
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        pixels = np.asarray(picture)
    assert pixels.shape[0] > 2 * 2 * 96 and pixels.shape[1] > 3 * 2 * 2 * 96
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7].tolist()}
    assert tuple(ade20k.palette(11)[0].tolist()) in colours  # the label maps are drawn in the palette


def test_ade20k_palette_and_classes():
    assert ade20k.PALETTE.shape == (150, 3) and ade20k.PALETTE.dtype == np.uint8
    np.testing.assert_array_equal(ade20k.PALETTE[:4], [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50]])
    np.testing.assert_array_equal(ade20k.PALETTE[-3:], [[25, 194, 194], [102, 255, 0], [92, 0, 255]])
    assert len(ade20k.CLASSES) == 150 and len(set(ade20k.CLASSES)) == 150
    assert ade20k.CLASSES[:4] == ("wall", "building", "sky", "floor") and ade20k.CLASSES[-1] == "flag"
    assert all(name == name.strip() and name for name in ade20k.CLASSES)


def test_palette_function():
    np.testing.assert_array_equal(ade20k.palette(150), ade20k.PALETTE)
    eleven = ade20k.palette(11)
    assert eleven.shape == (11, 3) and eleven.dtype == np.uint8
    np.testing.assert_array_equal(eleven, ade20k.PALETTE[:11])
    big = ade20k.palette(300)
    assert big.shape == (300, 3) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[:150], ade20k.PALETTE)
    np.testing.assert_array_equal(big, ade20k.palette(300))  # deterministic
    np.testing.assert_array_equal(ade20k.palette(200), big[:200])
    assert len({tuple(c) for c in big[150:].tolist()}) > 140  # extra classes get distinct colours
