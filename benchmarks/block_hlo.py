"""What XLA makes of one shifted Swin block: the kernels of its compiled forward (and backward) pass and
the memory each one moves, so that a missing fusion around attention shows up as a line.

  python benchmarks/block_hlo.py                                   # Swin-T stage 1 block, batch 8, float32
  python benchmarks/block_hlo.py --dtype bfloat16 --batch 128 --train --attention-impl cudnn   # on a GPU

Each line is one top-level instruction of the optimised HLO's entry computation (a fusion, a library
call such as a matrix product or a fused attention, a copy or transpose left unfused), with the bytes of
its operands and result. The roll + window partition before attention and the reverse + roll + residual
add after it each cost one pass over the block's activations when XLA fuses them; every extra
full-size copy or transpose in the list is a pass that a layout change or a fusion could remove.
"""

from __future__ import annotations

import argparse
import collections
import re

import numpy as np

_SHAPE = re.compile(r"\b(pred|s8|s16|s32|s64|u8|u32|bf16|f16|f32|f64)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "f64": 8}


def shape_bytes(text: str) -> int:
    return sum(_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
               for t, dims in _SHAPE.findall(text))


def entry_instructions(hlo: str) -> list[tuple[str, str, int]]:
    """(name, kind, bytes of result + operands) of every instruction of the ENTRY computation that does work."""
    body = hlo[hlo.index("ENTRY"):]
    body = body[body.index("{") + 1:body.index("\n}")]
    sizes, out = {}, []
    for line in body.strip().splitlines():
        line = line.strip().removeprefix("ROOT ")
        if " = " not in line:
            continue
        name, rhs = line.split(" = ", 1)
        result = rhs.split(") ")[0] if rhs.startswith("(") else rhs.split(" ", 1)[0]  # a tuple or one shape
        sizes[name] = shape_bytes(result)
        op = re.search(r"\s([a-z\-]+)\(", " " + rhs)
        kind = op.group(1) if op else "?"
        if kind in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
            continue
        if kind == "fusion":
            kind = "fusion:" + (re.search(r"kind=(k\w+)", rhs).group(1) if "kind=" in rhs else "?")
        if kind == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rhs)
            kind = "custom-call:" + (target.group(1) if target else "?")
        call = rhs[rhs.index("(", rhs.index(op.group(1)) if op else 0) + 1:]
        operands = re.findall(r"%[\w.\-]+", call.split(")")[0])
        out.append((name, kind, sizes[name] + sum(sizes.get(o, 0) for o in operands)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=56, help="the block's map is resolution x resolution")
    parser.add_argument("--window", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention-impl", default="auto")
    parser.add_argument("--train", action="store_true", help="forward and backward (the gradient of a sum)")
    parser.add_argument("--dump", default="", help="write the optimised HLO text here")
    args = parser.parse_args()

    import functools

    import jax
    import jax.numpy as jnp

    from swin_jax.models.swin import SwinBlock, WindowAttention

    attention = functools.partial(WindowAttention, implementation=args.attention_impl, dtype=jnp.dtype(args.dtype))
    block = SwinBlock(dim=args.dim, num_heads=args.heads, window_size=args.window, attention=attention,
                      shift_size=args.window // 2, dtype=jnp.dtype(args.dtype))
    x = jax.random.normal(jax.random.key(0), (args.batch, args.resolution, args.resolution, args.dim))
    x = x.astype(args.dtype)
    params = block.init(jax.random.key(1), x)

    def forward(p, x):
        return block.apply(p, x)

    fn = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x).astype(jnp.float32)), argnums=(0, 1))
                 if args.train else forward)
    hlo = fn.lower(params, x).compile().as_text()
    if args.dump:
        with open(args.dump, "w") as f:
            f.write(hlo)
    instructions = entry_instructions(hlo)
    activation = x.size * x.dtype.itemsize
    print(f"{jax.devices()[0].device_kind} | block dim {args.dim}, {args.heads} heads, {args.resolution}^2 map, "
          f"window {args.window}, batch {args.batch}, {args.dtype}, attention_impl={args.attention_impl}, "
          f"{'forward + backward' if args.train else 'forward'}")
    print(f"one activation (B, H, W, C) is {activation / 2 ** 20:.1f} MiB; bytes below are operands + result\n")
    for name, kind, nbytes in instructions:
        print(f"  {kind:<32} {nbytes / 2 ** 20:>9.1f} MiB  {nbytes / activation:>5.1f} activations  {name}")
    kinds = collections.Counter(kind.split(":")[0] for _, kind, _ in instructions)
    total = sum(n for *_, n in instructions)
    print(f"\n{len(instructions)} kernels ({', '.join(f'{v} {k}' for k, v in kinds.most_common())}); "
          f"{total / activation:.1f} activations of memory traffic in all")
    unfused = [(k, n) for _, k, n in instructions if k in ("copy", "transpose") and n >= activation]
    print(f"full-size copies or transposes outside fusions: {len(unfused)}")


if __name__ == "__main__":
    main()
