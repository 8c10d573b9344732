"""What the tests share: random PyTorch references with every tensor randomised, their outputs next to
ours, and perturbed parameters (so that no swapped, transposed or ignored tensor can hide behind an
initial value of 0 or 1)."""

from __future__ import annotations

import copy
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import torch

RTOL = ATOL = 1e-5

# A Swin small enough to run in a blink, with every feature of the real ones: 4 stages, shifts, a stage
# that is one unshifted window at 64x64 input, another whose window shrinks to its 2x2 map.
SMALL = dict(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, num_classes=10)


def randomize(module: torch.nn.Module, seed: int = 0, clamp: bool = False) -> torch.nn.Module:
    """Non-trivial values for every LayerNorm, bias, bias-table, logit_scale and position-bias MLP tensor,
    in eval mode. Swin V2 modules (they have a logit_scale) get V2's rules, V1 modules V1's.

    V2's block post-norms get weights around 0.25 and small biases, so that the residual stream of a deep
    V2 stays O(1) as in a trained model (the official init sets them to zero); with weights around 1,
    float32 noise (torch's as much as ours) through Swin-B's 18 post-norm blocks of stage 2 alone
    approaches the 1e-5 tolerance. `clamp` puts the first head of every V2 block above the official
    clamp of log(100) and spreads the others wider.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(shape, generator=g)

    v2 = any(name.endswith("logit_scale") for name, _ in module.named_parameters())
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not v2:
                if name.endswith("relative_position_bias_table"):
                    p.copy_(randn(p.shape, 0.5))
                elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                    p.copy_(randn(p.shape, 0.3, 1.0))
                elif name.endswith("bias"):
                    p.copy_(randn(p.shape, 0.2))
            elif name.endswith("logit_scale"):
                p.copy_(randn(p.shape, 0.7 if clamp else 0.3, math.log(10)))
                if clamp:
                    p.view(-1)[0] = 5.0
            elif re.search(r"(cpb_mlp|continuous_position_bias_mlp)\.0\.", name):
                p.copy_(randn(p.shape, 1.0 if name.endswith("weight") else 0.5))
            elif re.search(r"(cpb_mlp|continuous_position_bias_mlp)\.2\.", name):
                p.copy_(randn(p.shape, 0.125))  # outputs of std ~2 before 16 * sigmoid
            elif ".blocks." in name and "norm" in name:  # norm1/norm2, layernorm_before/after
                p.copy_(randn(p.shape, 0.1, 0.25) if name.endswith("weight") else randn(p.shape, 0.05))
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(randn(p.shape, 0.3, 1.0))
            elif name.endswith("bias"):  # q_bias and v_bias too
                p.copy_(randn(p.shape, 0.2))
    return module.eval()


def perturb(params, seed: int = 2, scale: float = 0.1):
    """Every parameter plus scale * N(0, 1) noise: LayerNorms no longer 1 and 0, biases no longer 0."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten([p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def numpy_state(module) -> dict:
    return {k: v.numpy() for k, v in module.state_dict().items()}


def images(n, h, w, seed=0):
    return np.random.RandomState(seed).randn(n, h, w, 3).astype(np.float32)


_COMPILED = {}


def apply(model, *args, **kwargs):
    """`model.apply`, compiled once per model configuration (eager Flax on XLA:CPU is slow to test)."""
    if model not in _COMPILED:
        _COMPILED[model] = jax.jit(model.apply, static_argnames=("train", "mutable"))
    return _COMPILED[model](*args, **kwargs)


def jax_outputs(model, variables, x_nhwc):
    """(logits, [the four stage maps]) of a classifier."""
    logits, state = apply(model, variables, x_nhwc, mutable=("intermediates",))
    return np.asarray(logits), [np.asarray(state["intermediates"][f"stage{i}"][0]) for i in range(len(model.depths))]


def timm_outputs(tm, x_nhwc):
    """(logits, [the stage maps]) of a timm Swin, V1 or V2, NHWC: what timm's function computes, evaluated
    in float64 and rounded to float32.

    In float32 torch's rounding is a noise of its own, as large as ours (timm's float32 Swin-L stage maps
    are 0.4 of the 1e-5 tolerance away from their float64 values on an AVX-512 CPU); compared with float64
    values, the tolerance measures our error alone, on whichever CPU runs the tests.
    """
    exact = copy.deepcopy(tm).double()
    with torch.no_grad():
        features, inter = exact.forward_intermediates(torch.from_numpy(x_nhwc).double().permute(0, 3, 1, 2))
        logits = exact.forward_head(features)
    return logits.float().numpy(), [t.permute(0, 2, 3, 1).float().numpy() for t in inter]


def check_close(label, got, want, rtol=RTOL, atol=ATOL):
    """chex at rtol = atol = 1e-5, after printing the largest errors (`pytest -s` shows them)."""
    pairs = list(zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert len(pairs) == len(jax.tree.leaves(want)), label
    abs_err = max(float(np.abs(g - w).max()) for g, w in pairs)
    rel_err = max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in pairs)
    used = max(float(np.max(np.abs(g - w) / (atol + rtol * np.abs(w)))) for g, w in pairs)
    print(f"{label}: max abs error {abs_err:.2e}, max error relative to the largest value {rel_err:.2e}, "
          f"{used:.0%} of the tolerance used")
    chex.assert_trees_all_close(got, want, rtol=rtol, atol=atol)


def official_layout(tm) -> dict:
    """timm's tensors arranged as the official Microsoft checkpoints (V1 or V2; the inverse of timm's
    checkpoint_filter_fn): patch merging at the end of stages 0..2, `head.*`, and the persistent buffers
    relative_position_index, attn_mask and (V2) relative_coords_table."""
    out = {}
    for k, v in tm.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    for k, v in tm.named_buffers():
        if k.endswith(("relative_coords_table", "relative_position_index", "attn_mask")):
            out[k] = v
    return out


def param_count(model) -> int:
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *model.input_hw, model.in_chans))))
    return sum(x.size for x in jax.tree.leaves(shapes["params"]))
