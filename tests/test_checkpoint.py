import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_skips_a_damaged_step_and_repeats_the_same_losses(tmp_path, caplog, capsys):
    workdir = str(tmp_path / "run")
    train_and_evaluate(_config(), workdir)
    first = {r["step"]: r["train_loss"] for r in _rows(workdir) if "train_loss" in r}
    assert sorted(first) == [1, 2, 3, 4, 5, 6]
    logged = len(_rows(workdir))
    # Damage every file of the newest step, as a crash in the middle of writing it would.
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "6")):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(f.name) // 3))
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        train_and_evaluate(_config(), workdir)
    assert any("skipping checkpoint step 6" in r.getMessage() for r in caplog.records)
    assert "resumed from the checkpoint of step 3 in" in capsys.readouterr().out
    # The second run logged steps 4 to 6 only, recomputed from the step-3 checkpoint with the same
    # batches, rng and state; nothing before the checkpoint it resumed from.
    again = [r for r in _rows(workdir)[logged:] if "train_loss" in r]
    assert [r["step"] for r in again] == [4, 5, 6]
    for row in again:
        assert row["train_loss"] == first[row["step"]], row["step"]


def test_a_finished_workdir_reports_its_evaluation_and_logs_nothing_twice(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    done = train_and_evaluate(_config(total_steps=3), workdir)
    rows = _rows(workdir)
    capsys.readouterr()
    again = train_and_evaluate(_config(total_steps=3), workdir)
    out = capsys.readouterr().out
    assert "already holds the final checkpoint (step 3 of 3)" in out and f"top-1 {done['eval_top1']:.4f}" in out
    assert again == done and _rows(workdir) == rows


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

    # A state after real steps: Adam's moments and the step count are not their initial zeros.
    mesh = sharding.make_mesh(jax.devices()[:source[0]])
    config.fsdp = source[1]
    with jax.set_mesh(mesh):
        saved, _, train_step = build_training(config, model, lr, mesh, 10)
        for seed in range(2):
            rng = np.random.RandomState(seed)
            batch = {"image": rng.randint(0, 256, (64, 32, 32, 3)).astype(np.uint8),
                     "label": rng.randint(0, 10, (64,)).astype(np.int32)}
            saved, _ = train_step(saved, jax.device_put(batch, sharding.batch_sharding(mesh)))
    mu = optax.tree_utils.tree_get(saved.opt_state, "mu")
    assert int(saved.step) == 2 and all(float(jnp.abs(m).max()) > 0 for m in jax.tree.leaves(mu))
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
