"""UPerNet (Xiao et al., arXiv 1807.10221) on a Swin backbone, as the official Swin semantic-segmentation
code configures it (mmsegmentation's EncoderDecoder with a UPerHead and an auxiliary FCNHead).

The backbone gives four stage maps (V1: each through its own LayerNorm). The decode head pools the last
map at four scales (pyramid pooling), fuses it with 1x1 lateral projections of the others top-down, puts
every level through a 3x3 convolution, resizes them all to the finest map (1/4 of the input),
concatenates and fuses them, and classifies each pixel; the auxiliary head classifies stage 2 alone
(training only). Logits are resized bilinearly to the input. Parameter and statistic names:
  backbone/...                               the Swin backbone (out_indices 0..3)
  decode_head/psp_modules_{i}/{conv, bn}     pyramid pooling, one per pool scale
  decode_head/bottleneck, lateral_convs_{i}, fpn_convs_{i}, fpn_bottleneck   conv-BN-ReLU modules
  decode_head/conv_seg                       the 1x1 classifier
  auxiliary_head/convs_0, auxiliary_head/conv_seg
BatchNorm running statistics live in the `batch_stats` collection under the same names.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models.layers import ConvNormAct, Dtype, adaptive_avg_pool, resize_bilinear


def classifier(num_classes: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Conv:
    """mmseg's conv_seg: a 1x1 convolution initialised normal(0, 0.01), zero bias."""
    return nn.Conv(num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros,
                   dtype=dtype, param_dtype=param_dtype, name=name)


class UPerHead(nn.Module):
    """The UPerNet decode head over a list of stage maps (finest first); logits at the finest map's size."""

    num_classes: int
    channels: int = 512
    pool_scales: Sequence[int] = (1, 2, 3, 6)
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # layers.CONV_IMPLEMENTATIONS

    @nn.compact
    def __call__(self, features: Sequence[jnp.ndarray], train: bool = False) -> jnp.ndarray:
        def conv(kernel_size, name):
            return ConvNormAct(self.channels, kernel_size, self.dtype, self.param_dtype, self.conv_impl, name=name)

        top = features[-1]
        pooled = [resize_bilinear(conv(1, f"psp_modules_{i}")(adaptive_avg_pool(top, scale), train), top.shape[1:3])
                  for i, scale in enumerate(self.pool_scales)]
        laterals = [conv(1, f"lateral_convs_{i}")(x, train) for i, x in enumerate(features[:-1])]
        laterals.append(conv(3, "bottleneck")(jnp.concatenate([top, *pooled], axis=-1), train))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level plus the coarser one, resized
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
        outs = [conv(3, f"fpn_convs_{i}")(x, train) for i, x in enumerate(laterals[:-1])] + [laterals[-1]]
        x = conv(3, "fpn_bottleneck")(outs, train)  # every level resized to the finest, concatenated
        x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2))(x, deterministic=not train)  # Dropout2d
        return classifier(self.num_classes, "conv_seg", self.dtype, self.param_dtype)(x)


class FCNHead(nn.Module):
    """The auxiliary head: `num_convs` 3x3 conv-BN-ReLU modules on one stage map, then a classifier."""

    num_classes: int
    channels: int = 256
    num_convs: int = 1
    in_index: int = 2
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # layers.CONV_IMPLEMENTATIONS

    @nn.compact
    def __call__(self, features: Sequence[jnp.ndarray], train: bool = False) -> jnp.ndarray:
        x = features[self.in_index]
        for i in range(self.num_convs):
            x = ConvNormAct(self.channels, 3, self.dtype, self.param_dtype, self.conv_impl, name=f"convs_{i}")(x, train)
        x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2))(x, deterministic=not train)
        return classifier(self.num_classes, "conv_seg", self.dtype, self.param_dtype)(x)


class UPerNet(nn.Module):
    """A Swin backbone (a `Swin` with out_indices (0, 1, 2, 3)) with the UPerNet and auxiliary FCN heads.

    `apply(variables, images)` (NHWC) returns float32 logits (B, H, W, num_classes) at the input size;
    `apply(..., train=True, mutable=["batch_stats"], rngs={"dropout": key})` returns the main and
    auxiliary logits, both at the input size, and the updated running statistics; `with_auxiliary=True`
    returns both in evaluation too.
    """

    backbone: nn.Module
    num_classes: int = 150
    channels: int = 512
    pool_scales: Sequence[int] = (1, 2, 3, 6)
    auxiliary_channels: int = 256
    auxiliary_in_index: int = 2
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # the heads' convolutions: layers.CONV_IMPLEMENTATIONS

    def __post_init__(self):
        indices = getattr(self.backbone, "out_indices", None)
        if indices is None or tuple(indices) != tuple(range(len(self.backbone.depths))):
            raise ValueError(f"UPerNet.backbone needs out_indices={tuple(range(len(self.backbone.depths)))} "
                             f"(every stage map), got {indices}")
        if not 0 <= self.auxiliary_in_index < len(self.backbone.depths):
            raise ValueError(f"UPerNet.auxiliary_in_index={self.auxiliary_in_index}: the backbone has "
                             f"{len(self.backbone.depths)} stages")
        super().__post_init__()

    @property
    def img_size(self):
        return self.backbone.img_size

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.backbone.input_hw

    @property
    def in_chans(self) -> int:
        return self.backbone.in_chans

    HEAD_NAMES: ClassVar[tuple[str, str]] = ("decode_head", "auxiliary_head")

    @nn.nowrap
    def heads(self, named: bool = True) -> tuple[UPerHead, FCNHead]:
        """The decode and auxiliary heads; `named=False` builds them standalone (`init_heads`)."""
        decode, auxiliary = (dict(name=n) if named else {} for n in self.HEAD_NAMES)
        options = dict(dropout_rate=self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype,
                       conv_impl=self.conv_impl)
        return (UPerHead(self.num_classes, self.channels, self.pool_scales, **decode, **options),
                FCNHead(self.num_classes, self.auxiliary_channels, 1, self.auxiliary_in_index, **auxiliary, **options))

    @nn.nowrap
    def stage_channels(self) -> list[int]:
        return [self.backbone.embed_dim * 2 ** i for i in range(len(self.backbone.depths))]

    @nn.nowrap
    def init_heads(self, rng) -> dict:
        """Fresh variables of the two heads alone ({"params", "batch_stats"}, under decode_head and
        auxiliary_head), without running the backbone."""
        stages = len(self.stage_channels())
        features = [jnp.zeros((1, 2 ** (stages - 1 - i), 2 ** (stages - 1 - i), c), self.dtype)
                    for i, c in enumerate(self.stage_channels())]
        out = {"params": {}, "batch_stats": {}}
        for name, head, key in zip(self.HEAD_NAMES, self.heads(named=False), jax.random.split(rng)):
            variables = head.init(key, features)
            for collection in out:
                out[collection][name] = variables[collection]
        return out

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, with_auxiliary: bool = False):
        features = self.backbone(x, train)
        decode_head, auxiliary_head = self.heads()
        logits = resize_bilinear(decode_head(features, train).astype(jnp.float32), x.shape[1:3])
        both = train or with_auxiliary
        if not both and not self.is_initializing():
            return logits
        auxiliary = resize_bilinear(auxiliary_head(features, train).astype(jnp.float32), x.shape[1:3])
        return (logits, auxiliary) if both else logits


# ---- inference modes (mmseg's test_cfg) -------------------------------------------------------------

def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding crops (y0, y1, x0, x1): a grid of stride apart, the last crop of each row and
    column moved back inside the image; an image smaller than the crop is one crop of its own size."""
    def starts(size):
        count = max(size - crop + stride - 1, 0) // stride + 1
        return [(max(min(i * stride + crop, size) - crop, 0), min(i * stride + crop, size)) for i in range(count)]
    return [(y0, y1, x0, x1) for y0, y1 in starts(height) for x0, x1 in starts(width)]


def segment_logits(apply_fn, images: jnp.ndarray, *, mode: str = "whole", crop: int = 512,
                   stride: int = 341) -> jnp.ndarray:
    """Logits (B, H, W, classes) at the input size: `whole` runs the model on the whole image (the
    official Swin setting); `slide` on overlapping crop x crop windows `stride` apart, averaging the
    logits where windows overlap. `apply_fn(images)` is the model's forward in evaluation mode, e.g.
    `jax.jit(functools.partial(model.apply, variables))`."""
    if mode == "whole":
        return apply_fn(images)
    if mode != "slide":
        raise ValueError(f"mode={mode!r}: must be 'whole' or 'slide'")
    if crop < 1 or not 0 < stride <= crop:
        raise ValueError(f"slide needs crop >= 1 and 0 < stride <= crop, got crop={crop}, stride={stride}")
    b, h, w, _ = images.shape
    total, count = None, np.zeros((1, h, w, 1), np.float32)
    for y0, y1, x0, x1 in slide_windows(h, w, crop, stride):
        logits = apply_fn(images[:, y0:y1, x0:x1])
        padded = jnp.pad(logits, ((0, 0), (y0, h - y1), (x0, w - x1), (0, 0)))
        total = padded if total is None else total + padded
        count[:, y0:y1, x0:x1] += 1
    return total / count


def segment_probabilities(apply_fn, images: jnp.ndarray, *, mode: str = "whole", crop: int = 512,
                          stride: int = 341, scales: Sequence[float] = (1.0,), flip: bool = False) -> jnp.ndarray:
    """Class probabilities (B, H, W, classes) averaged over rescaled (`scales`, ratios of the input
    size, e.g. 0.5 ... 1.75 for the official multi-scale numbers) and, with `flip`, horizontally
    flipped copies of the input, each brought back to the input size: mmseg's aug_test, which
    averages softmax outputs."""
    h, w = images.shape[1:3]
    total, views = 0.0, 0
    for scale in scales:
        size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
        scaled = resize_bilinear(images, size)
        for flipped in ((False, True) if flip else (False,)):
            view = scaled[:, :, ::-1] if flipped else scaled
            logits = segment_logits(apply_fn, view, mode=mode, crop=crop, stride=stride)
            logits = logits[:, :, ::-1] if flipped else logits
            total = total + jax.nn.softmax(resize_bilinear(logits, (h, w)), axis=-1)
            views += 1
    return total / views
