"""train.py in fresh processes, as a user runs it: start, read metrics.jsonl, interrupt with a signal,
run the same command again. The SIGTERM-and-resume check every task's tests share."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(flags, workdir, merge_stderr: bool = False) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    for inherited in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "SWIN_JAX_VERBOSE"):  # as a user's shell has it
        env.pop(inherited, None)
    return subprocess.Popen([sys.executable, "train.py", *flags, "--workdir", str(workdir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                            text=True)


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


def _writes_in_flight(checkpoints) -> set[tuple[str, int]]:
    """(name, inode) of each step orbax is writing: it writes STEP.orbax-checkpoint-tmp* and renames it when
    complete."""
    try:
        return {(e.name, e.inode()) for e in os.scandir(checkpoints) if "orbax-checkpoint-tmp" in e.name}
    except FileNotFoundError:
        return set()


def kill_during_save(flags, workdir, timeout=600) -> str:
    """Start a run and SIGKILL it while it writes a checkpoint: stopped the moment a new step's temporary
    directory appears, so the kill lands inside the write. Returns the name of the step left half-written."""
    checkpoints = os.path.join(workdir, "checkpoints")
    stale = _writes_in_flight(checkpoints)
    process = start(flags, workdir)
    deadline = time.time() + timeout
    try:
        while not (writing := _writes_in_flight(checkpoints) - stale):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the run wrote no checkpoint in time"
            time.sleep(0.001)
        process.send_signal(signal.SIGSTOP)
        process.kill()
        process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    name = sorted(writing)[0][0]
    assert os.path.exists(os.path.join(checkpoints, name)), "the write finished before the kill"
    return name


def _resumed_from(out: str) -> int:
    return int(out.split("resumed from the checkpoint of step ")[1].split()[0])


def check_resumes(flags, root, steps: int, after_step: int, reference: dict | None = None, seed: int = 0,
                  interruptions=("sigterm", "sigkill", "kill during a save")) -> dict:
    """One run interrupted by each of `interruptions` in turn, each followed by the same command; every leg
    must log, bitwise, the losses of an uninterrupted run (`reference`, or one made here) from its
    checkpoint on. "sigterm" after `after_step`: saves that step, exits 0. "sigkill" at a random step
    after `after_step`: resumes from the last checkpoint. "kill during a save": SIGKILL in the middle of a
    checkpoint's write, whose half-written step is never used. Returns the reference losses."""
    if reference is None:
        run(flags, os.path.join(root, "reference"))
        reference = losses(os.path.join(root, "reference"))
    assert sorted(reference) == list(range(1, steps + 1))
    workdir = os.path.join(root, "interrupted")

    def same_losses(since):
        got = losses(workdir, since)
        assert got == {s: reference[s] for s in got}  # bitwise: same batches, rng, state, program
        return got

    done = 0  # the step the last leg is known to have a checkpoint of
    for interruption in interruptions:
        before, resumed_after = len(rows(workdir)), done
        if interruption == "sigterm":
            code, out, err = interrupt(flags, workdir, signal.SIGTERM, max(after_step, done + 1))
            assert code == 0 and "stopping at step" in out, err[-3000:]
            done = int(out.split("stopping at step ")[1].split()[0])
            assert after_step <= done < steps - 2
        elif interruption == "sigkill":
            killed_at = random.Random(seed).randint(max(after_step, done + 1), steps - 2)
            code, out, err = interrupt(flags, workdir, signal.SIGKILL, killed_at)
            assert code == -signal.SIGKILL, err[-3000:]
            assert done == 0 or f"resumed from the checkpoint of step {done}" in out
        else:
            half_written = int(kill_during_save(flags, workdir).split(".")[0])
        got = same_losses(before)
        assert not got or min(got) >= resumed_after + 1  # nothing before the checkpoint again

    before = len(rows(workdir))
    resumed, out = resumed_run(flags, workdir)
    if "kill during a save" in interruptions:
        assert _resumed_from(out) < half_written
    assert sorted(resumed) == list(range(_resumed_from(out) + 1, steps + 1))
    same_losses(before)
    return reference


def check_continues_on_four(config, batches, num_classes: int, directory, saved_after: int = 2, more: int = 2,
                            steps_per_epoch: int = 4) -> None:
    """In this process: `saved_after + more` steps on 8 devices with a checkpoint after `saved_after`, and the
    same last `more` steps again from that checkpoint restored onto 4 devices, which must give the losses
    (rtol 1e-6) and the model state at the end (BatchNorm statistics: rtol 1e-6, atol 1e-7) of the 8."""
    import jax
    import numpy as np

    from swin_jax.checkpoint import TrainCheckpoints
    from swin_jax.train import optim, sharding
    from swin_jax.train.loop import build_model, build_training

    model = build_model(config, num_classes)
    lr = optim.schedule(config, config.total_steps, steps_per_epoch)
    batches = [next(batches) for _ in range(saved_after + more)]

    def train(devices, restore: bool):
        mesh = sharding.make_mesh(devices)
        with jax.set_mesh(mesh):
            state, shardings, train_step = build_training(config, model, lr, mesh, num_classes)
            checkpoints = TrainCheckpoints(directory)
            out = []
            if restore:
                target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
                step, state = checkpoints.restore_latest(target)
                assert step == saved_after
            for i, batch in enumerate(batches[saved_after if restore else 0:], saved_after if restore else 0):
                state, metrics = train_step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
                out.append(float(metrics["train_loss"]))
                if i + 1 == saved_after and not restore:
                    checkpoints.save(saved_after, state)
            checkpoints.close()
            return out, jax.device_get(state.model_state)

    eight, eight_state = train(jax.devices(), restore=False)
    four, four_state = train(jax.devices()[:4], restore=True)
    assert eight[-1] != eight[0]
    np.testing.assert_allclose(four, eight[saved_after:], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(four_state), jax.tree.leaves(eight_state)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
