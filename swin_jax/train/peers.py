"""Noticing a lost process in a multi-process run.

When one process of a job dies, the others block in their next collective: gloo, NCCL and the TPU
interconnect wait for the missing peer, and JAX's own heartbeat ends them only after a minute or two
with an abort that names nothing. Here each process posts a beat and its step to JAX's key-value
store every second; a process whose beat stays the same for `timeout_s` is lost, and every survivor
prints which one and at which step, then exits at once (the collective it waits in never returns).
The checkpoints written before are complete on disk: orbax renames a step into place only when
every process has written its part, so the relaunch resumes from the last of them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

import jax

LOST_EXIT_CODE = 75  # EX_TEMPFAIL: restarting the job resumes it
_PREFIX = "swin_jax/beat/"


def _client():
    from jax._src import distributed  # the runtime client: JAX's key-value store has no public API

    return distributed.global_state.client


class PeerWatch:
    """Beats for this process and watches every other one; in a single-process run it does nothing.
    `latest_checkpoint()` names the last complete checkpoint in the message."""

    def __init__(self, timeout_s: float, latest_checkpoint: Callable[[], str]):
        self.timeout_s = float(timeout_s)
        self.latest_checkpoint = latest_checkpoint
        self.step = 0
        self.me, self.count = jax.process_index(), jax.process_count()
        self.active = self.count > 1 and self.timeout_s > 0
        self._stop = threading.Event()
        interval = min(1.0, self.timeout_s / 5)
        # {process: (last value seen, local time it changed)}; the value holds a counter, so a beat
        # counts however the hosts' clocks differ.
        now = time.monotonic()
        self._seen = {p: ("", now) for p in range(self.count) if p != self.me}
        self._store_ok = now
        self._threads = [threading.Thread(target=self._beat, args=(interval,), daemon=True, name="peer-beat"),
                         threading.Thread(target=self._judge, args=(interval,), daemon=True, name="peer-judge")]

    def __enter__(self) -> "PeerWatch":
        if self.active:
            for thread in self._threads:
                thread.start()
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        """Beats stop. A run that ended normally tells the others not to wait for it (they may still be
        finishing); one that failed does not, so the others report it lost instead of waiting forever."""
        if not self.active:
            return
        self._stop.set()
        if error_type is None:
            try:
                _client().key_value_set(f"{_PREFIX}{self.me}", f"done {self.step}", allow_overwrite=True)
            except Exception:  # noqa: BLE001  the store may be gone with the coordinator; nothing to tell then
                pass

    def _beat(self, interval: float) -> None:
        client, beat = _client(), 0
        while not self._stop.wait(interval):
            beat += 1
            try:
                client.key_value_set(f"{_PREFIX}{self.me}", f"{beat} {self.step}", allow_overwrite=True)
                for p in self._seen:
                    try:
                        value = client.key_value_try_get(f"{_PREFIX}{p}")
                    except Exception:  # noqa: BLE001  not posted yet: still starting
                        continue
                    if value != self._seen[p][0]:
                        self._seen[p] = (value, time.monotonic())
                self._store_ok = time.monotonic()
            except Exception:  # noqa: BLE001  the store lives in process 0; the judge reports its loss
                pass

    def _judge(self, interval: float) -> None:
        while not self._stop.wait(interval):
            now = time.monotonic()
            if now - self._store_ok > self.timeout_s and self.me != 0:
                self._lost(0, "", now - self._store_ok, "the coordination service it runs does not answer")
            for p, (value, changed) in list(self._seen.items()):
                if value.startswith("done"):
                    continue
                if now - changed > self.timeout_s:
                    self._lost(p, value.split(" ")[-1] if value else "", now - changed, "no heartbeat")

    def _lost(self, process: int, step: str, silent_s: float, why: str) -> None:
        at = f"at step {step}" if step else "before its first step"
        try:
            saved = self.latest_checkpoint()
        except Exception as e:  # noqa: BLE001  the message must go out whatever the disk does
            saved = f"(the checkpoints could not be listed: {e})"
        message = (f"\nprocess {process} of {self.count} stopped answering {at} ({why} for {silent_s:.0f} s; "
                   f"config.lost_process_timeout_s={self.timeout_s:g}); process {self.me} stops at step "
                   f"{self.step}. {saved} Run the same command on every host to resume.\n")
        sys.stderr.write(message)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(LOST_EXIT_CODE)  # the main thread is blocked in a collective that will not return
