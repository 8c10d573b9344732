"""SimMIM pre-training in the one training loop: a short demo run (loss, evaluation, TensorBoard triptych,
predict's triptych), fine-tuning a classifier from its workdir, 1 device against 8, SIGTERM and resume,
the official multistep schedule."""

import logging
import os

import jax
import numpy as np
import pytest

import runs
from configs import demo_simmim, demo_simmim_finetune, simmim_swin_b_192
from swin_jax import data
from swin_jax.train import optim, train_and_evaluate

TINY = dict(embed_dim=16, num_heads=(1, 2, 4))
TINY_FLAGS = [f"--config.model_overrides.{k}={v}" for k, v in TINY.items()]


def tiny(**overrides):
    config = demo_simmim.get_config()
    config.model_overrides.update(TINY)
    config.update(overrides)
    return config


def test_short_pretraining_reports_shows_and_fine_tunes(tmp_path, capsys, caplog):
    """The demo for 30 steps: the loss falls, evaluation writes its loss, TensorBoard gets original | masked |
    reconstruction, predict writes the same triptych; a classifier then starts from the workdir's encoder."""
    workdir = str(tmp_path / "mim")
    config = demo_simmim.get_config()
    config.update(dict(total_steps=30, eval_every_steps=30, checkpoint_every_steps=30, log_every_steps=10,
                       batch_size=32))
    results = train_and_evaluate(config, workdir)
    assert "eval reconstruction loss (masked L1)" in capsys.readouterr().out
    rows = runs.rows(workdir)
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    assert results["eval_examples"] == 360 and 0 < results["eval_loss"] < losses[0]

    from swin_jax.data.host import tf

    tags = set()
    events = os.path.join(workdir, "tensorboard")
    for name in os.listdir(events):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(events, name)):
            tags.update(v.tag for v in event.summary.value)
    assert "eval/original | masked | reconstruction" in tags and "eval_loss" in tags

    from PIL import Image

    from swin_jax.data.sources import demo_arrays
    from swin_jax.predict import main as predict_main

    images, _ = demo_arrays("test")
    Image.fromarray(images[0]).save(tmp_path / "digit.png")
    assert predict_main(["--checkpoint", workdir, str(tmp_path / "digit.png"), "--output",
                         str(tmp_path / "rec.png")]) == 0
    assert "reconstruction loss (masked L1)" in capsys.readouterr().out
    assert np.asarray(Image.open(tmp_path / "rec.png")).shape == (32, 96, 3)

    fine_tune = demo_simmim_finetune.get_config()
    fine_tune.update(dict(init_from=workdir, total_steps=4, eval_every_steps=4, log_every_steps=2))
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(fine_tune, str(tmp_path / "ft"))
    assert "is a SimMIM model: only its encoder is taken" in caplog.text
    assert [r["step"] for r in runs.rows(tmp_path / "ft") if "train_loss" in r] == [2, 4]


def test_a_checkpoint_of_eight_devices_continues_on_four_with_the_same_losses(tmp_path):
    """The masks come from the global step's key, not a device's: a state saved on 8 devices restores onto
    4 and continues with the losses of the 8."""
    config = tiny(total_steps=10)
    config.input.batch_size = 16
    runs.check_continues_on_four(config, iter(data.train_input(config.input, seed=0)), 10, tmp_path / "checkpoints",
                                 saved_after=3, more=3)


def test_sigkill_at_a_random_step_and_during_a_save_resume_with_the_uninterrupted_losses(tmp_path):
    steps = 16
    flags = ["--config", "configs/demo_simmim.py", f"--config.total_steps={steps}", "--config.log_every_steps=1",
             "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=4", "--config.input.batch_size=16",
             "--config.input.preview_images=0", *TINY_FLAGS]
    # the same masks after each restart
    runs.check_resumes(flags, tmp_path, steps, after_step=5, interruptions=("sigkill", "kill during a save"))


def test_multistep_schedule_is_the_official_one():
    """Official SimMIM Swin-B: 800 epochs, 10 of warm-up from 5e-7, 1e-4 per 512, x0.1 from epoch 700
    (lr_scheduler.py's MultiStepLRScheduler, per step, milestones in steps)."""
    config = simmim_swin_b_192.get_config()
    per_epoch = 1_281_167 // 2048
    lr = optim.schedule(config, 800 * per_epoch, per_epoch)
    scale = 2048 / 512
    warmup = 10 * per_epoch
    for step, want in ((0, 5e-7), (warmup // 2, 5e-7 + (1e-4 - 5e-7) / 2), (warmup, 1e-4), (700 * per_epoch - 1, 1e-4),
                       (700 * per_epoch, 1e-5), (800 * per_epoch, 1e-5)):
        assert float(lr(step)) == pytest.approx(want * scale, rel=1e-5), step
    config.lr_milestones = (5,)
    with pytest.raises(ValueError, match="lr_milestones=.*inside the .*warm-up"):
        optim.schedule(config, 800 * per_epoch, per_epoch)


def test_pretraining_reads_an_unlabelled_image_folder(tmp_path):
    """SimMIM needs no labels: images straight under root/train and root/val (and in any sub-folder)."""
    from PIL import Image

    from swin_jax.data.sources import demo_arrays

    images, _ = demo_arrays("test")
    for i in range(6):
        folder = tmp_path / "train" / ("" if i < 4 else "more")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    (tmp_path / "val").mkdir()
    Image.fromarray(images[9]).save(tmp_path / "val" / "x.png")
    config = demo_simmim.get_config()
    config.dataset, config.batch_size = "folder", 4
    config.input.data_dir = str(tmp_path)
    training = data.train_input(config.input, seed=0)
    assert training.num_examples == 6
    batch = next(iter(training))
    assert batch["image"].shape == (4, 32, 32, 3) and (batch["label"] == 0).all()
    assert data.eval_input(config.input).num_examples == 1
