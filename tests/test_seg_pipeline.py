"""Segmentation input: the folder source's checks (each bad input named, nothing written), ADE20K's
reduce_zero_label, evaluation batches of bounded shapes, TFDS scene_parse150 (mocked)."""

import itertools
import os

import numpy as np
import pytest
from PIL import Image

from swin_jax import data
from swin_jax.data import DataError
from swin_jax.data import pipeline


def write_pair(root, split, stem, size=(40, 30), values=(0, 1, 2), mode="L", label_size=None):
    os.makedirs(os.path.join(root, "images", split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
    rng = np.random.RandomState(len(stem))
    Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3)).astype(np.uint8)).save(
        os.path.join(root, "images", split, stem + ".jpg"))
    w, h = label_size or size
    label = np.resize(np.array(values, np.uint8), (h, w))
    image = Image.fromarray(label) if mode == "L" else Image.fromarray(np.stack([label] * 3, -1))
    image.save(os.path.join(root, "annotations", split, stem + ".png"))


def folder_config(root, **overrides):
    config = data.segmentation_config()
    config.unlock()
    config.update({**dict(dataset="folder", data_dir=str(root), batch_size=2, eval_batch_size=2, num_classes=4,
                          scale=(64, 48), crop_size=(32, 32), eval_scale=(64, 48), eval_pad_multiple=32), **overrides})
    return config


def good_folder(root):
    for split in ("training", "validation"):
        for i in range(3):
            write_pair(root, split, f"img{i}", size=(40 + 8 * i, 30), values=(0, 1, 2, 3, 4))
    return root


@pytest.mark.parametrize("problem,expected", [
    ("value", "class values 9 are not below num_classes=4"),
    ("lonely_image", "has no annotation"),
    ("lonely_label", "has no image"),
    ("size", r"cannot be used \(config.input.skip_bad_files=False\): .*bad.png: annotation is 20x30 but its image"),
    ("rgb", "annotation has mode RGB"),
])
def test_bad_folders_are_named(tmp_path, problem, expected):
    root = good_folder(tmp_path / "ade")
    if problem == "value":
        write_pair(root, "training", "bad", values=(1, 9, 255))  # 9 -> 8 after reduce_zero_label: >= 4
    elif problem == "lonely_image":
        os.remove(os.path.join(root, "annotations", "training", "img1.png"))
    elif problem == "lonely_label":
        os.remove(os.path.join(root, "images", "training", "img2.jpg"))
    elif problem == "size":
        write_pair(root, "training", "bad", size=(40, 30), label_size=(20, 30))
    elif problem == "rgb":
        write_pair(root, "training", "bad", mode="RGB")
    before = sorted(os.walk(root))
    with pytest.raises(DataError, match=expected) as error:
        pipeline.segmentation_train_input(folder_config(root, skip_bad_files=False), seed=0)
    if problem in ("value", "size", "rgb"):
        assert "bad.png" in str(error.value)
    assert sorted(os.walk(root)) == before  # nothing written or moved


def test_damaged_pairs_in_the_middle_of_a_folder_are_skipped_named_and_counted(tmp_path, caplog):
    """An image that does not decode and an annotation of another size between good pairs: both left
    out with a warning naming the file, counted, and training goes on with the rest."""
    import logging

    root = good_folder(tmp_path / "ade")
    write_pair(root, "training", "img1b", size=(40, 30), label_size=(20, 30))
    write_pair(root, "training", "img1c")
    broken = os.path.join(root, "images", "training", "img1c.jpg")
    with open(broken, "r+b") as f:
        f.truncate(os.path.getsize(broken) // 2)
    with caplog.at_level(logging.WARNING):
        training = pipeline.segmentation_train_input(folder_config(root, batch_size=1), seed=0)
    assert training.num_examples == 3 and training.skipped_files == 2
    assert f"skipping {broken}: " in caplog.text
    assert "img1b.png: annotation is 20x30 but its image" in caplog.text
    assert len(list(itertools.islice(training, 4))) == 4


def test_reduce_zero_label_and_ignore_padding(tmp_path):
    root = good_folder(tmp_path / "ade")
    config = folder_config(root, photometric=False)
    batch = next(iter(pipeline.segmentation_train_input(config, seed=0)))
    assert batch["image"].shape == (2, 32, 32, 3) and batch["label"].shape == (2, 32, 32)
    assert set(np.unique(batch["label"])) <= {0, 1, 2, 3, 255}  # 0 -> 255, 1..4 -> 0..3
    evaluation = pipeline.segmentation_eval_input(config)
    batches = list(evaluation)
    labels = np.concatenate([b["label"][b["mask"]].ravel() for b in batches])
    assert set(np.unique(labels)) == {0, 1, 2, 3, 255}
    assert sum(int(b["mask"].sum()) for b in batches) == 3


def test_eval_batches_have_bounded_padded_shapes(tmp_path):
    """Ten images of ten sizes: each resized keeping its ratio, padded to multiples of 32, batched by
    padded shape; every image counted once, annotations at their original size."""
    root = tmp_path / "sizes"
    sizes = [(40 + 13 * i, 30 + 7 * (i % 3)) for i in range(10)]
    for i, size in enumerate(sizes):
        write_pair(root, "validation", f"img{i:02d}", size=size, values=(1, 2))
    config = folder_config(root, eval_batch_size=4)
    batches = list(pipeline.segmentation_eval_input(config))
    shapes = {(b["image"].shape[1:3], b["label"].shape[1:3]) for b in batches}
    assert all(h % 32 == 0 and w % 32 == 0 for image, label in shapes for h, w in (image, label))
    assert len(shapes) < len(sizes)
    seen = sorted(tuple(s) for b in batches for s, m in zip(b["label_size"], b["mask"]) if m)
    assert seen == sorted((h, w) for w, h in sizes)
    for b in batches:
        for valid, label_size in zip(b["valid"][b["mask"]], b["label_size"][b["mask"]]):
            from swin_jax.data.segmentation import rescale_size
            assert tuple(valid) == tuple(rescale_size(int(label_size[0]), int(label_size[1]), (64, 48)))


def test_scene_parse150_from_tfds_mock():
    import tensorflow_datasets as tfds

    config = data.segmentation_config()
    config.unlock()
    config.update(dict(dataset="scene_parse150", batch_size=2, eval_batch_size=2, crop_size=(32, 32),
                       scale=(64, 32), eval_scale=(64, 32), eval_pad_multiple=32))
    with tfds.testing.mock_data(num_examples=4):
        batch = next(iter(pipeline.segmentation_train_input(config, seed=0)))
        evaluation = pipeline.segmentation_eval_input(config)
        assert sum(int(b["mask"].sum()) for b in evaluation) == 4
    assert batch["image"].shape == (2, 32, 32, 3) and batch["label"].dtype == np.uint8
