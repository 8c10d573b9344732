"""Each process feeds its share of the demo data into one global batch; reports what it sees."""

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
mesh = jax.make_mesh((jax.device_count(),), ("data",))
batch = next(data.to_global(iter(data.train_input(config, seed=3)), NamedSharding(mesh, P("data"))))
label_sum = jax.jit(lambda y: jnp.sum(y), out_shardings=NamedSharding(mesh, P()))(batch["label"])
local = np.concatenate([np.asarray(s.data) for s in sorted(batch["label"].addressable_shards,
                                                            key=lambda s: s.index[0].start)])
print(json.dumps(dict(shape=list(batch["image"].shape), shards=len(batch["image"].addressable_shards),
                      label_sum=int(label_sum), local_labels=local.tolist())))
