"""Run a worker script as several JAX processes on this machine (coordinator on 127.0.0.1, gloo CPU
collectives): the code path of a multi-host TPU or GPU job. Each worker prints one JSON line last."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

WORKERS = os.path.join(os.path.dirname(__file__), "workers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(worker: str, num_processes: int, devices_per_process: int, *args: str) -> list[subprocess.Popen]:
    port = free_port()
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return [subprocess.Popen([sys.executable, os.path.join(WORKERS, worker), str(i), str(num_processes), str(port),
                              *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(num_processes)]


def run(worker: str, num_processes: int, devices_per_process: int, *args: str, timeout: float = 300) -> list[dict]:
    procs = start(worker, num_processes, devices_per_process, *args)
    results = []
    try:
        for i, proc in enumerate(procs):
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise AssertionError(f"process {i} of {worker} exited with {proc.returncode}:\n{err[-4000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results
