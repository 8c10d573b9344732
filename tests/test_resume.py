"""Exact resume after SIGTERM (preemption), SIGKILL and a failed checkpoint write, through train.py in
fresh processes."""

import resource

import pytest

import runs

STEPS = 24
FLAGS = ["--config", "configs/demo.py", f"--config.total_steps={STEPS}", "--config.log_every_steps=1",
         "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, which also shows that train.py's own first line is the first line printed:
    TensorFlow's and absl's start-up notices are kept out."""
    workdir = tmp_path_factory.mktemp("reference")
    process = runs.start(FLAGS, workdir, merge_stderr=True)
    out = process.communicate(timeout=600)[0]
    assert process.returncode == 0, out[-3000:]
    assert out.startswith("model: swin_tiny_patch4_window7_224 with "), out[:2000]
    return runs.losses(workdir)


def test_sigterm_sigkill_and_a_kill_during_a_save_each_resume_bitwise(tmp_path, reference):
    runs.check_resumes(FLAGS, tmp_path, STEPS, after_step=8, reference=reference)


def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_loses_nothing(tmp_path, reference):
    """A full disk, simulated by limiting the run's file size to 1 MB after step 7 (the checkpoint files
    are larger): the write of step 10 fails, the run stops with an error naming the step and the
    directory, step 5 stays complete, and the same command resumes from it."""
    def fill_the_disk(process):
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    code, _, err = runs.interrupt(FLAGS, tmp_path, fill_the_disk, after_step=7)
    assert code == 1, err[-3000:]
    lines = err.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("error: "))  # orbax's own noise around it
    message = lines[at:at + 2]
    assert message[0].startswith(f"error: could not write the checkpoint of step 10 in {tmp_path / 'checkpoints'}: ")
    assert "File too large" in message[0]
    assert message[1] == ("The run stops: the complete checkpoints (step 5) are kept; fix the disk and run the same "
                          "command to resume from step 5.")
    assert max(runs.losses(tmp_path)) <= 15  # stopped once the write failed, at the next save at the latest
    resumed, out = runs.resumed_run(FLAGS, tmp_path)
    assert "resumed from the checkpoint of step 5" in out
    assert resumed == {s: reference[s] for s in range(6, STEPS + 1)}
