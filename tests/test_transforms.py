import io
import random

import numpy as np
import tensorflow as tf
from PIL import Image

from swin_jax.data import transforms
from swin_jax.data.on_device import normalize


def _photo(h, w, seed=0):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.RandomState(seed)
    channels = [np.sin(2 * np.pi * (rng.rand() * 3 * x + rng.rand() * 3 * y) + rng.rand() * 6) for _ in range(3)]
    return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


def _jpeg(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _seed(i):
    return tf.constant([7, i], tf.int64)


TRAIN = dict(size=64, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1")


def test_crop_distribution_matches_timm():
    """Area fraction and log aspect ratio of the crops, against timm's RandomResizedCrop.get_params."""
    from timm.data.transforms import RandomResizedCropAndInterpolation

    height, width, n = 300, 400, 3000
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    window = tf.function(lambda s: tf.stack(transforms.crop_window(s, height, width, scale, ratio)))
    ours = np.array([window(_seed(i)).numpy() for i in range(n)])
    random.seed(0)
    blank = Image.new("RGB", (width, height))
    theirs = np.array([RandomResizedCropAndInterpolation.get_params(blank, scale, ratio) for _ in range(n)])
    for params in (ours, theirs):
        y, x, h, w = params.T
        assert np.all((y >= 0) & (x >= 0) & (y + h <= height) & (x + w <= width))
    area = {k: p[:, 2] * p[:, 3] / (height * width) for k, p in (("ours", ours), ("timm", theirs))}
    log_ratio = {k: np.log(p[:, 3] / p[:, 2]) for k, p in (("ours", ours), ("timm", theirs))}
    assert area["ours"].min() >= 0.079 and area["ours"].max() <= 1.0
    assert np.abs(log_ratio["ours"]).max() <= np.log(4 / 3) + 0.02
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(area["ours"], q) - np.quantile(area["timm"], q)) < 0.04, q
        assert abs(np.quantile(log_ratio["ours"], q) - np.quantile(log_ratio["timm"], q)) < 0.03, q
    # The crop position is uniform: the mean offset is half the slack.
    y, x, h, w = ours.T
    assert abs(np.mean(y / np.maximum(height - h, 1)) - 0.5) < 0.03


def test_crop_falls_back_to_a_centre_crop_with_the_ratio_clamped():
    # A 10x200 strip cannot hold any 3/4..4/3 crop of >= 8% of its area.
    y, x, h, w = (int(v) for v in transforms.crop_window(_seed(0), 10, 200))
    assert (h, w, y) == (10, 13, 0) and x == (200 - 13) // 2


def test_train_transform_shapes_ranges_and_determinism():
    image = tf.constant(_jpeg(_photo(90, 120)))
    run = tf.function(lambda img, s: transforms.train_transform(img, s, **TRAIN))
    first = run(image, _seed(1)).numpy()
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8 and first.std() > 5
    np.testing.assert_array_equal(first, run(image, _seed(1)).numpy())
    assert not np.array_equal(first, run(image, _seed(2)).numpy())
    # The same transform of a decoded array (the demo source) and of a PNG gives the same crop.
    plain = dict(TRAIN, rand_augment="")
    decoded = tf.io.decode_jpeg(image, channels=3)
    png = io.BytesIO()
    Image.fromarray(decoded.numpy()).save(png, "PNG")
    from_array = transforms.train_transform(decoded, _seed(3), **plain).numpy()
    np.testing.assert_array_equal(transforms.train_transform(tf.constant(png.getvalue()), _seed(3), **plain).numpy(),
                                  from_array)
    # Decoding only the window changes chroma upsampling at its border, nothing else.
    from_jpeg = transforms.train_transform(image, _seed(3), **plain).numpy().astype(np.float32)
    assert np.abs(from_jpeg - from_array).mean() < 0.5


def test_every_augmentation_can_be_switched_off():
    array = _photo(64, 64)
    off = dict(size=64, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, rand_augment="")
    out = transforms.train_transform(tf.constant(array), _seed(0), **off).numpy()
    np.testing.assert_array_equal(out, array)
    flipped = transforms.train_transform(tf.constant(array), _seed(0), **dict(off, hflip=1.0)).numpy()
    np.testing.assert_array_equal(flipped, array[:, ::-1])


def _official_eval(image: Image.Image, size: int, crop_pct: float) -> np.ndarray:
    """The official PIL evaluation transform: timm's create_transform (shorter side to size / crop_pct,
    centre crop), or for crop_pct 1 torchvision's plain Resize((size, size)); normalised, HWC."""
    import torchvision.transforms as T
    from timm.data import create_transform

    if crop_pct < 1:
        transform = create_transform(size, interpolation="bicubic", crop_pct=crop_pct)
    else:
        transform = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                               T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return transform(image).permute(1, 2, 0).numpy()


def test_official_crop_follows_the_size():
    assert [transforms.official_crop_pct(s) for s in (96, 192, 224, 256, 384, 512)] == [0.875] * 4 + [1.0] * 2
    array = tf.constant(_photo(240, 320, seed=3))
    for size in (224, 384):
        np.testing.assert_array_equal(
            transforms.eval_transform(array, size=size).numpy(),
            transforms.eval_transform(array, size=size, crop_pct=transforms.official_crop_pct(size)).numpy())


def test_eval_transform_matches_the_pil_reference():
    array = _photo(240, 320, seed=3)
    for size, crop_pct in ((224, 0.875), (96, 0.875), (384, 1.0)):
        image = transforms.eval_transform(tf.constant(array), size=size, crop_pct=crop_pct).numpy()
        assert image.dtype == np.uint8
        ours = np.asarray(normalize(image))
        reference = _official_eval(Image.fromarray(array), size, crop_pct)
        assert ours.shape == reference.shape == (size, size, 3)
        # TensorFlow's and PIL's antialiased bicubic kernels differ slightly at the edges.
        assert np.abs(ours - reference).mean() < 0.02, size
    tall = transforms.eval_transform(tf.constant(_photo(300, 200)), size=64, crop_pct=0.875)
    assert tall.shape == (64, 64, 3)
