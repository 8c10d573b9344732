"""SimMIM (Xie et al., arXiv 2111.09886): masked image modeling with a Swin encoder, as the official
`models/simmim.py` of microsoft/Swin-Transformer and Hugging Face's `SwinForMaskedImageModeling`.

The encoder is a Swin with a learned mask token that replaces the embeddings of masked patches, and
no pooling: its last stage map through the final norm. A 1x1 convolution to stride^2 * 3 channels and a
pixel shuffle by the encoder stride (32 for four stages of patch 4) reconstruct the image; the loss is
the L1 distance on the masked pixels only, `sum(|x - x_rec| * m) / (sum(m) + 1e-5) / channels`.

Parameter tree:
  encoder/...          the Swin (with `mask_token`, `norm`)
  decoder/{kernel, bias}
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models.layers import Dtype, torch_default_bias, torch_default_kernel
from swin_jax.models.swin import Swin


def norm_targets(images: jnp.ndarray, window: int) -> jnp.ndarray:
    """The official SimMIM V2 targets: each pixel normalised by the mean and the unbiased variance of its
    channel over the `window` x `window` neighbourhood (an odd window; at the border only the pixels
    inside the image count, as avg_pool2d with count_include_pad=False), `(x - mean) / sqrt(var + 1e-6)`.

    The window sums are differences of cumulative sums along each axis: two passes whatever the window
    (XLA's reduce_window costs window^2 adds a pixel, 2209 at the official 47, and constant-folds the
    pixel counts for tens of seconds)."""
    if window % 2 != 1:
        raise ValueError(f"norm_target window must be odd, got {window}")
    images = images.astype(jnp.float32)
    pad = window // 2

    def box_sum(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (pad + 1, pad)
        total = jnp.cumsum(jnp.pad(x, widths), axis=axis)
        n = x.shape[axis]
        return (jax.lax.slice_in_dim(total, window, window + n, axis=axis)
                - jax.lax.slice_in_dim(total, 0, n, axis=axis))

    def counts(n):  # pixels of each position's window inside 0..n-1
        index = np.arange(n)
        return (np.minimum(index + pad, n - 1) - np.maximum(index - pad, 0) + 1).astype(np.float32)

    height, width = images.shape[1:3]
    count = jnp.asarray(np.outer(counts(height), counts(width))[None, :, :, None])
    mean = box_sum(box_sum(images, 1), 2) / count
    mean_square = box_sum(box_sum(images * images, 1), 2) / count
    variance = jnp.maximum((mean_square - mean * mean) * (count / (count - 1.0)), 0.0)
    return (images - mean) / jnp.sqrt(variance + 1e-6)


def pixel_shuffle(x: jnp.ndarray, factor: int) -> jnp.ndarray:
    """torch.nn.PixelShuffle in NHWC: channel c * f * f + i * f + j of (h, w) goes to pixel
    (h * f + i, w * f + j) of channel c."""
    b, h, w, channels = x.shape
    c = channels // (factor * factor)
    x = x.reshape(b, h, w, c, factor, factor).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * factor, w * factor, c)


def upsample_mask(mask: jnp.ndarray, factor: int) -> jnp.ndarray:
    """A patch-grid mask (B, h, w) as a pixel mask (B, h * factor, w * factor)."""
    return jnp.repeat(jnp.repeat(mask, factor, axis=1), factor, axis=2)


class SimMIM(nn.Module):
    """`apply(variables, images, mask)`: images NHWC (normalised as the pre-training input), `mask` boolean
    (B, H / patch, W / patch), True where a patch is masked (None: nothing masked). Returns {"loss": scalar float32,
    "reconstruction": (B, H, W, in_chans) float32}. `norm_target_window` > 0 takes the loss against
    `norm_targets` of that window (the official V2 recipe's NORM_TARGET, 47)."""

    encoder: Swin
    norm_target_window: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if not self.encoder.use_mask_token or self.encoder.global_pool or self.encoder.num_classes:
            raise ValueError("SimMIM.encoder needs use_mask_token=True, global_pool=False and num_classes=0 "
                             "(create_model('simmim_' + a backbone name) builds it so)")
        if self.norm_target_window and self.norm_target_window % 2 != 1:
            raise ValueError(f"SimMIM.norm_target_window={self.norm_target_window}: must be odd (or 0: off)")
        super().__post_init__()

    @property
    def encoder_stride(self) -> int:
        return self.encoder.patch_size * 2 ** (len(self.encoder.depths) - 1)

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def img_size(self):
        return self.encoder.img_size

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.encoder.input_hw

    @property
    def in_chans(self) -> int:
        return self.encoder.in_chans

    @property
    def mask_grid(self) -> tuple[int, int]:
        return self.encoder.patch_grid

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, train: bool = False) -> dict:
        if x.ndim != 4 or x.shape[1] % self.encoder_stride or x.shape[2] % self.encoder_stride:
            raise ValueError(f"SimMIM needs NHWC images whose height and width the encoder stride "
                             f"{self.encoder_stride} divides, got shape {x.shape}")
        if mask is None:  # nothing masked (e.g. `init` with images only): the loss is 0
            mask = jnp.zeros((x.shape[0], x.shape[1] // self.patch_size, x.shape[2] // self.patch_size), bool)
        z = self.encoder(x, train, mask=mask)
        stride = self.encoder_stride
        channels = stride * stride * self.in_chans
        reconstruction = nn.Conv(channels, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                                 kernel_init=torch_default_kernel, bias_init=torch_default_bias(z.shape[-1]),
                                 name="decoder")(z)
        reconstruction = pixel_shuffle(reconstruction.astype(jnp.float32), stride)
        target = x.astype(jnp.float32)
        if self.norm_target_window:
            target = norm_targets(target, self.norm_target_window)
        pixels = upsample_mask(mask, self.patch_size)[..., None].astype(jnp.float32)
        loss = jnp.sum(jnp.abs(target - reconstruction) * pixels) / (jnp.sum(pixels) + 1e-5) / self.in_chans
        return {"loss": loss, "reconstruction": reconstruction}
