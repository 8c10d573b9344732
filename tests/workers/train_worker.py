"""One process of a multi-process demo training run: argv PROCESS_ID NUM_PROCESSES PORT WORKDIR STEPS
[CHECKPOINT_EVERY]. train_and_evaluate joins the others through the JAX_* variables, as on a GPU
cluster."""

import json
import os
import sys

import torchvision  # noqa: F401  # before TensorFlow, whose native libraries clash when loaded first

process_id, num_processes, port, workdir, steps = sys.argv[1:6]
checkpoint_every = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=num_processes,
                  JAX_PROCESS_ID=process_id)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

from configs import demo  # noqa: E402
from swin_jax.train import train_and_evaluate  # noqa: E402

config = demo.get_config()
config.update(dict(total_steps=int(steps), log_every_steps=1, eval_every_steps=1000,
                   checkpoint_every_steps=checkpoint_every, lost_process_timeout_s=10.0))
config.input.shard = "global"
results = train_and_evaluate(config, workdir)
print(json.dumps(dict(process=jax.process_index(), processes=jax.process_count(), devices=jax.device_count(),
                      eval_top1=results["eval_top1"], eval_examples=results["eval_examples"])))
