"""What each hand-written helper of swin_jax/models/layers.py buys: the shipped train step against the same
step with that helper replaced by the plain JAX / Flax version it stands in for.

  python benchmarks/layer_numerics.py                       # Swin-T, batch 8, float32, on this machine
  python benchmarks/layer_numerics.py --model base --batch 8 --rounds 5

Variants: `layer_norm` (custom VJP -> the formula differentiated by JAX), `gelu` (custom JVP ->
jax.nn.gelu(approximate=False)), `softmax` (custom JVP -> jax.nn.softmax under JAX's default rule),
`dense_2d` (the 2-D view -> flax.linen.Dense on N-D activations). Every variant is compiled first, then
all are timed in alternating rounds; the table gives images/s (median round), the ratio to the shipped
step and the compiled step's temporary memory (XLA's memory analysis).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_speed import MODELS, shipped_train_step  # noqa: E402

from swin_jax.models import layers  # noqa: E402


def _plain_layer_norm(x, scale, bias, eps):
    centred, _, rstd = layers._statistics(x, eps)
    return centred * (rstd * scale.astype(np.float32)) + bias.astype(np.float32)


class _PlainDense(nn.Dense):
    pass


PLAIN = {
    "layer_norm": ("normalize_layer", _plain_layer_norm),
    "gelu": ("gelu", lambda x: jax.nn.gelu(x, approximate=False)),
    "softmax": ("softmax", lambda x: jax.nn.softmax(x, axis=-1)),
    "dense_2d": ("Dense", _PlainDense),
}


@contextlib.contextmanager
def replaced(variant: str):
    if variant == "shipped":
        yield
        return
    name, plain = PLAIN[variant]
    original = getattr(layers, name)
    setattr(layers, name, plain)
    try:
        yield
    finally:
        setattr(layers, name, original)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["shipped", *PLAIN], choices=["shipped", *PLAIN])
    args = parser.parse_args()

    cases = {}
    for variant in args.variants:
        with replaced(variant):
            fn, fn_args, _ = shipped_train_step(MODELS[args.model], args.dtype, args.batch, False, False)
            start = time.perf_counter()
            compiled = fn.lower(*fn_args).compile()
            compile_s = time.perf_counter() - start
        temp = compiled.memory_analysis().temp_size_in_bytes / 2 ** 20

        def run(compiled=compiled, fn_args=fn_args):
            fn_args[0], metrics = compiled(*fn_args)
            metrics["train_loss"].block_until_ready()

        run()
        cases[variant] = dict(run=run, compile_s=compile_s, temp_mib=temp, times=[])
        print(f"compiled {variant} in {compile_s:.0f} s", flush=True)

    for _ in range(args.rounds):
        for case in cases.values():
            start = time.perf_counter()
            for _ in range(args.iters):
                case["run"]()
            case["times"].append((time.perf_counter() - start) / args.iters)

    base = args.batch / statistics.median(cases[args.variants[0]]["times"])
    print(f"{MODELS[args.model]}, batch {args.batch}, {args.dtype}, {jax.devices()[0].device_kind}")
    print(f"{'variant':<12} {'img/s':>7} {'vs shipped':>10} {'temp MiB':>9} {'compile s':>9}")
    for variant, case in cases.items():
        rate = args.batch / statistics.median(case["times"])
        print(f"{variant:<12} {rate:>7.2f} {rate / base:>9.2f}x {case['temp_mib']:>9.0f} {case['compile_s']:>9.0f}")


if __name__ == "__main__":
    main()
