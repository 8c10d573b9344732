"""Numerics every Swin model shares: initialisers, LayerNorm, GELU, softmax, dense layers, drop path and
the window-attention core with its kernels, and the dense-prediction heads' resampling.

Each piece matches PyTorch's numerics (exact-erf GELU, LayerNorm eps 1e-5 with a two-pass variance,
the official initialisers). Where a piece is written out by hand rather than taken from JAX or Flax,
its docstring says what that buys; `benchmarks/layer_numerics.py` measures each one against the plain
JAX version it replaces, and the README's performance section holds the figures.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


# ---- initialisers -------------------------------------------------------------------------------

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

# mmcv's ConvModule initialises its convolution with kaiming_normal_(mode="fan_out", nonlinearity="relu").
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# ---- LayerNorm ----------------------------------------------------------------------------------

def _statistics(x: jnp.ndarray, eps: float):
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    return centred, mean, jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_layer(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float) -> jnp.ndarray:
    """PyTorch's LayerNorm over the last axis, in float32: two-pass variance, (x - mean) * rstd * scale + bias.

    The gradient is written out, as PyTorch's native layer norm does: the backward pass keeps the input
    and two statistics per row and recomputes the normalised input, where differentiating the formula
    keeps several full-size intermediates.
    """
    return _normalize_layer_fwd(x, scale, bias, eps)[0]


def _normalize_layer_fwd(x, scale, bias, eps):
    centred, mean, rstd = _statistics(x, eps)
    y = centred * (rstd * scale.astype(jnp.float32)) + bias.astype(jnp.float32)
    return y, (x, scale, bias, mean, rstd)


def _normalize_layer_bwd(eps, residuals, g):
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


# ---- activations --------------------------------------------------------------------------------

@jax.custom_jvp
def gelu(x: jnp.ndarray) -> jnp.ndarray:
    """PyTorch's nn.GELU (the exact form): x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))).

    The derivative is written out, Phi(x) + x * phi(x), so the backward pass keeps one tensor per
    activation instead of the erf intermediates that differentiating the formula keeps (the MLP's
    hidden activations are the largest tensors of a Swin block).
    """
    return 0.5 * x * (1 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = 0.5 * (1 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))
    pdf = jnp.exp(-0.5 * x * x) * np.sqrt(0.5 / np.pi).astype(x.dtype)
    return x * cdf, t * (cdf + x * pdf)


@jax.custom_jvp
def softmax(x: jnp.ndarray) -> jnp.ndarray:
    """Softmax over the last axis.

    What `jax.nn.softmax` computes under `jax_softmax_custom_jvp=True` (off by default in JAX 0.10),
    without flipping a global flag for the caller: the derivative y * (t - <t, y>) keeps only the
    probabilities, where the default rule also keeps the exponentials (an attention map per block).
    """
    unnormalised = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return unnormalised / jnp.sum(unnormalised, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = softmax(x)
    return y, y * (t - jnp.sum(t * y, axis=-1, keepdims=True))


# ---- dense layers and regularisation ------------------------------------------------------------

class Dense(nn.Dense):
    """nn.Dense on a 2-D (rows, features) view of the input, whatever its rank; parameters as nn.Dense.

    XLA:CPU computes the weight gradient of a 2-D product straight from the activations; given 3-D or
    4-D activations it first copies them transposed to (features, rows).
    """

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = super().__call__(x.reshape(-1, x.shape[-1]))
        return y.reshape(*x.shape[:-1], y.shape[-1])


def dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype, use_bias: bool = True) -> Dense:
    """A linear layer initialised as the official code does: truncated normal std 0.02, zero bias."""
    return Dense(features, use_bias=use_bias, kernel_init=trunc_normal(), bias_init=nn.initializers.zeros,
                 dtype=dtype, param_dtype=param_dtype, name=name)


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


# ---- the attention core -------------------------------------------------------------------------

# The window-attention core, softmax(q k^T + bias) v, and the kernels that can compute it.
#
# Every Swin attention (V1's scaled dot product, V2's cosine attention) reduces to this one function of
# q, k, v and one additive float32 bias per window: V1 passes its relative position bias, V2 its
# continuous position bias, each with the shifted-window mask folded in; V2 passes normalised q (times
# its logit scale) and normalised k. Nothing is scaled here.
#
# Implementations (`implementation`, the models' `attention_impl`):
# - "xla": two einsums and the softmax above, written for XLA to fuse; the numerics every parity
#   test checks, and the default on CPU.
# - "jax": `jax.nn.dot_product_attention` with its XLA implementation (runs everywhere; it checks that
#   the arguments reach the library kernels as intended).
# - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused attention (GPU,
#   bf16/fp16).
# - "tokamax": `tokamax.dot_product_attention`, its Pallas kernels (Triton or Mosaic on GPU, Mosaic on
#   TPU), falling back to XLA where none applies (CPU).
# - "auto": cuDNN on a GPU in bf16/fp16, tokamax on TPU, else "xla"; "xla" wherever attention dropout is
#   on (no kernel takes it) or a kernel refuses the shapes at trace time.
# The kernels work on blocks of 64 tokens: a window's 49 or 144 tokens are padded to a multiple of 64
# inside, with padded keys masked out and padded queries dropped from the result.

IMPLEMENTATIONS = ("auto", "xla", "jax", "cudnn", "tokamax")
KERNEL_BLOCK = 64  # tokens: the query/key block of cuDNN's and tokamax's flash attention
_PADDED_KEY_BIAS = -1e9  # far below any real logit: a padded key gets exactly zero probability


def split_heads(qkv: jnp.ndarray, heads: int) -> list[jnp.ndarray]:
    """(windows, n, 3C) projections -> q, k, v, each (windows, n, heads, C / heads).

    Split along the features before any transpose, so that the gradient is one concatenation rather
    than three zero-padded copies of the whole tensor added together.
    """
    windows_, n, c3 = qkv.shape
    return [t.reshape(windows_, n, heads, c3 // (3 * heads)) for t in jnp.split(qkv, 3, axis=-1)]


def attention_dropout(rate: float, deterministic: bool) -> Callable[[jnp.ndarray], jnp.ndarray] | None:
    """nn.Dropout(rate) on attention probabilities, for `window_attention`; None when it does nothing.
    Call it inside the attention module's __call__, which then owns the dropout layer."""
    if deterministic or rate == 0.0:
        return None
    return functools.partial(nn.Dropout(rate), deterministic=False)


def window_bias(bias: jnp.ndarray, mask: np.ndarray | None) -> jnp.ndarray:
    """The one additive bias of the core: (heads, n, n) position bias plus the (num_windows, n, n)
    shifted-window mask -> (num_windows, heads, n, n), or (1, heads, n, n) without a mask."""
    bias = jnp.asarray(bias, jnp.float32)[None]
    return bias if mask is None else bias + jnp.asarray(mask, jnp.float32)[:, None]


def resolve(implementation: str, dtype, dropout: bool) -> str:
    """The implementation "auto" stands for on this platform, for inputs of `dtype`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl={implementation!r}: expected one of {', '.join(IMPLEMENTATIONS)}")
    if implementation != "auto":
        return implementation
    if dropout:
        return "xla"
    platform = jax.default_backend()
    if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if platform == "tpu" and _tokamax() is not None:
        return "tokamax"
    return "xla"


def window_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, bias: jnp.ndarray, *,
                     implementation: str = "xla", dropout: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
                     logits_precision=None) -> jnp.ndarray:
    """softmax(q k^T + bias) v in every window: the one function a fused kernel replaces.

    q, k, v: (windows, n, heads, d), already scaled, window w of image b at row b * num_windows + w.
    bias: (num_windows or 1, heads, n, n) float32 (`window_bias`), the same for every image. The logits
    and softmax are float32 whatever the dtype of q and k (the kernels keep their softmax statistics in
    float32 too); the probabilities meet v in v's dtype. `dropout` acts on the probabilities (training
    only; "xla" alone applies it). Returns (windows, n, heads * d).
    """
    chosen = resolve(implementation, q.dtype, dropout is not None)
    if chosen != "xla" and dropout is not None:
        raise ValueError(f"attention_impl={implementation!r} cannot apply attention dropout (attn_drop_rate > 0); "
                         "use 'xla' or 'auto'")
    if chosen == "xla":
        return _xla_attention(q, k, v, bias, dropout, logits_precision)
    try:
        return _kernel_attention(q, k, v, bias, chosen, logits_precision)
    except (NotImplementedError, ValueError, RuntimeError):  # a kernel refusing these shapes, dtype or device
        if implementation != "auto":
            raise
        return _xla_attention(q, k, v, bias, None, logits_precision)


def _per_image(t: jnp.ndarray, num_windows: int) -> jnp.ndarray:
    """(B * num_windows, ...) -> (B, num_windows, ...)."""
    return t.reshape(-1, num_windows, *t.shape[1:])


def _xla_attention(q, k, v, bias, dropout, logits_precision):
    windows_, n = q.shape[:2]
    # Heads-major for both products: asked for a (..., n, heads, d) result directly, XLA:CPU computes a
    # transposed product on a slower path.
    q, k, v = (_per_image(t, bias.shape[0]).transpose(0, 1, 3, 2, 4) for t in (q, k, v))
    logits = jnp.einsum("bwhqd,bwhkd->bwhqk", q, k, precision=logits_precision).astype(jnp.float32) + bias
    probs = softmax(logits).astype(v.dtype)
    if dropout is not None:
        probs = dropout(probs)
    out = jnp.einsum("bwhqk,bwhkd->bwhqd", probs, v).transpose(0, 1, 3, 2, 4)
    return out.reshape(windows_, n, -1)


def _pad_tokens(q, k, v, bias):
    """Pads the windows' tokens to a multiple of KERNEL_BLOCK; padded keys get _PADDED_KEY_BIAS."""
    n = q.shape[1]
    pad = -n % KERNEL_BLOCK
    if not pad:
        return q, k, v, bias
    q, k, v = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
    bias = jnp.pad(bias, ((0, 0), (0, 0), (0, pad), (0, 0)))
    bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, pad)), constant_values=_PADDED_KEY_BIAS)
    return q, k, v, bias


def _kernel_attention(q, k, v, bias, implementation, logits_precision):
    windows_, n, heads, d = q.shape
    num_windows = bias.shape[0]
    q, k, v, bias = _pad_tokens(q, k, v, bias)
    if implementation == "tokamax":
        tokamax = _tokamax()
        if tokamax is None:
            raise ValueError("attention_impl='tokamax' needs the tokamax package (pip install tokamax)")
        # Extra batch axes broadcast: the (num_windows, heads, n, n) bias is shared by every image.
        out = tokamax.dot_product_attention(*(_per_image(t, num_windows) for t in (q, k, v)), bias=bias[None],
                                            scale=1.0, precision=logits_precision)
        out = out.reshape(-1, *out.shape[2:])
    else:
        # jax.nn takes one batch axis; a per-window bias is repeated for every image.
        if num_windows > 1:
            bias = jnp.broadcast_to(bias[None], (windows_ // num_windows, *bias.shape)).reshape(-1, *bias.shape[1:])
        kernel_dtype = q.dtype if implementation == "cudnn" else jnp.float32
        out = jax.nn.dot_product_attention(q, k, v, bias=bias.astype(kernel_dtype), scale=1.0,
                                           implementation="cudnn" if implementation == "cudnn" else "xla")
    return out[:, :n].reshape(windows_, n, heads * d)


@functools.lru_cache(maxsize=None)
def _tokamax():
    try:
        import tokamax
    except ImportError:
        return None
    from absl import flags

    # tokamax reads its options from absl flags and, outside an absl app (pytest, a notebook, an argparse
    # script), would parse this process's command line as absl flags and fail on it: take the defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return tokamax


# ---- dense-prediction heads: resampling and conv-norm-act as PyTorch computes them ----------------

def _bilinear_taps(size_in: int, size_out: int):
    """PyTorch's bilinear taps for align_corners=False, rounded as its kernels round them: the scale
    in / out in float32, the source index (i + 0.5) * scale - 0.5 rounded once to float32 (a fused
    multiply-add), clamped at 0. Returns the two input indices and their weights per output index."""
    f32 = np.float32
    scale = f32(f32(size_in) / f32(size_out))
    source = np.maximum((np.float64(scale) * (np.arange(size_out) + 0.5) - 0.5).astype(f32), f32(0))
    low = np.minimum(np.floor(source).astype(np.int32), size_in - 1)
    high = np.where(low < size_in - 1, low + 1, low)
    weight_high = np.clip(source - low.astype(f32), f32(0), f32(1))
    return low, high, f32(1) - weight_high, weight_high


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of PyTorch's bilinear resizing along one axis (two taps per row)."""
    low, high, weight_low, weight_high = _bilinear_taps(size_in, size_out)
    weights = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    np.add.at(weights, (rows, low), weight_low)
    np.add.at(weights, (rows, high), weight_high)
    return weights


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """F.interpolate(mode="bilinear", align_corners=False) of NHWC maps to `size` = (height, width).

    Along an axis that grows by a whole factor (UPerNet's levels and logits: 2x to 32x), each output is
    two taps of the edge-padded input with weights fixed by its phase: slices, so that the gradient is
    slices too and the pass costs what reading and writing the maps costs. Other sizes are a product
    with a constant two-tap matrix per axis, so that the gradient is another product rather than the
    scatter-add that gathering the taps gives. (jax.image.resize antialiases when shrinking, which
    PyTorch does not.)
    """
    for axis, size_out in ((1, size[0]), (2, size[1])):
        size_in = x.shape[axis]
        if size_in == size_out:
            continue
        if size_in >= 2 and size_out % size_in == 0:
            x = _upsample_axis(x, axis, size_out // size_in)
        else:
            x = jnp.moveaxis(jnp.tensordot(bilinear_matrix(size_in, size_out).astype(x.dtype), x, ((1,), (axis,)),
                                           precision=jax.lax.Precision.HIGHEST), 0, axis)
    return x


def _upsample_axis(x: jnp.ndarray, axis: int, factor: int) -> jnp.ndarray:
    """resize_bilinear by a whole factor along `axis` (PyTorch's taps and weights; at the edges, where
    PyTorch clamps its index, the padded copy of the edge stands in for it)."""
    n = x.shape[axis]
    low, _, weight_low, weight_high = _bilinear_taps(n, n * factor)
    padding = [(0, 0)] * x.ndim
    padding[axis] = (1, 1)
    padded = jnp.pad(x, padding, mode="edge")
    phases = []
    for r in range(factor):
        o = factor + r  # output r of input row 1: taps input rows 1 + shift and 2 + shift
        start = int(low[o])  # = 1 + shift, and padded row j + 1 is input row j
        taps = [jax.lax.slice_in_dim(padded, start + t, start + t + n, axis=axis) for t in (0, 1)]
        phases.append(weight_low[o] * taps[0] + weight_high[o] * taps[1])
    out = jnp.stack(phases, axis=axis + 1)
    return out.reshape(*x.shape[:axis], n * factor, *x.shape[axis + 1:])


def adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) averaging weights of PyTorch's adaptive average pooling: bin i covers
    [floor(i * in / out), ceil((i + 1) * in / out))."""
    weights = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """F.adaptive_avg_pool2d(x, size) of NHWC maps: PyTorch's bins, which overlap when size does not
    divide the map (flax's avg_pool has no such bins)."""
    rows = adaptive_pool_matrix(x.shape[1], size)
    cols = adaptive_pool_matrix(x.shape[2], size)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


class BatchNorm(nn.Module):
    """PyTorch's BatchNorm2d over NHWC maps (eps 1e-5, momentum 0.1), statistics in float32.

    In training the mean and variance are over every row of the global batch (under jit with a sharded
    batch, XLA reduces across devices and processes: what SyncBN gives PyTorch), and the running
    variance is updated with the unbiased variance, as PyTorch does; flax's BatchNorm keeps the biased
    one. `rows` (the batch axis, bool) limits the statistics to the rows PyTorch's batch would hold (a
    detector's sampled RoIs among its padded slots). Parameters `scale`, `bias`; running statistics
    `mean`, `var` in the `batch_stats` collection.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, rows: jnp.ndarray | None = None) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x32 = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            if rows is None:
                mean = jnp.mean(x32, axis=axes)
                var = jnp.mean(jnp.square(x32 - mean), axis=axes)
                count = np.prod([x.shape[i] for i in axes])
            else:
                weight = rows.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
                count = jnp.sum(weight) * np.prod(x.shape[1:-1])
                mean = jnp.sum(x32 * weight, axis=axes) / jnp.maximum(count, 1.0)
                var = jnp.sum(jnp.square(x32 - mean) * weight, axis=axes) / jnp.maximum(count, 1.0)
            if not self.is_initializing():
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = ((1 - self.momentum) * running_var.value
                                     + self.momentum * var * (count / jnp.maximum(count - 1, 1)))
        else:
            mean, var = running_mean.value, running_var.value
        y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


# Convolutions of the dense heads (`conv_impl`):
# - "xla": `lax.conv_general_dilated` and its gradients, and a fusion of several levels (`ConvNormAct`
#   given a list of maps) as mmseg computes it: every level resized to the first one's size,
#   concatenated, convolved.
# - "taps": the same forward and input gradient, the kernel's gradient as one product per tap (input
#   shifted by the tap, times the output gradient); and a fusion convolves each level at its own size
#   and resizes the result (convolution and bilinear resizing are both linear and channel mixing
#   commutes with resizing, so each tap's product is taken at the level's size and resized with the
#   resizing matrices' rows shifted by the tap). The same function up to float rounding. XLA:CPU
#   computes a kernel gradient at a quarter of its matmul rate (2.7 s against 0.87 s for a 3x3 512->512
#   convolution of two 128x128 maps), and the fusion of UPerNet's four levels at their own sizes costs
#   a third of the FLOPs of the concatenation at the finest size.
# - "auto": "taps" on CPU, "xla" elsewhere (GPU and TPU convolutions are native).
CONV_IMPLEMENTATIONS = ("auto", "xla", "taps")


def resolve_conv(implementation: str) -> str:
    """The convolution lowering "auto" stands for on this platform."""
    if implementation not in CONV_IMPLEMENTATIONS:
        raise ValueError(f"conv_impl={implementation!r}: expected one of {', '.join(CONV_IMPLEMENTATIONS)}")
    if implementation != "auto":
        return implementation
    return "taps" if jax.default_backend() == "cpu" else "xla"


def _taps(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """(B, h, w, C) x (k, k, C, O) -> (B, h, w, k, k, O): every tap's 1x1 product, as one matmul."""
    k, _, c, o = kernel.shape
    flat = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c, k * k * o)
    return jnp.dot(x.reshape(-1, c), flat).reshape(*x.shape[:3], k, k, o)


def _xla_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(p, p)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _conv_with_tap_gradient(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    return _xla_conv(x, kernel)


def _conv_with_tap_gradient_fwd(x, kernel):
    return _xla_conv(x, kernel), (x, kernel)


def _conv_with_tap_gradient_bwd(residuals, g):
    x, kernel = residuals
    (dx,) = jax.vjp(lambda x: _xla_conv(x, kernel), x)[1](g)
    k, h, w, p = kernel.shape[0], x.shape[1], x.shape[2], kernel.shape[0] // 2
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    dk = jnp.stack([jnp.einsum("bhwc,bhwo->co", padded[:, dy:dy + h, dx_:dx_ + w], g)
                    for dy in range(k) for dx_ in range(k)])
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_conv_with_tap_gradient.defvjp(_conv_with_tap_gradient_fwd, _conv_with_tap_gradient_bwd)


def conv_same(x: jnp.ndarray, kernel: jnp.ndarray, implementation: str = "auto") -> jnp.ndarray:
    """A stride-1 convolution of NHWC maps with an odd k x k HWIO kernel, zero-padded by k // 2 (the
    output keeps the input's size): PyTorch's Conv2d(padding=k // 2) without its bias."""
    k = kernel.shape[0]
    if kernel.shape[0] != kernel.shape[1] or k % 2 == 0:
        raise ValueError(f"conv_same needs an odd square kernel, got shape {kernel.shape}")
    if resolve_conv(implementation) == "xla":
        return _xla_conv(x, kernel)
    if k == 1:
        return jnp.dot(x, kernel[0, 0])
    return _conv_with_tap_gradient(x, kernel)


def _shifted_bilinear(size_in: int, size_out: int, k: int) -> np.ndarray:
    """(k, size_out, size_in): the bilinear resizing matrix with its rows moved by d - k // 2 for each
    tap d (rows that fall outside are zero: the convolution's zero padding)."""
    weights = bilinear_matrix(size_in, size_out)
    padded = np.pad(weights, ((k // 2, k // 2), (0, 0)))
    return np.stack([padded[d:d + size_out] for d in range(k)])


def conv_same_of_resized(x: jnp.ndarray, kernel: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """conv_same(resize_bilinear(x, size), kernel), computed at x's size: every tap's product first (one
    matmul), then each tap's output resized into place, shifted by the tap."""
    if all(out % n == 0 and n >= 2 for out, n in zip(size, x.shape[1:3])):
        return _conv_of_upsampled(x, kernel, tuple(size))
    return _conv_of_resized_by_matrices(x, kernel, size)


def _conv_of_resized_by_matrices(x, kernel, size):
    """The taps resized by products with the shifted resizing matrices (any sizes)."""
    k = kernel.shape[0]
    rows = jnp.asarray(_shifted_bilinear(x.shape[1], size[0], k), x.dtype)
    cols = jnp.asarray(_shifted_bilinear(x.shape[2], size[1], k), x.dtype)
    taps = _taps(x, kernel)  # (B, h, w, dy, dx, O)
    taps = jnp.einsum("xjw,bhwyxo->byhjo", cols, taps)  # the sum over dx and the columns
    return jnp.einsum("yih,byhjo->bijo", rows, taps)  # over dy and the rows


def _shifted_sum(maps: list[jnp.ndarray], axis: int) -> jnp.ndarray:
    """The sum over taps d of maps[d] moved by d - k // 2 along `axis`, zero-filled."""
    p, n = len(maps) // 2, maps[0].shape[axis]
    padding = [(0, 0)] * maps[0].ndim
    padding[axis] = (p, p)
    return sum(jax.lax.slice_in_dim(jnp.pad(m, padding), d, d + n, axis=axis) for d, m in enumerate(maps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_of_upsampled(x, kernel, size):
    """Whole factors: the taps upsampled by phases (`_upsample_axis`), forward at the cost of writing the
    maps; the gradient through the matrices' transposes, which XLA:CPU computes faster than the
    transposes of the phases' slices."""
    k = kernel.shape[0]
    taps = _taps(x, kernel)  # (B, h, w, dy, dx, O)
    factor_y, factor_x = size[0] // x.shape[1], size[1] // x.shape[2]
    taps = _shifted_sum([_upsample_axis(taps[:, :, :, :, d], 2, factor_x) for d in range(k)], 2)  # (B, h, W, dy, O)
    return _shifted_sum([_upsample_axis(taps[:, :, :, d], 1, factor_y) for d in range(k)], 1)


def _conv_of_upsampled_fwd(x, kernel, size):
    return _conv_of_upsampled(x, kernel, size), (x, kernel)


def _conv_of_upsampled_bwd(size, residuals, g):
    x, kernel = residuals
    return jax.vjp(lambda x, kernel: _conv_of_resized_by_matrices(x, kernel, size), x, kernel)[1](g)


_conv_of_upsampled.defvjp(_conv_of_upsampled_fwd, _conv_of_upsampled_bwd)


class ConvNormAct(nn.Module):
    """mmcv's ConvModule as the Swin segmentation heads use it: a bias-free convolution ('same' padding),
    BatchNorm and ReLU. Given a list of maps it convolves their concatenation after resizing each to the
    first one's size (UPerNet's fusion of its levels), lowered as `conv_impl` says."""

    features: int
    kernel_size: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool, rows: jnp.ndarray | None = None) -> jnp.ndarray:
        maps = list(x) if isinstance(x, (list, tuple)) else [x]
        k, size = self.kernel_size, maps[0].shape[1:3]
        channels = [m.shape[-1] for m in maps]
        kernel = _Parameter("kernel", kaiming_normal_fan_out, (k, k, sum(channels), self.features), self.param_dtype,
                            name="conv")()  # where flax's nn.Conv named "conv" kept it
        maps = [m.astype(self.dtype) for m in maps]
        kernel = kernel.astype(self.dtype)
        implementation = resolve_conv(self.conv_impl)
        if implementation == "xla" or len(maps) == 1:
            joined = jnp.concatenate([maps[0], *(resize_bilinear(m, size) for m in maps[1:])], -1)
            x = conv_same(joined, kernel, implementation)
        else:
            parts = jnp.split(kernel, np.cumsum(channels)[:-1], axis=2)
            x = sum(conv_same(m, part, implementation) if m.shape[1:3] == size else conv_same_of_resized(m, part, size)
                    for m, part in zip(maps, parts))
        x = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x, train, rows)
        return nn.relu(x)


class _Parameter(nn.Module):
    """One parameter in a scope of its own."""

    param_name: str
    initializer: Callable
    shape: tuple
    param_dtype: Dtype

    @nn.compact
    def __call__(self):
        return self.param(self.param_name, self.initializer, self.shape, self.param_dtype)


def bilinear_matrix_of_sizes(size_in: jax.Array, size_out: jax.Array, rows: int, cols: int) -> jax.Array:
    """(rows, cols) bilinear weights (align_corners=False) from the first `size_in` of `cols` inputs to the
    first `size_out` of `rows` outputs, for sizes known only at run time (padded batches of images of
    different sizes); rows past size_out are zero."""
    scale = size_in.astype(jnp.float32) / size_out.astype(jnp.float32)
    i = jnp.arange(rows, dtype=jnp.float32)
    source = jnp.maximum((i + 0.5) * scale - 0.5, 0.0)
    low = jnp.minimum(jnp.floor(source).astype(jnp.int32), size_in - 1)
    high = jnp.where(low < size_in - 1, low + 1, low)
    weight_high = jnp.clip(source - low.astype(jnp.float32), 0.0, 1.0)
    weights = (jax.nn.one_hot(low, cols) * (1.0 - weight_high)[:, None] + jax.nn.one_hot(high, cols) * weight_high[:, None])
    return weights * (jnp.arange(rows) < size_out)[:, None]
