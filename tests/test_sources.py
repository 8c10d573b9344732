import io
import itertools
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from swin_jax import data
from swin_jax.data import sources, transforms
from swin_jax.data.sources import DataError


def _photo(h, w, seed=0):
    """A smooth RGB image (compresses like a photo, so JPEG round trips stay close)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.RandomState(seed)
    channels = [np.sin(2 * np.pi * (rng.rand() * 2 * x + rng.rand() * 2 * y) + rng.rand() * 6) for _ in range(3)]
    return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


def _save(path, image: Image.Image, fmt, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, fmt, **kw)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/{ant,bee,cat} and val/{ant,cat} with JPEG, PNG, grey-scale, CMYK and RGBA images, plus two
    broken files and one that is not an image at all."""
    root = tmp_path_factory.mktemp("folder")
    for split, counts in (("train", {"ant": 4, "bee": 3, "cat": 3}), ("val", {"ant": 3, "cat": 2})):
        for c, (name, n) in enumerate(counts.items()):
            for i in range(n):
                rgb = Image.fromarray(_photo(40 + 7 * i, 50 + 5 * c, seed=10 * c + i))
                stem = os.path.join(root, split, name, f"{name}{i}")
                kind = i % 3
                if kind == 0:
                    _save(stem + ".jpg", rgb, "JPEG", quality=95)
                elif kind == 1:
                    _save(stem + ".png", rgb, "PNG")
                else:
                    _save(stem + ".JPEG", rgb.convert("L"), "JPEG", quality=95)
    _save(os.path.join(root, "train", "ant", "cmyk.jpg"), Image.fromarray(_photo(48, 64, 7)).convert("CMYK"),
          "JPEG", quality=95)
    _save(os.path.join(root, "train", "bee", "alpha.png"), Image.fromarray(_photo(30, 30, 8)).convert("RGBA"), "PNG")
    good = io.BytesIO()
    Image.fromarray(_photo(64, 64, 9)).save(good, "JPEG")
    with open(os.path.join(root, "train", "cat", "truncated.jpg"), "wb") as f:
        f.write(good.getvalue()[: len(good.getvalue()) // 2])
    with open(os.path.join(root, "train", "cat", "notes.jpg"), "w") as f:
        f.write("not an image")
    with open(os.path.join(root, "train", "cat", "readme.txt"), "w") as f:
        f.write("ignored: not an image extension")
    return str(root)


def _folder_config(root, **kw):
    config = data.default_config()
    config.update(dict(dataset="folder", data_dir=root, image_size=32, batch_size=4, rand_augment="",
                       shuffle_buffer=100), **kw)
    return config


def test_folder_skips_bad_files_with_a_warning_naming_each(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        split = sources.folder_split(image_folder, "train", process_index=0, process_count=1)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "truncated.jpg" in messages and "notes.jpg" in messages
    assert "skipped 2 of 14 files" in messages
    assert split.total_examples == 12 and split.num_classes == 3
    assert [entry.split(": ")[0] for entry in split.skipped] == [os.path.join(image_folder, "train", "cat", name)
                                                                 for name in ("notes.jpg", "truncated.jpg")]
    with pytest.raises(DataError, match=r"2 of 14 files cannot be used \(config.input.skip_bad_files=False\): "
                                        r".*notes.jpg: .*truncated.jpg: "):
        sources.folder_split(image_folder, "train", process_index=0, process_count=1, skip_bad_files=False)


def test_a_run_on_a_folder_with_bad_files_goes_on_and_counts_them(image_folder, tmp_path, caplog):
    """Two bad files among the training images: the run names each in the log, counts them in
    metrics.jsonl and trains; with skip_bad_files=False it stops before its first step, naming them."""
    from configs import demo
    from swin_jax.train import train_and_evaluate

    config = demo.get_config()
    config.update(dict(dataset="folder", total_steps=2, batch_size=8, log_every_steps=1, eval_every_steps=1000,
                       checkpoint_every_steps=1000))
    config.input.data_dir = image_folder
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "truncated.jpg" in caplog.text and "notes.jpg" in caplog.text
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows[0] == {"step": 0, "train_skipped_files": 2.0}
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2]
    config.input.skip_bad_files = False
    with pytest.raises(DataError, match="truncated.jpg"):
        train_and_evaluate(config, str(tmp_path / "stopped"))
    assert not os.path.exists(tmp_path / "stopped")  # refused before its first step: no folder left


def test_folder_converts_grey_cmyk_and_alpha_to_rgb(image_folder):
    root = os.path.join(image_folder, "train")
    for name in ("ant/cmyk.jpg", "ant/ant2.JPEG", "bee/alpha.png", "ant/ant1.png"):
        path = os.path.join(root, name)
        decoded = transforms.decode(tf.io.read_file(path)).numpy()
        expected = np.asarray(Image.open(path).convert("RGB"), np.float32)
        assert decoded.shape == expected.shape and decoded.shape[-1] == 3, name
        assert np.abs(decoded - expected).mean() < 3.0, name  # CMYK conversions differ by rounding only


def test_folder_labels_follow_sorted_train_classes_and_eval_counts_once(image_folder):
    config = _folder_config(image_folder)
    split = sources.folder_split(image_folder, "val", process_index=0, process_count=1)
    labels = sorted(int(ex["label"]) for ex in split.dataset)
    assert labels == [0, 0, 0, 2, 2]  # ant=0, bee=1, cat=2 even though val has no bee
    evaluation = data.eval_input(config)
    batches = list(evaluation)
    assert evaluation.steps == len(batches) == 2
    assert sum(b["mask"].sum() for b in batches) == 5
    assert sorted(np.concatenate([b["label"][b["mask"]] for b in batches]).tolist()) == labels
    assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)


def test_folder_train_batches(image_folder):
    training = data.train_input(_folder_config(image_folder), seed=1)
    assert (training.num_classes, training.num_examples, training.steps) == (3, 12, 3)
    batch = next(iter(training))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= {0, 1, 2}


def test_folder_errors_name_the_problem(image_folder, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sources.folder_split(str(tmp_path / "missing"), "train", process_index=0, process_count=1)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class sub-folders"):
        sources.folder_split(str(tmp_path / "empty"), "train", process_index=0, process_count=1)
    (tmp_path / "empty" / "train" / "dog").mkdir()
    with pytest.raises(DataError, match="has no image files"):
        sources.folder_split(str(tmp_path / "empty"), "train", process_index=0, process_count=1)
    bad = tmp_path / "extra"
    for split, cls in (("train", "dog"), ("val", "dog"), ("val", "wolf")):
        _save(str(bad / split / cls / "a.png"), Image.fromarray(_photo(20, 20)), "PNG")
    with pytest.raises(DataError, match=r"\['wolf'\] are in .*val but not in .*train"):
        sources.folder_split(str(bad), "val", process_index=0, process_count=1)
    with pytest.raises(DataError, match="needs config.input.data_dir"):
        data.train_input(_folder_config(None), seed=0)


def test_imagenet_through_the_real_tfds_code_path():
    config = data.default_config()
    config.update(dict(dataset="imagenet2012", image_size=48, batch_size=4, shuffle_buffer=16))
    with tfds.testing.mock_data(num_examples=10):
        training = data.train_input(config, seed=0)
        batch = next(iter(training))
        evaluation = data.eval_input(config)
        batches = list(evaluation)
    assert training.num_classes == 1000 and training.steps == 2
    assert batch["image"].shape == (4, 48, 48, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and np.all((batch["label"] >= 0) & (batch["label"] < 1000))
    assert batch["image"].std() > 10  # real pixels, not a constant fill
    assert evaluation.steps == len(batches) == 3  # 10 examples in batches of 4: the last is half padding
    assert sum(b["mask"].sum() for b in batches) == 10
    assert not batches[-1]["mask"][2:].any()


def test_tfds_errors_say_what_to_do(tmp_path):
    config = data.default_config()
    config.data_dir = str(tmp_path)
    with pytest.raises(DataError) as e:
        data.train_input(config, seed=0)
    message = str(e.value)
    assert "not prepared" in message and "ILSVRC2012_img_train.tar" in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message
    config.dataset = "cifar10"
    with pytest.raises(DataError, match=f"tfds build cifar10 --data_dir={tmp_path}"):
        data.train_input(config, seed=0)
    config.dataset = "imagenet2013"
    with pytest.raises(DataError, match="unknown dataset 'imagenet2013'"):
        data.train_input(config, seed=0)


def test_demo_dataset_is_fixed_real_and_offline():
    train_x, train_y = sources.demo_arrays("train")
    test_x, test_y = sources.demo_arrays("test")
    assert train_x.shape == (1437, 32, 32, 3) and test_x.shape == (360, 32, 32, 3)
    assert train_x.dtype == np.uint8 and set(train_y) == set(test_y) == set(range(10))
    again_x, again_y = sources.demo_arrays("test")
    np.testing.assert_array_equal(again_x, test_x)
    np.testing.assert_array_equal(again_y, test_y)
    # No test image is also a training image.
    train_keys = {x.tobytes() for x in train_x}
    assert sum(x.tobytes() in train_keys for x in test_x) <= 2  # the digits set has a few exact duplicates
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        sources.demo_arrays("validation")


def test_demo_digits_drawn_as_the_scenes_draw_them():
    """config.input.demo_digits='scene': the same digits and labels, each in a contrasting colour on a
    textured background of its own; fixed from call to call; a bad style is named."""
    plain_x, plain_y = sources.demo_arrays("test")
    scene_x, scene_y = sources.demo_arrays("test", "scene")
    assert scene_x.shape == (360, 32, 32, 3) and scene_x.dtype == np.uint8
    np.testing.assert_array_equal(scene_y, plain_y)
    np.testing.assert_array_equal(sources.demo_arrays("test", "scene")[0], scene_x)
    colourful = np.abs(scene_x.astype(int) - scene_x.mean(-1, keepdims=True)).max(axis=(1, 2, 3))
    assert (colourful > 20).mean() > 0.9 and np.all(plain_x[..., 0] == plain_x[..., 2])  # colour vs grey
    corners = scene_x[:, :3, :3].reshape(360, -1).mean(1)
    assert corners.std() > 30  # every background its own
    # the digit is there: strokes (where the plain image is bright) differ from the background around them
    strokes = plain_x[..., 0] > 200
    gap = [np.abs(x[m].mean(0) - x[~m].mean(0)).max() for x, m in zip(scene_x.astype(float), strokes)]
    assert np.median(gap) > 40
    with pytest.raises(DataError, match="config.input.demo_digits='sketch'"):
        sources.demo_arrays("test", "sketch")


def test_every_process_gets_the_same_number_of_steps_and_each_example_counts_once():
    config = data.default_config()
    config.update(dict(dataset="demo", image_size=32, batch_size=48, crop_pct=1.0))
    seen, steps = [], set()
    for p in range(3):
        evaluation = data.eval_input(config, process_index=p, process_count=3)
        steps.add(evaluation.steps)
        seen += [b["label"][b["mask"]] for b in evaluation]
        train = data.train_input(config, seed=0, process_index=p, process_count=3)
        steps.add(("train", train.steps, train.local_batch_size))
    assert steps == {8, ("train", 29, 16)}  # 360 / 3 = 120 per process in batches of 16 -> 8 steps
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(sources.demo_arrays("test")[1]))


def test_a_file_damaged_after_the_check_stops_the_input_with_a_clear_error(tmp_path):
    root = tmp_path / "folder"
    for i in range(4):
        _save(str(root / "train" / "a" / f"{i}.jpg"), Image.fromarray(_photo(40, 40, i)), "JPEG")
    training = data.train_input(_folder_config(str(root), batch_size=2), seed=0)
    with open(root / "train" / "a" / "2.jpg", "wb") as f:
        f.write(b"\xff\xd8 no longer a JPEG")
    with pytest.raises(DataError, match="the input failed while reading: .*run the same command to check them again"):
        for _ in itertools.islice(training, 4):
            pass
