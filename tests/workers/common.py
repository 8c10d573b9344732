"""Start-up shared by the multi-process workers: argv is PROCESS_ID NUM_PROCESSES PORT [ARGS...]."""

import sys

import torchvision  # noqa: F401  # before TensorFlow, whose native libraries clash when loaded first
import jax


def initialize() -> list[str]:
    process_id, num_processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
    return sys.argv[4:]
