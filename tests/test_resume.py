"""Exact resume after SIGTERM (preemption) and SIGKILL, through train.py in fresh processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
FLAGS = ["--config", "configs/demo.py", f"--config.total_steps={STEPS}", "--config.log_every_steps=1",
         "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=5"]


def _start(workdir):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "train.py", *FLAGS, "--workdir", str(workdir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _run(workdir, timeout=600):
    process = _start(workdir)
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def _interrupt(workdir, sig, after_step, timeout=600):
    """Start a run and send `sig` once step `after_step` is logged; returns the process's exit and output."""
    process = _start(workdir)
    deadline = time.time() + timeout
    try:
        while not any(r.get("step", 0) >= after_step and "train_loss" in r for r in _rows(workdir)):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the run did not reach the step in time"
            time.sleep(0.05)
        process.send_signal(sig)
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def _resumed_run(workdir):
    """Run the same command again; the train losses it logs (only its own rows, not the first run's),
    and its output."""
    before = len(_rows(workdir))
    out = _run(workdir)
    return {r["step"]: r["train_loss"] for r in _rows(workdir)[before:] if "train_loss" in r}, out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    _run(workdir)
    losses = {r["step"]: r["train_loss"] for r in _rows(workdir) if "train_loss" in r}
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_sigterm_saves_stops_cleanly_and_resumes_bitwise(tmp_path, reference):
    code, out, err = _interrupt(tmp_path, signal.SIGTERM, after_step=8)
    assert code == 0, err[-3000:]
    assert "stopping at step" in out
    stopped = int(out.split("stopping at step ")[1].split()[0])
    assert 8 <= stopped < STEPS
    resumed, out = _resumed_run(tmp_path)
    assert f"resumed from the checkpoint of step {stopped}" in out
    assert sorted(resumed) == list(range(stopped + 1, STEPS + 1))  # nothing before the checkpoint again
    for step in resumed:
        assert resumed[step] == reference[step], step  # bitwise: same batches, rng, state, program


def test_sigkill_resumes_from_the_last_complete_checkpoint_bitwise(tmp_path, reference):
    code, _, _ = _interrupt(tmp_path, signal.SIGKILL, after_step=13)
    assert code == -signal.SIGKILL
    resumed, out = _resumed_run(tmp_path)
    restarted = int(out.split("resumed from the checkpoint of step ")[1].split()[0])
    assert restarted in (5, 10, 15)
    assert sorted(resumed) == list(range(restarted + 1, STEPS + 1))
    for step in resumed:
        assert resumed[step] == reference[step], step
