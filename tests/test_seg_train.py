"""Segmentation in the one training loop: the demo end to end (metrics, per-class IoU, TensorBoard
images, predict from the workdir), 1 device against 8, the ADE20K config on mocked scene_parse150,
SIGTERM and resume."""

import os

import jax
import numpy as np
import pytest

from configs import demo, demo_seg, upernet_swin_t_ade20k
from swin_jax import data
from swin_jax.train import train_and_evaluate
import runs

TINY = dict(embed_dim=16, num_heads=(1, 2, 2), channels=16, auxiliary_channels=8)
TINY_FLAGS = [f"--config.model_overrides.{k}={v}" for k, v in TINY.items()] + [
    "--config.input.demo_train_scenes=64", "--config.input.demo_eval_scenes=10", "--config.input.eval_batch_size=10"]


def tiny_demo(**overrides):
    config = demo_seg.get_config()
    config.model_overrides.update(TINY)
    config.input.update(dict(demo_train_scenes=64, demo_eval_scenes=16, eval_batch_size=8))
    config.update(overrides)
    return config


def test_short_demo_learns_and_reports(tmp_path, capsys, caplog):
    """The demo's two commands, short: the classification pre-training on scene-style digits, then the
    segmenter with its backbone from that workdir. The loss falls, evaluation writes mIoU, mAcc, aAcc and
    per-class IoU rows, prints the table, puts image | truth | prediction into TensorBoard; predict reads
    the workdir. (Telling the digits apart takes the full run: docs/segmentation.md#the-demo.)"""
    pretrained = str(tmp_path / "demo_scene")
    pre = demo.get_config("scene")
    pre.update(dict(total_steps=4, eval_every_steps=4, checkpoint_every_steps=4, log_every_steps=2))
    train_and_evaluate(pre, pretrained)
    workdir = str(tmp_path / "seg")
    config = demo_seg.get_config()
    config.input.update(dict(demo_train_scenes=200, demo_eval_scenes=40))
    config.update(dict(total_steps=40, warmup_steps=10, eval_every_steps=40, checkpoint_every_steps=40,
                       log_every_steps=10, init_from=pretrained))
    with caplog.at_level("WARNING"):
        results = train_and_evaluate(config, workdir)
    assert f"{pretrained}: the backbone comes from it" in caplog.text  # the two configs' backbones fit
    out = capsys.readouterr().out
    rows = runs.rows(workdir)
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert losses[-1] < 0.93 * losses[0]
    assert {"decode_loss", "auxiliary_loss"} <= set(rows[0])
    evals = [r for r in rows if "eval_miou" in r]
    assert len(evals) == 1 and evals[0]["eval_batch_shapes"] == 1  # one padded shape: one compilation
    assert {"eval_macc", "eval_aacc", "eval_iou/background", "eval_iou/7", "eval_acc/7"} <= set(evals[0])
    assert results["eval_miou"] == evals[0]["eval_miou"] and results["eval_iou/background"] > 0.85
    # mAcc over the 11 classes that occur; aAcc is the labelled pixels' accuracy, at least background's share
    assert 1 / 11 - 1e-6 <= results["eval_macc"] <= 1 and results["eval_aacc"] > 0.85
    assert "class         IoU    Acc" in out and "\n  background " in out
    from swin_jax.data.host import tf

    tags = set()
    events = os.path.join(workdir, "tensorboard")
    for name in os.listdir(events):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(events, name)):
            tags |= {v.tag for v in event.summary.value}
    assert "eval/image | ground truth | prediction" in tags and "eval_miou" in tags

    from PIL import Image
    from swin_jax.data import scenes
    from swin_jax.predict import main as predict_main

    images, labels = scenes.scene_arrays("test", 1)
    Image.fromarray(images[0]).save(tmp_path / "scene.png")
    assert predict_main(["--checkpoint", workdir, str(tmp_path / "scene.png"), "--output", str(tmp_path / "m.png")]) == 0
    printed = capsys.readouterr().out
    assert "background" in printed and "%" in printed
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == (96, 96, 3) and os.path.exists(tmp_path / "m_overlay.png")


def test_a_checkpoint_of_eight_devices_continues_on_four_with_the_same_losses_and_statistics(tmp_path):
    """BatchNorm statistics over the global batch (as SyncBN), whatever the split: a state saved on 8
    devices (one scene each) restores onto 4 (two each) and continues with the losses and running
    statistics of the 8."""
    config = tiny_demo(total_steps=10, warmup_steps=0)
    config.input.batch_size = 8
    runs.check_continues_on_four(config, iter(data.segmentation_train_input(config.input, seed=0)), 11,
                                 tmp_path / "checkpoints")


def test_ade20k_config_runs_two_steps_on_mock_scene_parse150(tmp_path):
    """configs/upernet_swin_t_ade20k.py as shipped (Swin-T, the heads, the recipe), two steps on TFDS's
    mocked scene_parse150 with small crops, then an evaluation; no download, no checkpoint to start from."""
    import tensorflow_datasets as tfds

    config = upernet_swin_t_ade20k.get_config()
    config.update(dict(dataset="scene_parse150", init_from="", total_steps=2, batch_size=8, log_every_steps=1,
                       eval_every_steps=2, checkpoint_every_steps=2))
    config.input.update(dict(crop_size=(64, 64), scale=(128, 64), eval_scale=(128, 64), eval_batch_size=8,
                             eval_pad_multiple=64, preview_images=0))  # previews: another Swin-T compilation
    with tfds.testing.mock_data(num_examples=8, max_value=150):  # class values 0..150, as ADE20K's
        results = train_and_evaluate(config, str(tmp_path / "ade"))
    rows = runs.rows(tmp_path / "ade")
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2]
    assert rows[0]["lr"] == pytest.approx(6e-5 * 1e-6 * 8 / 16, rel=1e-3)  # warm-up from ratio 1e-6, per 16
    assert np.isfinite(results["eval_aacc"]) and "eval_iou/wall" in results


def test_sigkill_at_a_random_step_and_during_a_save_resume_with_the_uninterrupted_losses(tmp_path):
    steps = 16
    flags = ["--config", "configs/demo_seg.py", f"--config.total_steps={steps}", "--config.log_every_steps=1",
             "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=4", "--config.input.batch_size=4",
             "--config.input.preview_images=0", *TINY_FLAGS]
    # SIGTERM is the classification tests' (tests/test_resume.py): the same save and restore.
    runs.check_resumes(flags, tmp_path, steps, after_step=5, interruptions=("sigkill", "kill during a save"))
