import json
import logging
import os

import jax
import numpy as np
import pytest

from configs import demo
from swin_jax import checkpoint
from swin_jax.checkpoint import CheckpointError, TrainCheckpoints
from swin_jax.train import optim, sharding, train_and_evaluate
from swin_jax.train.loop import build_model, build_training


def _config(**overrides):
    config = demo.get_config()
    config.update(dict(total_steps=6, log_every_steps=1, eval_every_steps=100, checkpoint_every_steps=3), **overrides)
    return config


def _losses(workdir):
    """train_loss per step; a step logged twice (before and after a restart) keeps its last value."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_resume_skips_a_damaged_step_and_repeats_the_same_losses(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    train_and_evaluate(_config(), workdir)
    first = _losses(workdir)
    assert sorted(first) == [1, 2, 3, 4, 5, 6]
    # Damage every file of the newest step, as a crash in the middle of writing it would.
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "6")):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(f.name) // 3))
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        train_and_evaluate(_config(), workdir)
    assert any("skipping checkpoint step 6" in r.getMessage() for r in caplog.records)
    again = _losses(workdir)
    for step in (4, 5, 6):  # recomputed from the step-3 checkpoint: the same batches, rng and state
        assert again[step] == first[step], step


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    workdir = str(tmp_path / "run")
    train_and_evaluate(_config(total_steps=3), workdir)
    other = _config(total_steps=6)
    other.model_overrides.embed_dim = 96
    with pytest.raises(CheckpointError, match=r"another model(.|\n)*shape mismatch(.|\n)*params/head/kernel: saved \(192, 10\), model \(384, 10\)"):
        train_and_evaluate(other, workdir)


@pytest.mark.parametrize("source, target", [((8, True), (2, False)), ((1, False), (8, True))],
                         ids=["8-fsdp-to-2-data-parallel", "1-device-to-8-fsdp"])
def test_restore_onto_another_topology(tmp_path, source, target):
    config = _config()
    config.model_overrides.embed_dim = 96  # big enough that FSDP splits arrays
    model = build_model(config, 10)
    lr = optim.schedule(config, 6, 22)

    def state_on(devices, fsdp):
        config.fsdp = fsdp
        mesh = sharding.make_mesh(jax.devices()[:devices])
        with jax.set_mesh(mesh):
            return build_training(config, model, lr, mesh, 10)[:2]

    saved, _ = state_on(*source)
    saved = saved.replace(params=jax.tree.map(lambda p: p + 0.5, saved.params))
    manager = TrainCheckpoints(tmp_path / "checkpoints")
    manager.save(7, saved)
    manager.wait()
    fresh, target_sharding = state_on(*target)
    step, restored = manager.restore_latest(jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), fresh, target_sharding))
    manager.close()
    assert step == 7
    for a, b, s in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), jax.tree.leaves(target_sharding)):
        assert a.sharding == s
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
