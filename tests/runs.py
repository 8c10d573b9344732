"""train.py in fresh processes, as a user runs it: start, read metrics.jsonl, interrupt with a signal,
run the same command again. The SIGTERM-and-resume check every task's tests share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(flags, workdir) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "train.py", *flags, "--workdir", str(workdir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(workdir) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def losses(workdir, since: int = 0) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in rows(workdir)[since:] if "train_loss" in r}


def run(flags, workdir, timeout=600) -> str:
    process = start(flags, workdir)
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def interrupt(flags, workdir, sig, after_step, timeout=600):
    """Start a run and send `sig` once step `after_step` is logged (or call `sig(process)`); returns the
    process's exit and output."""
    process = start(flags, workdir)
    deadline = time.time() + timeout
    try:
        while not any(r.get("step", 0) >= after_step and "train_loss" in r for r in rows(workdir)):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the run did not reach the step in time"
            time.sleep(0.05)
        sig(process) if callable(sig) else process.send_signal(sig)
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def resumed_run(flags, workdir):
    """Run the same command again: the train losses it logs (its own rows only) and its output."""
    before = len(rows(workdir))
    out = run(flags, workdir)
    return losses(workdir, before), out


def check_sigterm_resume(flags, root, steps: int, after_step: int, reference: dict | None = None) -> dict:
    """SIGTERM after `after_step`: the run saves and exits 0; the same command resumes from that step and
    logs, bitwise, the losses of an uninterrupted run (`reference`, or one made here). Returns the
    reference losses."""
    if reference is None:
        run(flags, os.path.join(root, "reference"))
        reference = losses(os.path.join(root, "reference"))
    assert sorted(reference) == list(range(1, steps + 1))
    workdir = os.path.join(root, "interrupted")
    code, out, err = interrupt(flags, workdir, signal.SIGTERM, after_step)
    assert code == 0 and "stopping at step" in out, err[-3000:]
    stopped = int(out.split("stopping at step ")[1].split()[0])
    assert after_step <= stopped < steps
    resumed, out = resumed_run(flags, workdir)
    assert f"resumed from the checkpoint of step {stopped}" in out
    assert sorted(resumed) == list(range(stopped + 1, steps + 1))  # nothing before the checkpoint again
    assert resumed == {s: reference[s] for s in resumed}  # bitwise: same batches, rng, state, program
    return reference


def train_losses(config, devices, batches, num_classes: int, steps: int = 3, steps_per_epoch: int = 4):
    """In this process: the train losses of the first `steps` steps of `batches` (an iterator of host
    batches) on a mesh of `devices`, and the model state (BatchNorm statistics) after them."""
    import jax

    from swin_jax.train import optim, sharding
    from swin_jax.train.loop import build_model, build_training

    mesh = sharding.make_mesh(devices)
    model = build_model(config, num_classes)
    lr = optim.schedule(config, config.total_steps, steps_per_epoch)
    out = []
    with jax.set_mesh(mesh):
        state, _, train_step = build_training(config, model, lr, mesh, num_classes)
        for _ in range(steps):
            state, metrics = train_step(state, jax.device_put(next(batches), sharding.batch_sharding(mesh)))
            out.append(float(metrics["train_loss"]))
        return out, jax.device_get(state.model_state)
