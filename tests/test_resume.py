"""Exact resume after SIGTERM (preemption) and SIGKILL, through train.py in fresh processes."""

import signal

import pytest

import runs

STEPS = 24
FLAGS = ["--config", "configs/demo.py", f"--config.total_steps={STEPS}", "--config.log_every_steps=1",
         "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    runs.run(FLAGS, workdir)
    return runs.losses(workdir)


def test_sigterm_saves_stops_cleanly_and_resumes_bitwise(tmp_path, reference):
    runs.check_sigterm_resume(FLAGS, tmp_path, STEPS, after_step=8, reference=reference)


def test_sigkill_resumes_from_the_last_complete_checkpoint_bitwise(tmp_path, reference):
    code, _, _ = runs.interrupt(FLAGS, tmp_path, signal.SIGKILL, after_step=13)
    assert code == -signal.SIGKILL
    resumed, out = runs.resumed_run(FLAGS, tmp_path)
    restarted = int(out.split("resumed from the checkpoint of step ")[1].split()[0])
    assert restarted in (5, 10, 15)
    assert sorted(resumed) == list(range(restarted + 1, STEPS + 1))
    for step in resumed:
        assert resumed[step] == reference[step], step
