"""swin_jax's UPerNet against Hugging Face's UperNetForSemanticSegmentation (the port of mmseg's) on
this machine: inference and a train step, side by side in one process, in alternating rounds.

  python benchmarks/segmentation_speed.py                       # Swin-T UPerNet, 512x512, batch 2, fp32
  python benchmarks/segmentation_speed.py --size 256 --batch 2 --rounds 5

The train step on both sides: forward in training mode (BatchNorm on batch statistics, dropout, drop
path 0.3), cross entropy with ignore index 255 on the main logits plus 0.4 times the auxiliary one,
backward, AdamW (lr 6e-5, weight decay 0.01). HF's model has no dropout; otherwise both compute the same
function. The table shows images/s of the median round and the ratio swin_jax / Hugging Face.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def build_ours(size: int, batch: int):
    import jax
    import jax.numpy as jnp
    import optax

    import swin_jax

    model = swin_jax.create_model("upernet_swin_tiny")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
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
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = SwinConfig(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"], hidden_act="gelu",
                          layer_norm_eps=1e-5)
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=150, loss_ignore_index=255))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import jax

    sides = {}
    for name, build in (("swin_jax", build_ours), ("Hugging Face", build_huggingface)):
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

    print(f"UPerNet Swin-T, {args.size}x{args.size}, batch {args.batch}, float32, {jax.devices()[0].device_kind}")
    print(f"{'case':<10} {'swin_jax img/s':>15} {'HF img/s':>9} {'ratio':>6}")
    for mode in ("infer", "train"):
        ours, theirs = (args.batch / statistics.median(sides[n][mode][1]) for n in sides)
        print(f"{mode:<10} {ours:>15.3f} {theirs:>9.3f} {ours / theirs:>5.2f}x")


if __name__ == "__main__":
    main()
