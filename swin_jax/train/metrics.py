"""Where training numbers go: workdir/metrics.jsonl, TensorBoard event files and a progress line.
Only process 0 writes; the others stay quiet."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _drop_partial_row(path: str) -> None:
    """A run killed while writing a row leaves it without its newline: cut it off, so the resumed run
    starts on a clean line instead of appending to the fragment."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        end = pos = f.seek(0, os.SEEK_END)
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                if start + cut + 1 < end:
                    f.truncate(start + cut + 1)
                return
            pos = start
        f.truncate(0)


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, *, start_step: int = 0):
        self.active = jax.process_index() == 0
        self.total_steps = total_steps
        self.start_step, self.start_time = start_step, time.time()
        self.tty = sys.stdout.isatty()
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            _drop_partial_row(path)
            self.jsonl = open(path, "a")
            from swin_jax.data.host import tf

            self.tensorboard = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def restart_clock(self, step: int) -> None:
        """Measure speed and ETA from now on, at `step` (after compilation)."""
        self.start_step, self.start_time = step, time.time()

    def write(self, step: int, values: dict) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        from swin_jax.data.host import tf

        with self.tensorboard.as_default(step=int(step)):
            for key, value in values.items():
                if math.isfinite(float(value)):
                    tf.summary.scalar(key, float(value))
        self.tensorboard.flush()

    def images(self, step: int, name: str, images) -> None:
        """uint8 images (N, H, W, 3) under `name` in TensorBoard's Images tab."""
        if not self.active:
            return
        from swin_jax.data.host import tf

        with self.tensorboard.as_default(step=int(step)):
            tf.summary.image(name, images, max_outputs=len(images))
        self.tensorboard.flush()

    def progress(self, step: int, values: dict) -> None:
        """One line: step, loss, images/s and the time left at the pace since start (or resume)."""
        if not self.active:
            return
        done = step - self.start_step
        elapsed = time.time() - self.start_time
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        shown = " | ".join(f"{k} {v:.4g}" for k, v in values.items())
        width = len(str(self.total_steps))
        line = f"step {step:{width}d}/{self.total_steps} | {shown} | elapsed {_duration(elapsed)} | ETA {_duration(eta)}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def message(self, text: str) -> None:
        if self.active:
            print(("\n" if self.tty else "") + text, flush=True)

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tensorboard.close()
