"""Each process feeds its share of the demo data into global batches (the first STEPS of the stream, across
an epoch boundary); reports what it sees of each."""

import json

from common import initialize

initialize()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from swin_jax import data  # noqa: E402

config = data.default_config()
config.update(dict(dataset="demo", image_size=32, batch_size=32, shuffle_buffer=512))  # as test_pipeline._demo
STEPS = 46  # the demo's epoch is 44 steps of 32
mesh = jax.make_mesh((jax.device_count(),), ("data",))
sharding = NamedSharding(mesh, P("data"))
total = jax.jit(lambda y: jnp.sum(y), out_shardings=NamedSharding(mesh, P()))
steps = []
for step, batch in zip(range(STEPS), data.to_global(iter(data.train_input(config, seed=3)), sharding)):
    local = np.concatenate([np.asarray(s.data) for s in sorted(batch["label"].addressable_shards,
                                                                key=lambda s: s.index[0].start)])
    steps.append(dict(shape=list(batch["image"].shape), shards=len(batch["image"].addressable_shards),
                      label_sum=int(total(batch["label"])), local_labels=local.tolist()))
print(json.dumps(steps))
