"""Training the detectors through train.py: the official multi-scale transform keeps boxes and masks
together; COCO annotations read as mmdet's CocoDataset (crowd left out, boxes without area dropped, boxes
outside the image clipped, both counted) with bad input named; a COCO folder's input with its masks; two
training steps of the COCO config on a mocked TFDS coco/2017 (boxes only), the losses and the COCOeval
metrics in metrics.jsonl."""

import json

import jax
import numpy as np
import pytest

from swin_jax.data import DataError, coco, detection
from test_coco_eval import detection_config, make_folder, mocked_tfds_coco


def tight_box(mask):
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_the_transform_moves_boxes_and_masks_together(seed):
    """Flip, either policy (resize; resize-crop-resize), padding: each kept box stays the tight box of its
    mask (within the one pixel a nearest resize may move an edge), labels follow their boxes, the image
    fits (h, w) = valid with zeros beyond, and a crop drops the boxes it leaves without area."""
    import tensorflow as tf

    rng = np.random.RandomState(seed)
    h, w = 300, 420
    image = rng.randint(1, 255, (h, w, 3)).astype(np.uint8)
    boxes = np.array([[10, 20, 200, 150], [300, 100, 419, 299], [150, 200, 260, 280]], np.float32)
    masks = np.zeros((3, h, w), np.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        m[y0:y1, x0:x1] = 1
    out = detection.train_transform(tf.constant(image), tf.constant(boxes), tf.constant([3, 5, 7]), tf.constant(masks),
                                    tf.constant([seed, 7], tf.int64), short_sides=(200, 240), long_side=333,
                                    crop_short_sides=(150,), crop_range=(100, 140), pad_hw=(352, 352), max_objects=5)
    out = {k: v.numpy() for k, v in out.items()}
    vh, vw = out["valid"]
    assert out["image"][vh:].max() == 0 and out["image"][:, vw:].max() == 0 and out["image"][:vh, :vw].min() > 0
    kept = int(out["gt_valid"].sum())
    assert out["gt_valid"].tolist() == [True] * kept + [False] * (5 - kept) and kept >= 1
    for box, label, mask in zip(out["gt_boxes"][:kept], out["gt_labels"][:kept], out["gt_masks"][:kept]):
        assert label in (3, 5, 7)
        np.testing.assert_allclose(box, tight_box(mask), atol=1.01)
        assert box[2] <= vw and box[3] <= vh
    assert not out["gt_masks"][kept:].any() and not out["gt_boxes"][kept:].any()


def test_too_many_objects_are_named_in_the_transform():
    import tensorflow as tf

    boxes = np.tile(np.array([[1, 1, 20, 20]], np.float32), (4, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"max_objects=3.*\n*.*42"):
        detection.train_transform(tf.zeros((40, 40, 3), tf.uint8), tf.constant(boxes), tf.zeros([4], tf.int32), None,
                                  tf.constant([0, 0], tf.int64), short_sides=(40,), long_side=40, crop_short_sides=(),
                                  pad_hw=(64, 64), max_objects=3, image_id=tf.constant(42, tf.int64))


def test_annotations_read_as_mmdet_with_bad_input_named(tmp_path):
    """Crowd and `ignore` annotations left out; a box reaching outside the image clipped and counted; one
    without area, or wholly outside, dropped and counted; an unknown category, more objects than
    max_objects and a mask of another size than its image are errors that name the image and the field."""
    index = {3: 0, 18: 1}
    annotations = [
        {"id": 1, "category_id": 3, "bbox": [-5, 10, 30, 20], "area": 600},  # clipped to x 0..25
        {"id": 2, "category_id": 18, "bbox": [10, 10, 0.5, 20], "area": 10},  # narrower than a pixel: dropped
        {"id": 3, "category_id": 18, "bbox": [100, 10, 20, 20], "area": 400},  # outside the 80-wide image: dropped
        {"id": 4, "category_id": 3, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 1},
        {"id": 5, "category_id": 3, "bbox": [5, 5, 10, 10], "area": 100, "ignore": True},
        {"id": 6, "category_id": 18, "bbox": [40, 30, 30, 50], "area": 1500},  # reaches y 80 > 70: clipped
    ]
    boxes, labels, kept, clipped, dropped = detection.instance_boxes(annotations, 70, 80, index, "img.png")
    np.testing.assert_array_equal(boxes, [[0, 10, 25, 30], [40, 30, 70, 70]])
    assert labels.tolist() == [0, 1] and [a["id"] for a in kept] == [1, 6] and (clipped, dropped) == (2, 2)
    with pytest.raises(DataError, match="img.png: annotation 9 has category_id 5"):
        detection.instance_boxes([{"id": 9, "category_id": 5, "bbox": [1, 1, 5, 5]}], 70, 80, index, "img.png")

    (tmp_path / "coco").mkdir()
    path, _ = make_folder(tmp_path / "coco")
    content = json.loads(path.read_text())
    with pytest.raises(DataError, match=r"val/1.png has 3 objects, more than config.input.max_objects=1 holds; raise"):
        coco.folder_train_split(str(tmp_path / "coco"), "val", 0, 1, max_objects=1)
    first = content["annotations"][0]
    first["segmentation"] = {"size": [10, 10], "counts": "0"}
    path.write_text(json.dumps(content))
    split = coco.folder_train_split(str(tmp_path / "coco"), "val", 0, 1, max_objects=5)
    with pytest.raises(Exception, match=r"annotation 1 has a \[10, 10\] mask for an image of 70x80"):
        next(iter(split.dataset.map(split.load)))


def train_config(tmp_path, **input_fields):
    config = detection_config(**input_fields)
    config.eval_only = False
    config.batch_size = 8  # one image per fake device
    config.input.eval_batch_size = 8
    config.input.update(short_sides=(64, 80), long_side=120, crop_short_sides=(56,), crop_range=(40, 60),
                        pad_hw=(128, 128), max_objects=8, shuffle_buffer=8, preview_images=0)
    config.model_overrides.update(rpn_train_nms_pre=200, rpn_train_max_per_img=100, rcnn_samples=32)
    config.total_steps, config.warmup_steps, config.lr_milestones = 2, 1, ()
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    return config


def test_a_coco_folder_gives_padded_boxes_with_their_masks(tmp_path):
    """The training input of a COCO folder: every image's polygons rasterised, through the transform, each
    valid box the tight box of its mask, the rest padding; resumable order from the shared stream."""
    from swin_jax import data

    (tmp_path / "coco").mkdir()
    make_folder(tmp_path / "coco")
    config = train_config(tmp_path, data_dir=str(tmp_path / "coco"), train_split="val", eval_split="val")
    config.input.batch_size = 2
    batch = next(iter(data.detection_train_input(config.input, seed=0).dataset))
    batch = {k: v.numpy() for k, v in batch.items()}
    assert batch["gt_masks"].shape == (2, 8, 128, 128) and batch["image"].shape == (2, 128, 128, 3)
    for i in range(2):
        count = int(batch["gt_valid"][i].sum())
        assert count >= 1 and not batch["gt_masks"][i, count:].any()
        for box, mask in zip(batch["gt_boxes"][i, :count], batch["gt_masks"][i, :count]):
            np.testing.assert_allclose(box, tight_box(mask), atol=1.01)


def test_the_coco_config_trains_two_steps_on_mocked_tfds(tmp_path):
    """configs/detection.py as for COCO, dataset coco/2017 from TFDS (mocked): boxes only, so no mask loss;
    bbox metrics only."""
    import tensorflow_datasets as tfds

    from runs import rows
    from swin_jax.train import train_and_evaluate

    three, _ = mocked_tfds_coco(tmp_path)

    def as_dataset(*args, **kwargs):  # its three images three times: a global batch of 8
        return three(*args, **kwargs).repeat(3)

    config = train_config(tmp_path)
    config.dataset = "coco/2017"
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        train_and_evaluate(config, str(tmp_path / "work"))
    got = rows(tmp_path / "work")
    train = [r for r in got if "loss_cls" in r]
    assert [r["step"] for r in train] == [2] and "loss_mask" not in train[0]
    assert all(np.isfinite(train[0][k]) and train[0][k] > 0 for k in ("train_loss", "loss_rpn_cls", "loss_cls"))
    assert train[0]["boxes_clipped"] == 0 and train[0]["boxes_dropped"] == 0
    assert "eval_bbox_ap" in got[-1] and "eval_segm_ap" not in got[-1]


# ---------------------------------------------------------------------------------------------------
# The demo config, tiny: resume and devices

TINY = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, channels=16, fc_channels=32,
            mask_channels=8, rpn_train_nms_pre=100, rpn_train_max_per_img=50, rpn_nms_pre=100, rpn_max_per_img=50,
            rcnn_samples=16, max_per_img=10)
TINY_INPUT = dict(demo_scene_size=64, short_sides=(56, 64), pad_hw=(64, 64), eval_scale=(64, 64),
                  demo_train_scenes=32, demo_eval_scenes=8, eval_batch_size=8, preview_images=0)


def tiny_demo(**overrides):
    from configs import demo_det

    config = demo_det.get_config()
    config.model_overrides.update(TINY)
    config.input.update(TINY_INPUT)
    config.update(dict(warmup_steps=0, lr_milestones=()), **overrides)
    return config


def test_a_checkpoint_of_eight_devices_continues_on_four_with_the_same_losses_and_statistics(tmp_path):
    """The sampled RoIs, the Cascade heads' BatchNorm over the global batch, whatever the split: a state
    saved on 8 devices (one image each) restores onto 4 (two each) and continues with the losses and
    statistics of the 8 (the sampling keys come from the restored step and rng)."""
    from runs import check_continues_on_four
    from swin_jax import data

    config = tiny_demo(total_steps=4)
    config.model = "cascade_mask_rcnn_swin_tiny_patch4_window7"
    config.input.batch_size = 8
    check_continues_on_four(config, iter(data.detection_train_input(config.input, seed=0)), 10,
                            tmp_path / "checkpoints")


def test_a_run_killed_at_a_random_step_or_during_a_save_resumes_with_the_same_losses(tmp_path):
    """SIGKILL at a random step, then SIGKILL while a checkpoint is written: each time the same command
    resumes and logs bitwise the losses of an uninterrupted run (the sampling keys follow the step, the
    data order resumes)."""
    import runs

    steps = 12
    flags = ["--config", "configs/demo_det.py", f"--config.total_steps={steps}", "--config.warmup_steps=0",
             "--config.lr_milestones=()", "--config.log_every_steps=1", "--config.eval_every_steps=1000",
             "--config.checkpoint_every_steps=4", "--config.batch_size=4"]
    flags += [f"--config.model_overrides.{k}={v}" for k, v in TINY.items()]
    flags += [f"--config.input.{k}={v}" for k, v in TINY_INPUT.items()]
    runs.check_resumes([f.replace(" ", "") for f in flags], tmp_path, steps, after_step=5,
                       interruptions=("sigkill", "kill during a save"))
