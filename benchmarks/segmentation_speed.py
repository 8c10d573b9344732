"""swin_jax's UPerNet against Hugging Face's UperNetForSemanticSegmentation (the port of mmseg's) on
this machine: inference and a train step, side by side in one process, in alternating rounds.

  python benchmarks/segmentation_speed.py                       # Swin-T UPerNet, 512x512, batch 2, fp32
  python benchmarks/segmentation_speed.py --size 256 --batch 2 --rounds 5
  python benchmarks/segmentation_speed.py --parts                # where the time goes, part by part

The train step on both sides: forward in training mode (BatchNorm on batch statistics, dropout, drop
path 0.3), cross entropy with ignore index 255 on the main logits plus 0.4 times the auxiliary one,
backward, AdamW (lr 6e-5, weight decay 0.01). HF's model has no dropout; otherwise both compute the same
function. The table shows images/s of the median round and the ratio swin_jax / Hugging Face.

`--parts` times each part alone on both sides, with the shapes it has in the model: the backbone, the
three heads' stages (pyramid pooling and laterals, the 3x3 FPN convolutions, the fusion of the four
levels, the auxiliary head) and the logits' resizing to the input, forward in evaluation mode and
forward + backward in training mode (the gradient with respect to the part's inputs and parameters).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np


def our_model(size: int, conv_impl: str):
    """swin_jax's UPerNet Swin-T (150 classes) and its initial variables."""
    import jax
    import jax.numpy as jnp

    import swin_jax

    model = swin_jax.create_model("upernet_swin_tiny", conv_impl=conv_impl)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))


def huggingface_model():
    """Hugging Face's UperNet with the Swin-T backbone of the official ADE20K config, random weights."""
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = SwinConfig(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"], hidden_act="gelu",
                          layer_norm_eps=1e-5)
    return UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=150, loss_ignore_index=255))


def build_ours(size: int, batch: int, conv_impl: str = "auto"):
    import jax
    import jax.numpy as jnp
    import optax

    model, variables = our_model(size, conv_impl)
    optimizer = optax.adamw(6e-5, weight_decay=0.01)
    state = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))

    def cross_entropy(logits, labels):
        valid = labels != 255
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
        return jnp.sum(losses * valid) / jnp.maximum(jnp.sum(valid), 1)

    @jax.jit
    def train_step(state, images, labels, rng):
        params, stats, opt_state = state

        def loss_fn(params):
            (main, aux), new = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                                           mutable=["batch_stats"], rngs={"dropout": rng})
            return cross_entropy(main, labels) + 0.4 * cross_entropy(aux, labels), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    infer = jax.jit(lambda v, x: model.apply(v, x))
    rng = np.random.RandomState(0)
    images = jnp.asarray(rng.randn(batch, size, size, 3).astype(np.float32))
    labels = jnp.asarray(rng.randint(0, 150, (batch, size, size)).astype(np.int32))
    holder = {"state": state}

    def train():
        holder["state"], loss = train_step(holder["state"], images, labels, jax.random.key(1))
        loss.block_until_ready()

    def inference():
        infer({"params": holder["state"][0], "batch_stats": holder["state"][1]}, images).block_until_ready()

    return train, inference


def build_huggingface(size: int, batch: int):
    import torch

    model = huggingface_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    rng = np.random.RandomState(0)
    images = torch.from_numpy(rng.randn(batch, 3, size, size).astype(np.float32))
    labels = torch.from_numpy(rng.randint(0, 150, (batch, size, size)).astype(np.int64))

    def train():
        model.train()
        loss = model(images, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def inference():
        model.eval()
        with torch.no_grad():
            model(images)

    return train, inference


def _median_ms(fn, rounds):
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def ours_parts(size: int, batch: int, conv_impl: str = "auto"):
    """{part: (forward, forward + backward)} callables of swin_jax's UPerNet, each part alone."""
    import jax
    import jax.numpy as jnp

    from swin_jax.models import layers

    model, variables = our_model(size, conv_impl)
    params, stats = variables["params"], variables["batch_stats"]
    rng = np.random.RandomState(0)
    images = jnp.asarray(rng.randn(batch, size, size, 3).astype(np.float32))
    features = jax.jit(lambda p, x: model.backbone.apply({"params": p}, x))(params["backbone"], images)
    decode, auxiliary = model.heads(named=False)
    key = jax.random.key(1)

    def part(fn, *inputs):
        """fn(*inputs, train) -> array, inputs[0] its parameters: its forward and the gradient of its sum
        with respect to every input."""
        forward = jax.jit(lambda *a: fn(*a, False))
        backward = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a, True)), argnums=tuple(range(len(inputs)))))
        return (lambda: jax.block_until_ready(forward(*inputs)), lambda: jax.block_until_ready(backward(*inputs)))

    def head(module, name):
        def fn(head_params, feats, train):
            out = module.apply({"params": head_params, "batch_stats": stats[name]}, feats, train,
                               mutable=["batch_stats"] if train else False, rngs={"dropout": key})
            return out[0] if train else out
        return fn

    def backbone(backbone_params, x, train):
        maps = model.backbone.apply({"params": backbone_params}, x, train, rngs={"dropout": key})
        return jnp.concatenate([m.reshape(batch, -1) for m in maps], -1)

    logits = jnp.zeros((batch, size // 4, size // 4, model.num_classes))
    return {
        "backbone": part(backbone, params["backbone"], images),
        "decode head": part(head(decode, "decode_head"), params["decode_head"], features),
        "auxiliary head": part(head(auxiliary, "auxiliary_head"), params["auxiliary_head"], features),
        "logits to input size": part(lambda x, train: layers.resize_bilinear(x, (size, size)), logits),
    }


def huggingface_parts(size: int, batch: int):
    import torch

    model = huggingface_model()
    rng = np.random.RandomState(0)
    images = torch.from_numpy(rng.randn(batch, 3, size, size).astype(np.float32))
    with torch.no_grad():
        features = [f.detach() for f in model.backbone(images).feature_maps]
    logits = torch.zeros(batch, 150, size // 4, size // 4)

    def part(fn, *inputs):
        def forward():
            model.eval()
            with torch.no_grad():
                fn(*inputs)

        def backward():
            model.train()
            leaves = [x.detach().requires_grad_(True) for x in inputs]
            fn(*leaves).sum().backward()
        return forward, backward

    resize = torch.nn.functional.interpolate
    return {
        "backbone": part(lambda x: torch.cat([f.flatten(1) for f in model.backbone(x).feature_maps], 1), images),
        "decode head": part(lambda *f: model.decode_head(list(f)), *features),
        "auxiliary head": part(lambda *f: model.auxiliary_head(list(f)), *features),
        "logits to input size": part(lambda x: resize(x, size=(size, size), mode="bilinear", align_corners=False),
                                     logits),
    }


def print_parts(size: int, batch: int, rounds: int, conv_impl: str):
    ours, theirs = ours_parts(size, batch, conv_impl), huggingface_parts(size, batch)
    print(f"UPerNet Swin-T parts, {size}x{size}, batch {batch}, float32, conv_impl={conv_impl}: median ms of "
          f"{rounds} rounds")
    print(f"{'part':<22} {'fwd ours':>9} {'fwd HF':>8} {'ratio':>6} {'fwd+bwd ours':>13} {'fwd+bwd HF':>11} {'ratio':>6}")
    for name in ours:
        f_ours, b_ours = (_median_ms(fn, rounds) for fn in ours[name])
        f_hf, b_hf = (_median_ms(fn, rounds) for fn in theirs[name])
        print(f"{name:<22} {f_ours:>9.0f} {f_hf:>8.0f} {f_hf / f_ours:>5.2f}x {b_ours:>13.0f} {b_hf:>11.0f} "
              f"{b_hf / b_ours:>5.2f}x", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", action="store_true", help="time each part alone instead of the whole model")
    parser.add_argument("--conv-impl", default="auto", help="the heads' convolutions (swin_jax.models.layers): "
                        "auto, xla (as before the tap lowering) or taps")
    args = parser.parse_args()
    if args.parts:
        print_parts(args.size, args.batch, args.rounds, args.conv_impl)
        return

    import jax

    sides = {}
    builders = (("swin_jax", functools.partial(build_ours, conv_impl=args.conv_impl)),
                ("Hugging Face", build_huggingface))
    for name, build in builders:
        train, inference = build(args.size, args.batch)
        start = time.perf_counter()
        train()
        inference()
        print(f"{name}: built and warmed up (compiled, for swin_jax) in {time.perf_counter() - start:.0f} s", flush=True)
        sides[name] = {"train": (train, []), "infer": (inference, [])}
    for round_ in range(args.rounds):
        for name, cases in sides.items():
            for mode, (fn, times) in cases.items():
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    print(f"UPerNet Swin-T, {args.size}x{args.size}, batch {args.batch}, float32, conv_impl={args.conv_impl}, "
          f"{jax.devices()[0].device_kind}")
    print(f"{'case':<10} {'swin_jax img/s':>15} {'HF img/s':>9} {'ratio':>6}")
    for mode in ("infer", "train"):
        ours, theirs = (args.batch / statistics.median(sides[n][mode][1]) for n in sides)
        print(f"{mode:<10} {ours:>15.3f} {theirs:>9.3f} {ours / theirs:>5.2f}x")


if __name__ == "__main__":
    main()
