"""Swin Transformer V2 (Liu et al., arXiv 2111.09883) in Flax linen, NHWC, beside V1.

What V2 changes, as the official `swin_transformer_v2.py` and timm:
  - scaled cosine attention: cos(q, k) (F.normalize, eps 1e-12) times a learned per-head
    exp(min(logit_scale, log 100)), logit_scale initialised to log 10;
  - a continuous relative position bias: a 2 -> 512 (bias) -> ReLU -> heads (no bias) MLP (`cpb_mlp`)
    applied to log-spaced relative coordinates (windows.continuous_coords_table; offsets divided by
    pretrained_window - 1 when the model was pre-trained with another window), through 16 * sigmoid;
  - residual post-norm: x + drop_path(norm1(attn(x))), then x + drop_path(norm2(mlp(x))), with both
    norms initialised to zero as the official code does (each block starts as the identity);
  - q and v biases (`q_bias`, `v_bias`) with a zero k bias, on a bias-free `qkv` projection;
  - patch merging that reduces 4C -> 2C first and normalises over 2C afterwards.

Everything else is V1's (swin.py): patch embedding, MLP, windows, padding before the shift, scanned
(no shift, shift) block pairs, remat, dense-backbone outputs, the parameter layout
(`layers_i/blocks/block{0,1}/...`, `stack_blocks`/`unstack_blocks`). Per block the parameters are
  attn/{qkv/kernel, q_bias, v_bias, logit_scale, cpb_mlp/0/{kernel,bias}, cpb_mlp/2/kernel, proj},
  norm1, mlp/{fc1,fc2}, norm2.

The coordinate table and relative index are NumPy constants built at trace time and cached; the MLP
runs in the forward pass (it is a parameter), in float32 also under bf16, as are the cosine logits.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import windows
from swin_jax.models.swin import (Dtype, Mlp, SwinBlockPair, SwinStage, SwinTransformer, attend_values, dense,
                                  drop_path, layer_norm, merge_patches, shifted_window_attention, softmax,
                                  split_heads, trunc_normal)

LOGIT_SCALE_MAX = math.log(1.0 / 0.01)  # the official clamp: the scale never exceeds 100
CPB_HIDDEN = 512
_HIGHEST = jax.lax.Precision.HIGHEST


def normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """PyTorch's F.normalize(x, dim=-1): x / max(||x||_2, eps), in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), eps)


class ContinuousPositionBias(nn.Module):
    """The `cpb_mlp`: relative coordinates (..., 2) -> one bias logit per head, in float32."""

    num_heads: int
    hidden: int = CPB_HIDDEN
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, coords: jnp.ndarray) -> jnp.ndarray:
        # Named as PyTorch's nn.Sequential indices (cpb_mlp.0, cpb_mlp.2) so that keys map one to one.
        h = nn.Dense(self.hidden, kernel_init=trunc_normal(), bias_init=nn.initializers.zeros, dtype=jnp.float32,
                     param_dtype=self.param_dtype, precision=_HIGHEST, name="0")(coords)
        h = nn.relu(h)
        return nn.Dense(self.num_heads, use_bias=False, kernel_init=trunc_normal(), dtype=jnp.float32,
                        param_dtype=self.param_dtype, precision=_HIGHEST, name="2")(h)


class WindowAttentionV2(nn.Module):
    """Scaled cosine attention inside windows, with the continuous position bias.

    The bias is evaluated on the coordinate table of a T x T window (T = table_window, the stage's
    window at img_size) and read for windows of size `window` <= T, like V1's bias table.
    """

    dim: int
    num_heads: int
    table_window: int
    pretrained_window: int = 0
    qkv_bias: bool = True
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, window: int, mask, deterministic: bool) -> jnp.ndarray:
        _, n, c = x.shape
        heads = self.num_heads
        qkv = dense(3 * c, "qkv", self.dtype, self.param_dtype, use_bias=False)(x)
        if self.qkv_bias:
            q_bias = self.param("q_bias", nn.initializers.zeros, (c,), self.param_dtype)
            v_bias = self.param("v_bias", nn.initializers.zeros, (c,), self.param_dtype)
            qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        q, k, v = split_heads(qkv, heads)  # (windows, heads, n, head_dim)

        # Cosine similarities in float32 (a bf16 cosine times a scale of up to 100 would be coarse).
        logits = jnp.einsum("bhqd,bhkd->bhqk", normalize(q), normalize(k), precision=_HIGHEST)
        logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(10.0)), (heads, 1, 1),
                                 self.param_dtype)
        logits = logits * jnp.exp(jnp.minimum(logit_scale.astype(jnp.float32), LOGIT_SCALE_MAX))

        coords = windows.continuous_coords_table(self.table_window, self.pretrained_window)
        table = ContinuousPositionBias(heads, param_dtype=self.param_dtype, name="cpb_mlp")(coords)
        index = windows.relative_position_index(window, self.table_window)
        bias = table[index.reshape(-1)].reshape(n, n, heads).transpose(2, 0, 1)
        logits = logits + 16.0 * jax.nn.sigmoid(bias)
        if mask is not None:
            num_windows = mask.shape[0]
            logits = logits.reshape(-1, num_windows, heads, n, n) + mask[None, :, None]
            logits = logits.reshape(-1, heads, n, n)
        attn = softmax(logits).astype(self.dtype)
        attn = nn.Dropout(self.attn_drop_rate)(attn, deterministic=deterministic)

        out = dense(c, "proj", self.dtype, self.param_dtype)(attend_values(attn, v.astype(self.dtype)))
        return nn.Dropout(self.proj_drop_rate)(out, deterministic=deterministic)


class SwinV2Block(nn.Module):
    """(Shifted) window cosine attention -> norm1 -> residual; MLP -> norm2 -> residual (post-norm).

    Windows, shifts and padding as V1's SwinBlock (`shifted_window_attention`): the map itself is
    padded (there is no norm before the attention in V2).
    """

    dim: int
    num_heads: int
    window_size: int
    shift_size: int = 0
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pretrained_window_size: int = 0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, drop_path_rate=0.0) -> jnp.ndarray:
        c = x.shape[-1]
        zeros = nn.initializers.zeros  # the official _init_respostnorm: post-norms start at zero
        attn = WindowAttentionV2(self.dim, self.num_heads, self.window_size, self.pretrained_window_size,
                                 self.qkv_bias, self.attn_drop_rate, self.drop_rate, self.dtype, self.param_dtype,
                                 name="attn")
        y = shifted_window_attention(x, self.window_size, self.shift_size,
                                     lambda t, window, mask: attn(t, window, mask, self.deterministic))
        y = layer_norm("norm1", self.dtype, self.param_dtype, scale_init=zeros)(y)
        x = x + drop_path(self, y, drop_path_rate, self.deterministic)

        y = Mlp(int(c * self.mlp_ratio), self.drop_rate, self.dtype, self.param_dtype, name="mlp")(
            x, self.deterministic)
        y = layer_norm("norm2", self.dtype, self.param_dtype, scale_init=zeros)(y)
        return x + drop_path(self, y, drop_path_rate, self.deterministic)


class SwinV2BlockPair(SwinBlockPair):
    block_cls = SwinV2Block


class PatchMergingV2(nn.Module):
    """2x2 neighbouring patches concatenated (official order), linear 4C -> 2C, LayerNorm over 2C."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        x = dense(2 * c, "reduction", self.dtype, self.param_dtype, use_bias=False)(merge_patches(x))
        return layer_norm("norm", self.dtype, self.param_dtype)(x)


class SwinV2Stage(SwinStage):
    """Optional V2 patch merging, then `depth` V2 blocks alternating no shift / shift by window // 2."""

    pretrained_window_size: int = 0
    block_cls = SwinV2Block
    pair_cls = SwinV2BlockPair
    merge_cls = PatchMergingV2

    def block_options(self) -> dict:
        return dict(pretrained_window_size=self.pretrained_window_size)


class SwinTransformerV2(SwinTransformer):
    """Swin Transformer V2. Input NHWC float images; output logits, pooled features or stage maps.

    The options, outputs and conventions are SwinTransformer's (see there), plus
    `pretrained_window_sizes`: per stage, the window the model was pre-trained with (0: none, the
    coordinates are normalised by the stage's own window). A model fine-tuned from window 12 to 24
    (timm's `swinv2_base_window12to24_192to384`) uses (12, 12, 12, 6). None means 0 for every stage.
    `qk_scale` does not apply (cosine attention is scaled by the learned logit_scale) and must stay None.
    """

    pretrained_window_sizes: Sequence[int] | None = None

    def _check_config(self):
        super()._check_config()

        def fail(field, message):
            raise ValueError(f"{type(self).__name__}.{field}={getattr(self, field)!r}: {message}")

        if self.qk_scale is not None:
            fail("qk_scale", "V2's cosine attention is scaled by the learned logit_scale; leave qk_scale None")
        if self.pretrained_window_sizes is not None:
            sizes = tuple(self.pretrained_window_sizes)
            if len(sizes) != len(self.depths):
                fail("pretrained_window_sizes", f"needs one entry per stage, and depths={tuple(self.depths)} "
                                                f"has {len(self.depths)}")
            if any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in sizes):
                fail("pretrained_window_sizes", "entries are windows in patches (0: not pre-trained with another "
                                                "window), so non-negative integers")

    def pretrained_windows(self) -> list[int]:
        """Each stage's pre-training window (0 where none)."""
        if self.pretrained_window_sizes is None:
            return [0] * len(self.depths)
        return [int(p) for p in self.pretrained_window_sizes]

    def stage_module(self, i: int) -> tuple[type, dict]:
        return SwinV2Stage, dict(pretrained_window_size=self.pretrained_windows()[i])
