import json
import os
import re
import time

import numpy as np

import multiprocess
import runs
from configs import demo
from swin_jax.train import peers, train_and_evaluate


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["train_loss"] for r in map(json.loads, f) if "train_loss" in r}


def test_a_lost_process_is_named_within_seconds_and_the_relaunch_trains_like_one_process(tmp_path):
    """Two `jax.distributed` processes of four devices on loopback (gloo collectives), checkpoints every 3
    steps. Process 1 is SIGKILLed after step 7: process 0, blocked in the next collective, names it
    within config.lost_process_timeout_s (10 s here) and exits. The same command resumes from the last
    complete checkpoint and logs the same losses as before the kill, bitwise; the whole run has the
    losses and evaluation of one process of eight devices."""
    steps, workdir = 10, tmp_path / "two"
    procs = multiprocess.start("train_worker.py", 2, 4, str(workdir), str(steps), "3")
    try:
        deadline = time.time() + 600
        while max(runs.losses(workdir), default=0) < 7:
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
            assert time.time() < deadline, "the run did not reach step 7 in time"
            time.sleep(0.05)
        procs[1].kill()
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        noticed = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == peers.LOST_EXIT_CODE, err[-3000:]
    assert noticed < 30, noticed
    lost = re.search(r"process 1 of 2 stopped answering at step (\d+) .* process 0 stops at step (\d+)\. "
                     r"The last complete checkpoint is step (\d+) in (\S+)\.", err)
    assert lost, err[-3000:]
    assert int(lost[1]) >= 7 and int(lost[3]) in (3, 6) and lost[4] == str(workdir / "checkpoints")
    saved = int(lost[3])
    before = runs.losses(workdir)
    logged = len(runs.rows(workdir))

    results = multiprocess.run("train_worker.py", 2, 4, str(workdir), str(steps), "3", timeout=600)
    assert [(r["process"], r["processes"], r["devices"]) for r in results] == [(0, 2, 8), (1, 2, 8)]
    assert not os.path.exists(workdir / "metrics.jsonl.1")  # only process 0 writes
    resumed = runs.losses(workdir, since=logged)
    assert sorted(resumed) == list(range(saved + 1, steps + 1))  # from the checkpoint, nothing before it
    assert {s: resumed[s] for s in before if s > saved} == {s: before[s] for s in before if s > saved}

    config = demo.get_config()
    config.update(dict(total_steps=steps, log_every_steps=1, eval_every_steps=1000, checkpoint_every_steps=1000))
    config.input.shard = "global"
    single = train_and_evaluate(config, str(tmp_path / "one"))
    two = {**before, **resumed}
    one = _losses(tmp_path / "one")
    assert sorted(two) == sorted(one) == list(range(1, steps + 1))
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5)
    assert results[0]["eval_examples"] == single["eval_examples"] == 360
    assert abs(results[0]["eval_top1"] - single["eval_top1"]) <= 1 / 360
