import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from swin_jax import data
from swin_jax.data import on_device as mixup
from swin_jax.data.on_device import erasing_boxes, normalize, random_erasing, train_batch

NUM_CLASSES = 10
OFFICIAL = dict(num_classes=NUM_CLASSES, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0,
                label_smoothing=0.1)


def _batch(n=8, size=16):
    images = jax.random.normal(jax.random.key(0), (n, size, size, 3))
    labels = jnp.arange(n) % NUM_CLASSES
    return images, labels


@pytest.fixture(scope="module")
def mix_official():
    return jax.jit(lambda rng, x, y: mixup.mix(rng, x, y, **OFFICIAL))


def test_targets_are_distributions_and_mix_the_mirrored_labels(mix_official):
    images, labels = _batch()
    for i in range(20):
        mixed, targets = mix_official(jax.random.key(i), images, labels)
        assert mixed.shape == images.shape and targets.shape == (8, NUM_CLASSES)
        np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
        assert (targets >= 0).all()
        # Row j holds lam on its own label and 1 - lam on the label of row n-1-j (plus smoothing).
        lam = targets[0, labels[0]] - 0.1 / NUM_CLASSES
        partner = targets[0, labels[-1]] - 0.1 / NUM_CLASSES
        np.testing.assert_allclose((lam + partner) / 0.9, 1.0, atol=1e-5)


def test_cutmix_lambda_is_the_area_kept(mix_official):
    images, labels = _batch()
    cut_any = mix_any = False
    for i in range(30):
        mixed, targets = mix_official(jax.random.key(i), images, labels)
        lam = float((targets[0, labels[0]] - 0.01) / 0.9)
        from_self = np.isclose(mixed, images).all(-1)
        from_mirror = np.isclose(mixed, images[::-1]).all(-1)
        if (from_self | from_mirror).all():  # cutmix: each pixel comes from one of the two images
            cut_any = True
            np.testing.assert_allclose(from_self[0].mean(), lam, atol=1e-5)
        else:  # mixup: a blend with the same lambda everywhere
            mix_any = True
            np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], atol=1e-4)
    assert cut_any and mix_any  # switch probability 0.5 picks both over 30 batches


def test_switching_off_leaves_images_and_smooths_labels():
    images, labels = _batch()
    out, targets = mixup.mix(jax.random.key(0), images, labels, num_classes=NUM_CLASSES, mixup_alpha=0.0,
                             cutmix_alpha=0.0, label_smoothing=0.1)
    assert out is images
    np.testing.assert_allclose(targets.max(-1), 0.91, atol=1e-6)
    np.testing.assert_allclose(targets.min(-1), 0.01, atol=1e-6)
    _, hard = mixup.mix(jax.random.key(0), images, labels, num_classes=NUM_CLASSES, prob=0.0, label_smoothing=0.0)
    np.testing.assert_array_equal(hard, jax.nn.one_hot(labels, NUM_CLASSES))
    only_mixup = jax.jit(lambda r: mixup.mix(r, images, labels, num_classes=NUM_CLASSES, cutmix_alpha=0.0))
    mixed, _ = only_mixup(jax.random.key(3))
    assert not (np.isclose(mixed, images).all(-1) | np.isclose(mixed, images[::-1]).all(-1)).all()


def test_lambda_distribution_matches_timm():
    """The label weight kept by each image, against timm's Mixup in batch mode: cutmix boxes clipped at
    the border shift it above 1/2 in both."""
    import torch
    from timm.data import Mixup

    images, labels = _batch(4, 32)
    run = jax.jit(jax.vmap(lambda r: mixup.mix(r, images, labels, **OFFICIAL)[1][0, labels[0]]))
    ours = (np.asarray(run(jax.random.split(jax.random.key(1), 4000))) - 0.01) / 0.9
    timm_mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                       label_smoothing=0.1, num_classes=NUM_CLASSES)
    np.random.seed(0)
    x, y = torch.zeros(4, 3, 32, 32), torch.as_tensor(np.array(labels))
    theirs = np.array([(timm_mixup(x.clone(), y)[1][0, int(y[0])].item() - 0.01) / 0.9 for _ in range(4000)])
    assert ours.min() >= 0 and ours.max() <= 1
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(ours, q) - np.quantile(theirs, q)) < 0.04, q
    assert abs(ours.mean() - theirs.mean()) < 0.02


def test_same_result_on_one_device_and_sharded_over_eight():
    images, labels = _batch(16)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharded = NamedSharding(mesh, P("data"))
    run = jax.jit(lambda r, x, y: mixup.mix(r, x, y, **OFFICIAL))
    for i in range(4):
        one = run(jax.random.key(i), images, labels)
        many = run(jax.random.key(i), jax.device_put(images, sharded), jax.device_put(labels, sharded))
        for a, b in zip(one, many):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_normalize_is_torchvision_normalize():
    pixels = np.random.RandomState(0).randint(0, 256, (2, 5, 5, 3)).astype(np.uint8)
    expected = (pixels / 255.0 - np.array(mixup.IMAGENET_MEAN)) / np.array(mixup.IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(normalize(jnp.asarray(pixels))), expected, atol=2e-6)
    assert normalize(jnp.asarray(pixels), dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_erasing_boxes_follow_timm():
    """One solid box per erased image, area fraction in [0.02, 1/3], erased with probability p."""
    boxes = np.asarray(jax.jit(lambda r: erasing_boxes(r, 2000, 64, 48, prob=1.0))(jax.random.key(0)))
    fractions = []
    for box in boxes:
        rows, cols = np.nonzero(box)
        assert rows.size  # prob 1 and ten tries: there is always a box here
        solid = box[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert solid.all()
        fractions.append(solid.size / box.size)
    assert 0.015 <= min(fractions) and max(fractions) <= 0.35  # 1/3 plus rounding of the sides
    assert abs(np.mean(fractions) - 0.165) < 0.02  # uniform area in [0.02, 1/3], a little rounding
    some = np.asarray(erasing_boxes(jax.random.key(1), 2000, 64, 48, prob=0.25))
    assert abs(some.any((1, 2)).mean() - 0.25) < 0.03


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_random_erasing_fills(mode):
    images = jnp.full((64, 32, 32, 3), 7.0)
    out = np.asarray(jax.jit(lambda r, x: random_erasing(r, x, prob=1.0, mode=mode))(jax.random.key(0), images))
    erased = out != 7.0
    assert erased.any((1, 2, 3)).all()
    values = out[erased]
    if mode == "pixel":
        assert 0.9 < values.std() < 1.1 and abs(values.mean()) < 0.1
    elif mode == "rand":  # one colour per image and channel
        first = out[0][erased[0]].reshape(-1, 3)
        assert (first == first[0]).all()
    else:
        assert (values == 0).all()
    assert random_erasing(jax.random.key(0), images, prob=0.0) is images
    with pytest.raises(ValueError, match="'pixel', 'rand' or 'const'"):
        random_erasing(jax.random.key(0), images, mode="noise")


def test_train_batch_follows_the_config():
    config = data.default_config()
    pixels = jnp.asarray(np.random.RandomState(0).randint(0, 256, (8, 16, 16, 3)), jnp.uint8)
    labels = jnp.arange(8) % NUM_CLASSES
    run = jax.jit(lambda r, x, y: train_batch(r, x, y, config, num_classes=NUM_CLASSES, dtype=jnp.bfloat16))
    images, targets = run(jax.random.key(0), pixels, labels)
    assert images.dtype == jnp.bfloat16 and targets.shape == (8, NUM_CLASSES)
    np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
    config.update(dict(random_erase=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0))
    images, targets = train_batch(jax.random.key(0), pixels, labels, config, num_classes=NUM_CLASSES)
    np.testing.assert_allclose(images, normalize(pixels), atol=1e-6)
    np.testing.assert_array_equal(targets, jax.nn.one_hot(labels, NUM_CLASSES))
