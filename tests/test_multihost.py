import json
import os

import numpy as np

import multiprocess
from configs import demo
from swin_jax.train import train_and_evaluate


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["train_loss"] for r in map(json.loads, f) if "train_loss" in r}


def test_two_processes_of_four_devices_train_like_one_of_eight(tmp_path):
    """The same steps as `jax.distributed` processes on loopback (gloo collectives) and as one process:
    the same losses and the same evaluation. The launcher times out and kills stragglers."""
    steps = 4
    results = multiprocess.run("train_worker.py", 2, 4, str(tmp_path / "two"), str(steps), timeout=600)
    assert [(r["process"], r["processes"], r["devices"]) for r in results] == [(0, 2, 8), (1, 2, 8)]
    assert not os.path.exists(tmp_path / "two" / "metrics.jsonl.1")  # only process 0 writes

    config = demo.get_config()
    config.update(dict(total_steps=steps, log_every_steps=1, eval_every_steps=1000, checkpoint_every_steps=1000))
    config.input.shard = "global"
    single = train_and_evaluate(config, str(tmp_path / "one"))
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert sorted(two) == sorted(one) == list(range(1, steps + 1))
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5)
    assert results[0]["eval_examples"] == single["eval_examples"] == 360
    assert abs(results[0]["eval_top1"] - single["eval_top1"]) <= 1 / 360
