"""Every sharding decision of training, in one place.

One mesh axis, 'data', over every device of every process. Batches are split over it. Parameters and
optimiser state are replicated (data parallel) or, with `config.fsdp`, each array is split over
'data' along its largest dimension that divides evenly (FSDP / ZeRO-3); XLA inserts the gathers.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA = "data"
FSDP_MIN_SIZE = 2 ** 14  # smaller arrays (norms, biases) stay replicated: splitting them saves nothing


def make_mesh(devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape, axis_size: int) -> P:
    if int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % axis_size == 0:
            return P(*([None] * dim + [DATA]))
    return P()


def state_shardings(abstract_state, mesh, fsdp: bool):
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs): the training state."""
    size = mesh.shape[DATA]

    def rule(leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, fsdp_spec(shape, size) if fsdp else P())

    return jax.tree.map(rule, abstract_state)
