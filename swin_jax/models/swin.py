"""Swin Transformer V1 (Liu et al., arXiv 2103.14030) in Flax linen, NHWC, in the order of the paper:
patch embedding, (shifted) window attention, the Swin block, patch merging, a stage, the model.

`Swin` is the architecture V1 and V2 share; `SwinTransformer` is V1, and swin_v2.py gives V2 as its
differences. Layout of the parameters (the converter and the checkpoints follow it):
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
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers, windows
from swin_jax.models.layers import Dtype, dense, drop_path, layer_norm, trunc_normal


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
        x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", kernel_init=layers.torch_default_kernel,
                    bias_init=layers.torch_default_bias(fan_in), dtype=self.dtype, param_dtype=self.param_dtype,
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
    implementation: str = "auto"  # of the attention core (layers.IMPLEMENTATIONS)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, window: int, mask: np.ndarray | None, deterministic: bool) -> jnp.ndarray:
        n, c = x.shape[1:]
        heads = self.num_heads
        scale = self.qk_scale if self.qk_scale is not None else (c // heads) ** -0.5
        q, k, v = layers.split_heads(dense(3 * c, "qkv", self.dtype, self.param_dtype, self.qkv_bias)(x), heads)

        table = self.param("relative_position_bias_table", trunc_normal(),
                           ((2 * self.table_window - 1) ** 2, heads), self.param_dtype)
        index = windows.relative_position_index(window, self.table_window)
        bias = jnp.asarray(table, jnp.float32)[index.reshape(-1)].reshape(n, n, heads).transpose(2, 0, 1)

        out = layers.window_attention(q * jnp.asarray(scale, q.dtype), k, v, layers.window_bias(bias, mask),
                                      implementation=self.implementation,
                                      dropout=layers.attention_dropout(self.attn_drop_rate, deterministic))
        out = dense(c, "proj", self.dtype, self.param_dtype)(out)
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
        x = nn.Dropout(self.drop_rate)(layers.gelu(x), deterministic=deterministic)
        x = dense(out_dim, "fc2", self.dtype, self.param_dtype)(x)
        return nn.Dropout(self.drop_rate)(x, deterministic=deterministic)


def shifted_window_attention(x: jnp.ndarray, window_size: int, shift_size: int, attend,
                             always_partition: bool = False) -> jnp.ndarray:
    """(Shifted) window attention over a (B, H, W, C) map: `attend(windows, window, mask)` is called on
    (B * num_windows, window * window, C) windows and returns the same shape.

    On a map no larger than the window the whole map is one unshifted window, unless `always_partition`
    (the official detection and segmentation backbone, Hugging Face's SwinBackbone): then the window and
    shift stay as they are, however small the map. Maps that are not a multiple of the window are padded
    with zeros before the cyclic shift, as the official detection backbone and Hugging Face do, and
    cropped back afterwards.
    """
    b, h, w, c = x.shape
    window, shift = (window_size, shift_size) if always_partition else windows.effective_window(
        h, w, window_size, shift_size)
    if shift and not (h % window or w % window):
        order, inverse = windows.shifted_window_order(h, w, window, shift)
        tokens = windows.permute_tokens(x.reshape(b, h * w, c), order, inverse).reshape(-1, window * window, c)
        out = attend(tokens, window, windows.shifted_window_mask(h, w, window, shift))
        return windows.permute_tokens(out.reshape(b, h * w, c), inverse, order).reshape(b, h, w, c)
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
    """(Shifted) window attention and an MLP, each a residual branch with a LayerNorm.

    V1 normalises each branch's input, x + f(norm(x)); V2's `post_norm` normalises its output,
    x + norm(f(x)), with the norms starting at zero as the official code does (each block starts as the
    identity). `attention` builds the window attention, WindowAttention(dim, heads, table_window) or
    V2's cosine attention, with the version's options already bound.
    """

    dim: int
    num_heads: int
    window_size: int
    attention: Callable[..., nn.Module]
    shift_size: int = 0
    post_norm: bool = False
    always_partition: bool = False
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, drop_path_rate=0.0) -> jnp.ndarray:
        scale_init = nn.initializers.zeros if self.post_norm else nn.initializers.ones
        norm1 = layer_norm("norm1", self.dtype, self.param_dtype, scale_init)
        norm2 = layer_norm("norm2", self.dtype, self.param_dtype, scale_init)
        attn = self.attention(self.dim, self.num_heads, self.window_size, name="attn")
        mlp = Mlp(int(self.dim * self.mlp_ratio), self.drop_rate, self.dtype, self.param_dtype, name="mlp")

        def attend(t):
            return shifted_window_attention(t, self.window_size, self.shift_size,
                                            lambda w, window, mask: attn(w, window, mask, self.deterministic),
                                            self.always_partition)

        def residual(x, branch, norm):
            y = norm(branch(x)) if self.post_norm else branch(norm(x))
            return x + drop_path(self, y, drop_path_rate, self.deterministic)

        x = residual(x, attend, norm1)
        return residual(x, lambda t: mlp(t, self.deterministic), norm2)


class SwinBlockPair(nn.Module):
    """One unshifted block followed by one shifted block: the unit that a stage scans over."""

    block: dict  # keyword arguments of SwinBlock shared by both blocks
    shift_size: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, drop_path_rates: jnp.ndarray):
        x = SwinBlock(shift_size=0, name="block0", **self.block)(x, drop_path_rates[0])
        x = SwinBlock(shift_size=self.shift_size, name="block1", **self.block)(x, drop_path_rates[1])
        return x, None


def merge_patches(x: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C): each 2x2 neighbourhood concatenated in the official
    order (top-left, bottom-left, top-right, bottom-right); odd maps get one zero row/column first."""
    h, w = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    return jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)


class PatchMerging(nn.Module):
    """2x2 neighbouring patches concatenated (official order), then LayerNorm over 4C and a linear
    4C -> 2C; with V2's `post_norm` the linear layer comes first and the LayerNorm is over 2C."""

    post_norm: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        norm = layer_norm("norm", self.dtype, self.param_dtype)
        reduction = dense(2 * c, "reduction", self.dtype, self.param_dtype, use_bias=False)
        x = merge_patches(x)
        return norm(reduction(x)) if self.post_norm else reduction(norm(x))


class SwinStage(nn.Module):
    """Optional patch merging, then `depth` blocks alternating no shift / shift (window // 2 by default)."""

    depth: int
    num_heads: int
    window_size: int
    drop_path_rates: tuple[float, ...]
    downsample: bool
    attention: Callable[..., nn.Module]
    shift_size: int | None = None  # of the odd blocks; None: window_size // 2
    post_norm: bool = False
    always_partition: bool = False
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    scan_blocks: bool = True
    scan_unroll: int | bool = 1
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.downsample:
            x = PatchMerging(self.post_norm, self.dtype, self.param_dtype, name="downsample")(x)
        block = dict(dim=x.shape[-1], num_heads=self.num_heads, window_size=self.window_size, attention=self.attention,
                     post_norm=self.post_norm, always_partition=self.always_partition, mlp_ratio=self.mlp_ratio,
                     drop_rate=self.drop_rate,
                     deterministic=not train, dtype=self.dtype, param_dtype=self.param_dtype)
        shift = self.window_size // 2 if self.shift_size is None else self.shift_size
        if self.scan_blocks:
            pair = nn.remat(SwinBlockPair, prevent_cse=False) if self.remat else SwinBlockPair
            blocks = nn.scan(pair, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                             length=self.depth // 2, unroll=self.scan_unroll)
            rates = jnp.asarray(self.drop_path_rates, jnp.float32).reshape(-1, 2)
            x, _ = blocks(block, shift, name="blocks")(x, rates)
        else:
            single = nn.remat(SwinBlock) if self.remat else SwinBlock
            for j in range(self.depth):
                x = single(shift_size=shift if j % 2 else 0, name=f"blocks_{j}", **block)(x, self.drop_path_rates[j])
        return x


class Swin(nn.Module):
    """The architecture Swin V1 and V2 share; `SwinTransformer` (V1) and `SwinTransformerV2` say how a
    stage attends (`window_attention`) and where the norms sit (`post_norm`).

    Input NHWC float images; output logits, pooled features or stage maps:
    - num_classes > 0: logits (float32); num_classes == 0: the pooled, normalised features.
    - out_indices set: the dense backbone; returns the listed stage maps (NHWC), each through its
      own LayerNorm when `out_norm` is true, as the official detection/segmentation backbones.
    - global_pool false (num_classes 0): the last stage map through the final norm, (B, h, w, C): the
      SimMIM encoder's output.
    `use_mask_token` adds SimMIM's learned `mask_token`; `apply(variables, x, mask=m)` with `m` a
    boolean (B, H / patch, W / patch) array replaces the masked patch embeddings by it, after the patch
    embedding's norm and before the position embedding, as the official `SwinTransformerForSimMIM`.
    `partition` says how a stage's window and shift follow its map: "per_map" (Hugging Face's SwinModel)
    decides from the map each block is called on; "per_img_size" (the official classifiers, timm's V2,
    Hugging Face's Swinv2) decides once, from the map at img_size, and keeps that at every input size;
    "always" (the official detection and segmentation backbone, Hugging Face's SwinBackbone) keeps
    window_size and its shift in every stage, however small the map. At img_size all three agree unless
    a stage's map is no larger than the window.
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
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    ape: bool = False
    patch_norm: bool = True
    out_indices: Sequence[int] | None = None
    out_norm: bool = True
    global_pool: bool = True
    use_mask_token: bool = False
    partition: str = "per_map"
    scan_blocks: bool = True
    scan_unroll: int | bool = 1  # lax.scan's `unroll` for the block pairs (the parameters stay stacked)
    remat: bool = False
    attention_impl: str = "auto"  # the window-attention kernel, see layers.py
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    post_norm: ClassVar[bool] = False

    def window_attention(self, stage: int) -> Callable[..., nn.Module]:
        """What builds stage `stage`'s window attention from (dim, num_heads, table_window)."""
        raise NotImplementedError

    def __post_init__(self):
        self._check_config()
        super().__post_init__()

    def _fail(self, field: str, message: str):
        raise ValueError(f"{type(self).__name__}.{field}={getattr(self, field)!r}: {message}")

    def _check_config(self):
        if len(self.depths) != len(self.num_heads):
            self._fail("num_heads", f"needs one entry per stage, and depths={tuple(self.depths)} has {len(self.depths)}")
        if not self.depths or any(d < 1 for d in self.depths):
            self._fail("depths", "every stage needs at least one block")
        if self.scan_blocks and any(d % 2 for d in self.depths):
            self._fail("depths", "scanned stages hold (no shift, shift) block pairs, so every depth must be even; "
                                 "set scan_blocks=False for odd depths")
        for i, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2 ** i
            if heads < 1 or dim % heads:
                self._fail("num_heads", f"stage {i} has {dim} channels, which {heads} heads do not divide")
        if self.window_size < 1:
            self._fail("window_size", "must be a positive number of patches")
        if self.patch_size < 1:
            self._fail("patch_size", "must be positive")
        grid = self.patch_grid
        if min(grid) < 2 ** (len(self.depths) - 1):
            self._fail("img_size", f"a {grid[0]}x{grid[1]} patch grid is too small for {len(self.depths)} stages")
        if self.partition not in ("per_map", "per_img_size", "always"):
            self._fail("partition", "must be 'per_map', 'per_img_size' or 'always'")
        if self.attention_impl not in layers.IMPLEMENTATIONS:
            self._fail("attention_impl", f"must be one of {', '.join(map(repr, layers.IMPLEMENTATIONS))}")
        if self.out_indices is not None:
            bad = [i for i in self.out_indices if not 0 <= i < len(self.depths)]
            if bad or not self.out_indices:
                self._fail("out_indices", f"must list stages in 0..{len(self.depths) - 1}")
        if not self.global_pool and (self.num_classes or self.out_indices is not None):
            self._fail("global_pool", "False (the unpooled final map) needs num_classes=0 and no out_indices")

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
        if self.partition == "always":
            return [self.window_size] * len(self.depths)
        out = []
        for i in range(len(self.depths)):
            res = [g // 2 ** i for g in self.patch_grid]
            out.append(windows.effective_window(res[0], res[1], self.window_size, 0)[0])
        return out

    def stage_shifts(self) -> list[int]:
        """Each stage's shift of its odd blocks (where `partition` fixes it; per_map decides per call)."""
        if self.partition != "per_img_size":
            return [w // 2 for w in self.stage_windows()]
        return [0 if min(g // 2 ** i for g in self.patch_grid) <= self.window_size else w // 2
                for i, w in enumerate(self.stage_windows())]

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, mask: jnp.ndarray | None = None):
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (batch, height, width, {self.in_chans}) (NHWC), "
                             f"got shape {x.shape}")
        if x.shape[-1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} channels last (NHWC), got shape {x.shape}; "
                             f"NCHW input needs x.transpose(0, 2, 3, 1)")
        x = jnp.asarray(x, self.dtype)
        x = PatchEmbed(self.patch_size, self.embed_dim, self.patch_norm, self.dtype, self.param_dtype,
                       name="patch_embed")(x)
        if self.use_mask_token:
            token = self.param("mask_token", trunc_normal(), (self.embed_dim,), self.param_dtype)
            if mask is not None:
                self._check_mask(mask, x.shape[:3])
                w = mask[..., None].astype(self.dtype)
                x = x * (1.0 - w) + token.astype(self.dtype) * w
        elif mask is not None:
            raise ValueError(f"{type(self).__name__} got a mask but has no mask token: build it with "
                             f"use_mask_token=True (create_model('simmim_' + name))")
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
            start = sum(self.depths[:i])
            x = SwinStage(depth, heads, self.stage_windows()[i], tuple(rates[start:start + depth]), downsample=i > 0,
                          attention=self.window_attention(i), shift_size=self.stage_shifts()[i],
                          post_norm=self.post_norm, always_partition=self.partition != "per_map",
                          mlp_ratio=self.mlp_ratio,
                          drop_rate=self.drop_rate, scan_blocks=self.scan_blocks, scan_unroll=self.scan_unroll,
                          remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}")(x, train)
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
        if not self.global_pool:
            return x
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if not self.num_classes:
            return x
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        x = dense(self.num_classes, "head", self.dtype, self.param_dtype)(x.astype(self.dtype))
        return x.astype(jnp.float32)


    def _check_mask(self, mask: jnp.ndarray, grid: tuple[int, int, int]) -> None:
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean (True = masked patch), got dtype {mask.dtype}")
        if tuple(mask.shape) != tuple(grid):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the patch grid: expected "
                             f"(batch, height / {self.patch_size}, width / {self.patch_size}) = {tuple(grid)}")


class SwinTransformer(Swin):
    """Swin Transformer V1: scaled dot-product window attention with a learned relative position bias
    table (`qk_scale` overrides the head_dim ** -0.5 scale), pre-norm blocks. See `Swin` for the
    options and outputs."""

    qk_scale: float | None = None

    def window_attention(self, stage: int) -> Callable[..., nn.Module]:
        return functools.partial(WindowAttention, qkv_bias=self.qkv_bias, qk_scale=self.qk_scale,
                                 attn_drop_rate=self.attn_drop_rate, proj_drop_rate=self.drop_rate,
                                 implementation=self.attention_impl, dtype=self.dtype, param_dtype=self.param_dtype)


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
