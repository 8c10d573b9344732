"""Swin Transformer V1 (Liu et al., arXiv 2103.14030) in Flax linen, NHWC.

Layout of the parameters (the converter and the checkpoints follow it):
  patch_embed/{proj, norm}, absolute_pos_embed (optional),
  layers_{i}/downsample/{norm, reduction}   PatchMerging at the start of stage i > 0 (timm's layout)
  layers_{i}/blocks/{block0, block1}/...    blocks scanned in (no shift, shift) pairs, parameters
                                            stacked along a leading axis of length depth // 2
  layers_{i}/blocks_{j}/...                 the same blocks unrolled (scan_blocks=False)
  norm, head                                final LayerNorm and classifier
  norm{i}                                   per-stage output norms of the dense backbone (out_indices)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import windows

Dtype = Any


def trunc_normal(stddev: float = 0.02):
    """timm's `trunc_normal_(std=.02)`: a normal cut at +-2 in absolute value, i.e. at +-100 std.

    At 100 std the cut never binds, so a clipped normal is the same distribution (and avoids the
    inverse-CDF sampler's saturation at such wide bounds).
    """

    def init(key, shape, dtype=jnp.float32):
        return jnp.clip(stddev * jax.random.normal(key, shape, jnp.float32), -2.0, 2.0).astype(dtype)

    return init


def torch_default_bias(fan_in: int):
    """PyTorch's default bias init for Linear / Conv layers: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / np.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)

    return init


# PyTorch's default Conv2d weight init (kaiming_uniform with a=sqrt(5)); the official code leaves the
# patch-embedding convolution at this default.
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _statistics(x: jnp.ndarray, eps: float):
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    return centred, mean, jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_layer(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float) -> jnp.ndarray:
    """PyTorch's LayerNorm over the last axis, in float32: two-pass variance, (x - mean) * rstd * scale + bias."""
    return _normalize_layer_fwd(x, scale, bias, eps)[0]


def _normalize_layer_fwd(x, scale, bias, eps):
    centred, mean, rstd = _statistics(x, eps)
    y = centred * (rstd * scale.astype(jnp.float32)) + bias.astype(jnp.float32)
    return y, (x, scale, bias, mean, rstd)


def _normalize_layer_bwd(eps, residuals, g):
    # The gradient written out (as PyTorch's native layer norm): the backward pass keeps the input and
    # two statistics per row, and recomputes the normalised input, instead of the several full-size
    # intermediates that differentiating the formula would keep.
    x, scale, bias, mean, rstd = residuals
    xhat = (x.astype(jnp.float32) - mean) * rstd
    g = g.astype(jnp.float32)
    dxhat = g * scale.astype(jnp.float32)
    dx = rstd * (dxhat - jnp.mean(dxhat, axis=-1, keepdims=True)
                 - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    return dx.astype(x.dtype), jnp.sum(g * xhat, axis=rows).astype(scale.dtype), jnp.sum(g, axis=rows).astype(bias.dtype)


normalize_layer.defvjp(_normalize_layer_fwd, _normalize_layer_bwd)


class LayerNorm(nn.Module):
    """PyTorch's nn.LayerNorm (eps 1e-5); statistics in float32 also for bf16 inputs. Parameters as
    Flax's LayerNorm (`scale`, `bias`)."""

    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        return normalize_layer(x, scale, bias, self.epsilon).astype(self.dtype)


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype, scale_init=nn.initializers.ones) -> LayerNorm:
    return LayerNorm(dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name)


@jax.custom_jvp
def gelu(x: jnp.ndarray) -> jnp.ndarray:
    """PyTorch's nn.GELU (the exact form): x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    # The derivative written out, Phi(x) + x * phi(x): the backward pass then keeps one tensor per
    # activation instead of the several erf intermediates that differentiating the formula would keep
    # (the MLP's hidden activations are the largest tensors of a Swin block).
    (x,), (t,) = primals, tangents
    cdf = 0.5 * (1 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))
    pdf = jnp.exp(-0.5 * x * x) * np.sqrt(0.5 / np.pi).astype(x.dtype)
    return x * cdf, t * (cdf + x * pdf)


@jax.custom_jvp
def softmax(x: jnp.ndarray) -> jnp.ndarray:
    """Softmax over the last axis, as jax.nn.softmax computes it."""
    unnormalised = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return unnormalised / jnp.sum(unnormalised, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    # The derivative written out, y * (t - <t, y>): the backward pass keeps only the probabilities,
    # not also the exponentials that differentiating the formula keeps (an attention map per block).
    (x,), (t,) = primals, tangents
    y = softmax(x)
    return y, y * (t - jnp.sum(t * y, axis=-1, keepdims=True))


class Dense(nn.Dense):
    """nn.Dense on a 2-D (rows, features) view of the input, whatever its rank.

    XLA:CPU computes the weight gradient of a 2-D product straight from the activations; with 3-D or
    4-D activations it first copies them transposed to (features, rows), which cost about a sixth of
    a Swin-T train step. Parameters as nn.Dense.
    """

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = super().__call__(x.reshape(-1, x.shape[-1]))
        return y.reshape(*x.shape[:-1], y.shape[-1])


def dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype, use_bias: bool = True) -> Dense:
    return Dense(features, use_bias=use_bias, kernel_init=trunc_normal(), bias_init=nn.initializers.zeros,
                 dtype=dtype, param_dtype=param_dtype, name=name)


def split_heads(qkv: jnp.ndarray, heads: int) -> list[jnp.ndarray]:
    """(windows, n, 3C) projections -> q, k, v, each (windows, heads, n, C / heads).

    Split before the head transpose, so that the gradient is one concatenation rather than three
    zero-padded copies of the whole tensor added together.
    """
    windows_, n, c3 = qkv.shape
    return [t.reshape(windows_, n, heads, c3 // (3 * heads)).transpose(0, 2, 1, 3) for t in jnp.split(qkv, 3, axis=-1)]


def attend_values(attn: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """attn (windows, heads, n, n) applied to v (windows, heads, n, d) -> (windows, n, heads * d).

    The product keeps the heads-major layout and the transpose comes after it: asked for the
    (windows, n, heads, d) result directly, XLA:CPU computes a transposed product on a slower path.
    """
    out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3)
    return out.reshape(*out.shape[:2], -1)


def drop_path(module: nn.Module, x: jnp.ndarray, rate, deterministic: bool) -> jnp.ndarray:
    """Stochastic depth: drop the whole residual branch per sample with probability `rate`.

    `rate` may be a traced scalar (it is a scanned input when blocks are scanned).
    """
    if deterministic:
        return x
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    noise = jax.random.uniform(module.make_rng("dropout"), (x.shape[0],) + (1,) * (x.ndim - 1))
    mask = jnp.floor(keep + noise)
    return x * (mask / jnp.maximum(keep, 1e-12)).astype(x.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches -> embed_dim, optionally layer-normalised."""

    patch_size: int = 4
    embed_dim: int = 96
    patch_norm: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.patch_size
        h, w = x.shape[1:3]
        # Images whose size is not a multiple of the patch are padded on the bottom/right with zeros.
        x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        fan_in = p * p * x.shape[-1]
        x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", kernel_init=torch_default_kernel,
                    bias_init=torch_default_bias(fan_in), dtype=self.dtype, param_dtype=self.param_dtype,
                    name="proj")(x)
        if self.patch_norm:
            x = layer_norm("norm", self.dtype, self.param_dtype)(x)
        return x


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    The bias table holds one value per head for each of the (2T-1)^2 relative offsets of a T x T
    window (T = table_window). Called on windows of size `window` <= T.
    """

    dim: int
    num_heads: int
    table_window: int
    qkv_bias: bool = True
    qk_scale: float | None = None
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, window: int, mask: np.ndarray | None, deterministic: bool) -> jnp.ndarray:
        _, n, c = x.shape
        heads = self.num_heads
        head_dim = c // heads
        scale = self.qk_scale if self.qk_scale is not None else head_dim ** -0.5

        table = self.param("relative_position_bias_table", trunc_normal(),
                           ((2 * self.table_window - 1) ** 2, heads), self.param_dtype)
        index = windows.relative_position_index(window, self.table_window)
        bias = jnp.asarray(table, jnp.float32)[index.reshape(-1)].reshape(n, n, heads).transpose(2, 0, 1)

        qkv = dense(3 * c, "qkv", self.dtype, self.param_dtype, self.qkv_bias)(x)
        q, k, v = split_heads(qkv, heads)  # (windows, heads, n, head_dim)

        logits = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(scale, q.dtype), k)
        logits = logits.astype(jnp.float32) + bias  # softmax statistics in float32, also under bf16
        if mask is not None:
            num_windows = mask.shape[0]
            logits = logits.reshape(-1, num_windows, heads, n, n) + mask[None, :, None]
            logits = logits.reshape(-1, heads, n, n)
        attn = softmax(logits).astype(self.dtype)
        attn = nn.Dropout(self.attn_drop_rate)(attn, deterministic=deterministic)

        out = dense(c, "proj", self.dtype, self.param_dtype)(attend_values(attn, v))
        return nn.Dropout(self.proj_drop_rate)(out, deterministic=deterministic)


class Mlp(nn.Module):
    hidden_dim: int
    drop_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
        out_dim = x.shape[-1]
        x = dense(self.hidden_dim, "fc1", self.dtype, self.param_dtype)(x)
        x = gelu(x)
        x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)
        x = dense(out_dim, "fc2", self.dtype, self.param_dtype)(x)
        return nn.Dropout(self.drop_rate)(x, deterministic=deterministic)


def shifted_window_attention(x: jnp.ndarray, window_size: int, shift_size: int, attend) -> jnp.ndarray:
    """(Shifted) window attention over a (B, H, W, C) map: `attend(windows, window, mask)` is called on
    (B * num_windows, window * window, C) windows and returns the same shape.

    On a map no larger than the window the whole map is one unshifted window. Maps that are not a
    multiple of the window are padded with zeros before the cyclic shift, as the official detection
    backbone and Hugging Face do, and cropped back afterwards.
    """
    _, h, w, _ = x.shape
    window, shift = windows.effective_window(h, w, window_size, shift_size)
    x = jnp.pad(x, ((0, 0), (0, -h % window), (0, -w % window), (0, 0)))
    hp, wp = x.shape[1:3]
    mask = None
    if shift:
        x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
        mask = windows.shifted_window_mask(hp, wp, window, shift)
    x = attend(windows.window_partition(x, window), window, mask)
    x = windows.window_reverse(x, window, hp, wp)
    if shift:
        x = jnp.roll(x, (shift, shift), axis=(1, 2))
    return x[:, :h, :w]


class SwinBlock(nn.Module):
    """LayerNorm -> (shifted) window attention -> residual; LayerNorm -> MLP -> residual.

    `window_size`/`shift_size` are the block's configured values; on a map no larger than the window
    the whole map is one unshifted window. Maps that are not a multiple of the window are padded with
    zeros after norm1 and before the cyclic shift, as the official detection backbone and Hugging
    Face do, and cropped back after the attention.
    """

    dim: int
    num_heads: int
    window_size: int
    shift_size: int = 0
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, drop_path_rate=0.0) -> jnp.ndarray:
        c = x.shape[-1]
        shortcut = x
        x = layer_norm("norm1", self.dtype, self.param_dtype)(x)
        attn = WindowAttention(self.dim, self.num_heads, self.window_size, self.qkv_bias, self.qk_scale,
                               self.attn_drop_rate, self.drop_rate, self.dtype, self.param_dtype, name="attn")
        x = shifted_window_attention(x, self.window_size, self.shift_size,
                                     lambda t, window, mask: attn(t, window, mask, self.deterministic))
        x = shortcut + drop_path(self, x, drop_path_rate, self.deterministic)

        y = layer_norm("norm2", self.dtype, self.param_dtype)(x)
        y = Mlp(int(c * self.mlp_ratio), self.drop_rate, self.dtype, self.param_dtype, name="mlp")(
            y, self.deterministic)
        return x + drop_path(self, y, drop_path_rate, self.deterministic)


class SwinBlockPair(nn.Module):
    """One unshifted block followed by one shifted block: the unit that a stage scans over."""

    block: dict  # keyword arguments of SwinBlock shared by both blocks
    shift_size: int
    block_cls = SwinBlock  # a class attribute, not a field: SwinV2BlockPair changes it

    @nn.compact
    def __call__(self, x: jnp.ndarray, drop_path_rates: jnp.ndarray):
        x = self.block_cls(shift_size=0, name="block0", **self.block)(x, drop_path_rates[0])
        x = self.block_cls(shift_size=self.shift_size, name="block1", **self.block)(x, drop_path_rates[1])
        return x, None


def merge_patches(x: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C): each 2x2 neighbourhood concatenated in the official
    order (top-left, bottom-left, top-right, bottom-right); odd maps get one zero row/column first."""
    h, w = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    return jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)


class PatchMerging(nn.Module):
    """2x2 neighbouring patches concatenated (official order), LayerNorm over 4C, linear 4C -> 2C."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        x = merge_patches(x)
        x = layer_norm("norm", self.dtype, self.param_dtype)(x)
        return dense(2 * c, "reduction", self.dtype, self.param_dtype, use_bias=False)(x)


class SwinStage(nn.Module):
    """Optional patch merging, then `depth` blocks alternating no shift / shift by window // 2."""

    depth: int
    num_heads: int
    window_size: int
    shift_size: int
    drop_path_rates: tuple[float, ...]
    downsample: bool
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    scan_blocks: bool = True
    scan_unroll: int | bool = 1
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # Class attributes, not fields: the V2 stage (swin_v2.SwinV2Stage) swaps in its own blocks.
    block_cls = SwinBlock
    pair_cls = SwinBlockPair
    merge_cls = PatchMerging

    def block_options(self) -> dict:
        """Keyword arguments of `block_cls` particular to the Swin version."""
        return dict(qk_scale=self.qk_scale)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.downsample:
            x = self.merge_cls(self.dtype, self.param_dtype, name="downsample")(x)
        block = dict(dim=x.shape[-1], num_heads=self.num_heads, window_size=self.window_size,
                     mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, drop_rate=self.drop_rate,
                     attn_drop_rate=self.attn_drop_rate, deterministic=not train, dtype=self.dtype,
                     param_dtype=self.param_dtype, **self.block_options())
        if self.scan_blocks:
            pair = nn.remat(self.pair_cls, prevent_cse=False) if self.remat else self.pair_cls
            blocks = nn.scan(pair, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                             length=self.depth // 2, unroll=self.scan_unroll)
            rates = jnp.asarray(self.drop_path_rates, jnp.float32).reshape(-1, 2)
            x, _ = blocks(block, self.shift_size, name="blocks")(x, rates)
        else:
            single = nn.remat(self.block_cls) if self.remat else self.block_cls
            for j in range(self.depth):
                x = single(shift_size=self.shift_size if j % 2 else 0, name=f"blocks_{j}", **block)(
                    x, self.drop_path_rates[j])
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer V1. Input NHWC float images; output logits, pooled features or stage maps.

    - num_classes > 0: logits (float32); num_classes == 0: the pooled, normalised features.
    - out_indices set: the dense backbone; returns the listed stage maps (NHWC), each through its
      own LayerNorm when `out_norm` is true, as the official detection/segmentation backbones.
    The four stage maps are also sown into the "intermediates" collection as `stage{i}`.

    `img_size` fixes the parameter shapes as in the official code (a stage no larger than the window
    gets a smaller window and bias table, and the absolute position embedding covers this size);
    other input sizes, non-square and non-divisible ones included, run with the same parameters.
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    ape: bool = False
    patch_norm: bool = True
    out_indices: Sequence[int] | None = None
    out_norm: bool = True
    scan_blocks: bool = True
    # lax.scan's `unroll` for the block pairs (parameters stay stacked). True compiles the loop unrolled:
    # on CPU a train step about 5% faster for about 20% more memory and 1.7x the compile time; on a GPU
    # the unrolled Swin-B train step took 90 s to compile.
    scan_unroll: int | bool = 1
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        self._check_config()
        super().__post_init__()

    def _check_config(self):
        def fail(field, message):
            raise ValueError(f"{type(self).__name__}.{field}={getattr(self, field)!r}: {message}")

        if len(self.depths) != len(self.num_heads):
            fail("num_heads", f"needs one entry per stage, and depths={tuple(self.depths)} has {len(self.depths)}")
        if not self.depths or any(d < 1 for d in self.depths):
            fail("depths", "every stage needs at least one block")
        if self.scan_blocks and any(d % 2 for d in self.depths):
            fail("depths", "scanned stages hold (no shift, shift) block pairs, so every depth must be even; "
                           "set scan_blocks=False for odd depths")
        for i, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2 ** i
            if heads < 1 or dim % heads:
                fail("num_heads", f"stage {i} has {dim} channels, which {heads} heads do not divide")
        if self.window_size < 1:
            fail("window_size", "must be a positive number of patches")
        if self.patch_size < 1:
            fail("patch_size", "must be positive")
        grid = self.patch_grid
        if min(grid) < 2 ** (len(self.depths) - 1):
            fail("img_size", f"a {grid[0]}x{grid[1]} patch grid is too small for {len(self.depths)} stages")
        if self.out_indices is not None:
            bad = [i for i in self.out_indices if not 0 <= i < len(self.depths)]
            if bad or not self.out_indices:
                fail("out_indices", f"must list stages in 0..{len(self.depths) - 1}")

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the images the parameters are built for (`img_size`)."""
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.input_hw[0] // self.patch_size, self.input_hw[1] // self.patch_size

    def stage_windows(self) -> list[int]:
        """Each stage's window at `img_size`: the size its bias tables are built for.

        As in the official code, a stage whose map at `img_size` is no larger than the window gets a
        window (and table) the size of that map. Whether a block actually shifts is decided from the
        map it is called on (as Hugging Face and the detection backbone do), so a model built for 224
        and run at a larger size shifts its last stage where the map has become larger than the window.
        """
        out = []
        for i in range(len(self.depths)):
            res = [g // 2 ** i for g in self.patch_grid]
            out.append(windows.effective_window(res[0], res[1], self.window_size, 0)[0])
        return out

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def stage_module(self, i: int) -> tuple[type, dict]:
        """The stage class and the keyword arguments particular to the Swin version for stage i."""
        return SwinStage, dict(qk_scale=self.qk_scale)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (batch, height, width, {self.in_chans}) (NHWC), "
                             f"got shape {x.shape}")
        if x.shape[-1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} channels last (NHWC), got shape {x.shape}; "
                             f"NCHW input needs x.transpose(0, 2, 3, 1)")
        x = jnp.asarray(x, self.dtype)
        x = PatchEmbed(self.patch_size, self.embed_dim, self.patch_norm, self.dtype, self.param_dtype,
                       name="patch_embed")(x)
        if self.ape:
            grid = self.patch_grid
            pos = self.param("absolute_pos_embed", trunc_normal(), (1, *grid, self.embed_dim), self.param_dtype)
            if x.shape[1:3] != grid:
                raise ValueError(f"absolute_pos_embed covers a {grid[0]}x{grid[1]} patch grid (img_size="
                                 f"{self.img_size}), got a {x.shape[1]}x{x.shape[2]} grid; resize it with the "
                                 f"converter for another input size")
            x = x + pos.astype(self.dtype)
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)

        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        stage_maps = []
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            window = self.stage_windows()[i]
            start = sum(self.depths[:i])
            stage, options = self.stage_module(i)
            x = stage(depth, heads, window, window // 2, tuple(rates[start:start + depth]), downsample=i > 0,
                      mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, drop_rate=self.drop_rate,
                      attn_drop_rate=self.attn_drop_rate, scan_blocks=self.scan_blocks,
                      scan_unroll=self.scan_unroll, remat=self.remat,
                      dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}", **options)(x, train)
            self.sow("intermediates", f"stage{i}", x)
            stage_maps.append(x)

        if self.out_indices is not None:
            outs = []
            for i in self.out_indices:
                y = stage_maps[i]
                if self.out_norm:
                    y = layer_norm(f"norm{i}", self.dtype, self.param_dtype)(y)
                outs.append(y.astype(jnp.float32))
            return tuple(outs)

        x = layer_norm("norm", self.dtype, self.param_dtype)(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if not self.num_classes:
            return x
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        x = dense(self.num_classes, "head", self.dtype, self.param_dtype)(x.astype(self.dtype))
        return x.astype(jnp.float32)


def config_fields(model_cls: type | None = None) -> set[str]:
    """The options of a model class (SwinTransformer by default): its dataclass fields."""
    return {f.name for f in dataclasses.fields(model_cls or SwinTransformer) if f.name not in ("parent", "name")}


def unstack_blocks(params: dict) -> dict:
    """Scanned layout (`layers_i/blocks/block{0,1}`, stacked) -> unrolled layout (`layers_i/blocks_j`)."""
    out = {}
    for name, sub in params.items():
        if name.startswith("layers_") and "blocks" in sub:
            sub = dict(sub)
            pairs = sub.pop("blocks")
            length = jax.tree.leaves(pairs)[0].shape[0]
            for p in range(length):
                for b in range(2):
                    sub[f"blocks_{2 * p + b}"] = jax.tree.map(lambda a: a[p], pairs[f"block{b}"])
        out[name] = sub
    return out


def stack_blocks(params: dict) -> dict:
    """Unrolled layout (`layers_i/blocks_j`) -> scanned layout (`layers_i/blocks/block{0,1}`)."""
    out = {}
    for name, sub in params.items():
        if name.startswith("layers_") and "blocks_0" in sub:
            sub = dict(sub)
            depth = sum(1 for k in sub if k.startswith("blocks_"))
            blocks = [sub.pop(f"blocks_{j}") for j in range(depth)]
            sub["blocks"] = {f"block{b}": jax.tree.map(lambda *a: jnp.stack(a), *blocks[b::2]) for b in range(2)}
        out[name] = sub
    return out
