"""Swin Transformer V2 (Liu et al., arXiv 2111.09883) in Flax linen, NHWC: V1 (swin.py) with three changes,
as the official `swin_transformer_v2.py` and timm make them.

  1. Scaled cosine attention: cos(q, k) (F.normalize, eps 1e-12) times a learned per-head
     exp(min(logit_scale, log 100)), logit_scale initialised to log 10; q and v biases (`q_bias`,
     `v_bias`) with a zero k bias, on a bias-free `qkv` projection.
  2. A continuous relative position bias: a 2 -> 512 (bias) -> ReLU -> heads (no bias) MLP (`cpb_mlp`)
     applied to log-spaced relative coordinates (windows.continuous_coords_table; offsets divided by
     pretrained_window - 1 when the model was pre-trained with another window), through 16 * sigmoid.
  3. Residual post-norm, x + drop_path(norm(f(x))), with the block norms initialised to zero (each
     block starts as the identity); patch merging reduces 4C -> 2C first and normalises over 2C after.

Everything else is V1's: patch embedding, MLP, windows, padding before the shift, scanned (no shift,
shift) block pairs, remat, dense-backbone outputs and the parameter layout. Per block the parameters are
  attn/{qkv/kernel, q_bias, v_bias, logit_scale, cpb_mlp/0/{kernel,bias}, cpb_mlp/2/kernel, proj},
  norm1, mlp/{fc1,fc2}, norm2.

The coordinate table and relative index are NumPy constants built at trace time and cached; the MLP
runs in the forward pass (it is a parameter), in float32 also under bf16, as are the cosine logits.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers, windows
from swin_jax.models.layers import Dtype, dense, trunc_normal
from swin_jax.models.swin import Swin

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
        return nn.Dense(self.num_heads, use_bias=False, kernel_init=trunc_normal(), dtype=jnp.float32,
                        param_dtype=self.param_dtype, precision=_HIGHEST, name="2")(nn.relu(h))


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
    implementation: str = "auto"  # of the attention core (layers.IMPLEMENTATIONS)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, window: int, mask: np.ndarray | None, deterministic: bool) -> jnp.ndarray:
        n, c = x.shape[1:]
        heads = self.num_heads
        qkv = dense(3 * c, "qkv", self.dtype, self.param_dtype, use_bias=False)(x)
        if self.qkv_bias:
            q_bias = self.param("q_bias", nn.initializers.zeros, (c,), self.param_dtype)
            v_bias = self.param("v_bias", nn.initializers.zeros, (c,), self.param_dtype)
            qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        q, k, v = layers.split_heads(qkv, heads)

        # Cosine similarities in float32 (a bf16 cosine times a scale of up to 100 would be coarse);
        # the scale goes on q, so the attention core applies none of its own.
        logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(10.0)), (heads, 1, 1),
                                 self.param_dtype)
        scale = jnp.exp(jnp.minimum(logit_scale.astype(jnp.float32), LOGIT_SCALE_MAX)).reshape(heads, 1)
        q, k = normalize(q) * scale, normalize(k)

        coords = windows.continuous_coords_table(self.table_window, self.pretrained_window)
        table = ContinuousPositionBias(heads, param_dtype=self.param_dtype, name="cpb_mlp")(coords)
        index = windows.relative_position_index(window, self.table_window)
        bias = 16.0 * jax.nn.sigmoid(table[index.reshape(-1)].reshape(n, n, heads).transpose(2, 0, 1))

        out = layers.window_attention(q, k, v, layers.window_bias(bias, mask), implementation=self.implementation,
                                      logits_precision=_HIGHEST,
                                      dropout=layers.attention_dropout(self.attn_drop_rate, deterministic))
        out = dense(c, "proj", self.dtype, self.param_dtype)(out)
        return nn.Dropout(self.proj_drop_rate)(out, deterministic=deterministic)


class SwinTransformerV2(Swin):
    """Swin Transformer V2. Input NHWC float images; output logits, pooled features or stage maps.

    The options, outputs and conventions are `Swin`'s (see there), plus `pretrained_window_sizes`: per
    stage, the window the model was pre-trained with (0: none, the coordinates are normalised by the
    stage's own window). A model fine-tuned from window 12 to 24 (timm's
    `swinv2_base_window12to24_192to384`) uses (12, 12, 12, 6). None means 0 for every stage.
    """

    pretrained_window_sizes: Sequence[int] | None = None

    post_norm: ClassVar[bool] = True

    def window_attention(self, stage: int) -> Callable[..., nn.Module]:
        return functools.partial(WindowAttentionV2, pretrained_window=self.pretrained_windows()[stage],
                                 qkv_bias=self.qkv_bias, attn_drop_rate=self.attn_drop_rate,
                                 proj_drop_rate=self.drop_rate, implementation=self.attention_impl, dtype=self.dtype,
                                 param_dtype=self.param_dtype)

    def _check_config(self):
        super()._check_config()
        if self.pretrained_window_sizes is not None:
            sizes = tuple(self.pretrained_window_sizes)
            if len(sizes) != len(self.depths):
                self._fail("pretrained_window_sizes", f"needs one entry per stage, and depths={tuple(self.depths)} "
                                                      f"has {len(self.depths)}")
            if any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in sizes):
                self._fail("pretrained_window_sizes", "entries are windows in patches (0: not pre-trained with "
                                                      "another window), so non-negative integers")

    def pretrained_windows(self) -> list[int]:
        """Each stage's pre-training window (0 where none)."""
        if self.pretrained_window_sizes is None:
            return [0] * len(self.depths)
        return [int(p) for p in self.pretrained_window_sizes]
