"""The feature pyramid network as mmdet's FPN configures it for the Swin detectors: a 1x1 lateral
convolution per backbone stage, a top-down pathway adding each coarser level resized by nearest
neighbour (PyTorch's `F.interpolate(size=...)` indexing), a 3x3 convolution per level, and extra levels
by max-pooling the last output (kernel 1, stride 2), as `add_extra_convs=False` does.

Parameters: lateral_convs_{i}/conv and fpn_convs_{i}/conv, each a convolution with bias (mmdet's
ConvModule without a norm), xavier-uniform initialised as mmdet's FPN.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from swin_jax.models.layers import Dtype


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """The source index of every output position of PyTorch's nearest resize (mode='nearest', a size
    given): floor(i * in / out) in float32, at most in - 1."""
    scale = np.float32(size_in) / np.float32(size_out)
    return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64), size_in - 1)


def resize_nearest(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """(B, H, W, C) -> (B, size[0], size[1], C) as PyTorch's F.interpolate(mode='nearest', size=size)."""
    x = x[:, nearest_indices(x.shape[1], size[0])]
    return x[:, :, nearest_indices(x.shape[2], size[1])]


class ConvModule(nn.Module):
    """mmcv's ConvModule without a norm or activation: one convolution with bias, PyTorch padding
    (kernel // 2)."""

    features: int
    kernel_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        pad = self.kernel_size // 2
        return nn.Conv(self.features, (self.kernel_size, self.kernel_size), padding=((pad, pad), (pad, pad)),
                       kernel_init=self.kernel_init, bias_init=nn.initializers.zeros,
                       dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)


class FPN(nn.Module):
    """Stage maps (finest first, NHWC) -> `num_outs` pyramid levels of `channels` channels."""

    channels: int = 256
    num_outs: int = 5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jnp.ndarray]) -> tuple[jnp.ndarray, ...]:
        laterals = [ConvModule(self.channels, 1, self.dtype, self.param_dtype, name=f"lateral_convs_{i}")(x)
                    for i, x in enumerate(features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
        outs = [ConvModule(self.channels, 3, self.dtype, self.param_dtype, name=f"fpn_convs_{i}")(x)
                for i, x in enumerate(laterals)]
        while len(outs) < self.num_outs:  # F.max_pool2d(kernel 1, stride 2)
            outs.append(outs[-1][:, ::2, ::2])
        return tuple(o.astype(jnp.float32) for o in outs)
