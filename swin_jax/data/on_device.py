"""The batch-level end of the recipe, run on device inside the jitted step: normalisation, random
erasing, Mixup / CutMix and label smoothing, as timm (`RandomErasing`, `Mixup` in 'batch' mode).

The host pipeline ships uint8 images (a quarter of the bytes of float32) and does only what needs the
single image: decode, crop, resize, flip, RandAugment. Everything here is elementwise or per-batch
work that costs the accelerator next to nothing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASE_ATTEMPTS = 10


def normalize(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=jnp.float32) -> jax.Array:
    """uint8 pixels -> (x / 255 - mean) / std, in one multiply-add."""
    scale = jnp.asarray([1.0 / (255.0 * s) for s in std], jnp.float32)
    offset = jnp.asarray([-m / s for m, s in zip(mean, std)], jnp.float32)
    return (images.astype(jnp.float32) * scale + offset).astype(dtype)


def erasing_boxes(rng: jax.Array, batch: int, height: int, width: int, *, prob: float,
                  area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3)) -> jax.Array:
    """One box per image as timm's RandomErasing: with probability `prob`, the first of ten tries of an
    area fraction uniform in `area` and a log-uniform aspect that fits. Returns a (batch, H, W) mask."""

    def one(key):
        k_area, k_aspect, k_top, k_left, k_apply = jax.random.split(key, 5)
        target = jax.random.uniform(k_area, (ERASE_ATTEMPTS,), minval=area[0], maxval=area[1]) * height * width
        ratio = jnp.exp(jax.random.uniform(k_aspect, (ERASE_ATTEMPTS,), minval=math.log(aspect[0]),
                                           maxval=math.log(aspect[1])))
        h = jnp.round(jnp.sqrt(target * ratio)).astype(jnp.int32)
        w = jnp.round(jnp.sqrt(target / ratio)).astype(jnp.int32)
        fits = (h < height) & (w < width)
        first = jnp.argmax(fits)
        h, w = h[first], w[first]
        top = jax.random.randint(k_top, (), 0, height - h + 1)
        left = jax.random.randint(k_left, (), 0, width - w + 1)
        erase = fits.any() & (jax.random.uniform(k_apply) < prob)
        rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
        return erase & (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)

    return jax.vmap(one)(jax.random.split(rng, batch))


def random_erasing(rng: jax.Array, images: jax.Array, *, prob: float = 0.25, mode: str = "pixel") -> jax.Array:
    """Erase one box per image of a normalised batch (N, H, W, C), filled with per-pixel unit normal noise
    ('pixel'), one normal colour per image ('rand') or zeros ('const')."""
    if prob <= 0:
        return images
    k_boxes, k_fill = jax.random.split(rng)
    n, h, w, c = images.shape
    boxes = erasing_boxes(k_boxes, n, h, w, prob=prob)[..., None]
    if mode == "pixel":
        fill = jax.random.normal(k_fill, images.shape, images.dtype)
    elif mode == "rand":
        fill = jax.random.normal(k_fill, (n, 1, 1, c), images.dtype)
    elif mode == "const":
        fill = jnp.zeros((), images.dtype)
    else:
        raise ValueError(f"random erasing mode must be 'pixel', 'rand' or 'const', not {mode!r}")
    return jnp.where(boxes, fill, images)


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """One-hot targets with `smoothing` of the mass spread evenly over all classes (timm's convention)."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int):
    """timm's rand_bbox: a box of side fractions sqrt(1 - lam) centred uniformly, clipped to the image.
    Returns an (height, width) bool mask and lambda corrected to the box actually cut."""
    cut = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return box, 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)


def mix(rng: jax.Array, images: jax.Array, labels: jax.Array, *, num_classes: int, mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0, switch_prob: float = 0.5, prob: float = 1.0,
        label_smoothing: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """Mix a batch (N, H, W, C) with integer labels (N,); returns mixed images and soft targets (N, classes)
    whose rows sum to 1. One lambda per batch; image i is mixed with image N-1-i. With both alphas 0
    (or prob 0) it only smooths the labels."""
    targets = smooth_one_hot(labels, num_classes, label_smoothing)
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
        return images, targets
    k_apply, k_switch, k_mixup, k_cutmix, k_box = jax.random.split(rng, 5)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mixup = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
    lam_cutmix = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1)
    apply = jax.random.uniform(k_apply) < prob

    box, lam_box = cutmix_box(k_box, lam_cutmix, images.shape[1], images.shape[2])
    mirrored = images[::-1]
    cutmixed = jnp.where(box[None, :, :, None], mirrored, images)
    lam_mixup = lam_mixup.astype(images.dtype)
    mixed = images * lam_mixup + mirrored * (1 - lam_mixup)
    images = jnp.where(apply, jnp.where(use_cutmix, cutmixed, mixed), images)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_box, lam_mixup.astype(jnp.float32)), 1.0)
    return images, lam * targets + (1.0 - lam) * targets[::-1]


def train_batch(rng: jax.Array, images: jax.Array, labels: jax.Array, config, *, num_classes: int,
                dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """uint8 images and integer labels from the host -> model inputs and soft targets, following
    `config.input` (random_erase*, mixup*, cutmix_alpha, label_smoothing). Call it inside the jitted step."""
    k_erase, k_mix = jax.random.split(rng)
    x = normalize(images, dtype=jnp.float32)
    x = random_erasing(k_erase, x, prob=config.random_erase, mode=config.random_erase_mode)
    x, targets = mix(k_mix, x, labels, num_classes=num_classes, mixup_alpha=config.mixup_alpha,
                     cutmix_alpha=config.cutmix_alpha, switch_prob=config.mixup_switch_prob,
                     prob=config.mixup_prob, label_smoothing=config.label_smoothing)
    return x.astype(dtype), targets


def segmentation_batch(images: jax.Array, valid: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Normalised segmentation inputs with the padding beyond each image's `valid` (h, w) set to 0, as
    mmseg's Pad after Normalize leaves it (the host pads uint8 pixels, which would normalise to -mean/std)."""
    x = normalize(images, dtype=jnp.float32)
    rows = jnp.arange(x.shape[1])[None, :, None] < valid[:, 0, None, None]
    cols = jnp.arange(x.shape[2])[None, None, :] < valid[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], x, 0.0).astype(dtype)


def simmim_mask_count(input_size: int, mask_patch_size: int, model_patch_size: int, ratio: float) -> tuple[int, int]:
    """(cells per side, masked cells) of the official SimMIM MaskGenerator: the image is cut into
    mask_patch_size cells, ceil(cells * ratio) of them are masked. Sizes that do not divide are errors."""
    if input_size % mask_patch_size:
        raise ValueError(f"mask_patch_size={mask_patch_size} does not divide the input size {input_size}")
    if mask_patch_size % model_patch_size:
        raise ValueError(f"the model's patch size {model_patch_size} does not divide mask_patch_size={mask_patch_size}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask_ratio={ratio} must lie strictly between 0 and 1")
    side = input_size // mask_patch_size
    return side, int(math.ceil(side * side * ratio))


def simmim_masks(rng: jax.Array, batch: int, input_size: int, *, mask_patch_size: int = 32,
                 model_patch_size: int = 4, ratio: float = 0.6) -> jax.Array:
    """SimMIM masks (batch, input / model_patch, input / model_patch), bool: per image exactly
    ceil(cells * ratio) of the mask_patch_size cells, uniformly at random (a random permutation's first
    ones, as the official MaskGenerator), each repeated over the model patches it covers."""
    side, count = simmim_mask_count(input_size, mask_patch_size, model_patch_size, ratio)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch, side * side)), axis=1), axis=1)
    cells = (ranks < count).reshape(batch, side, side)
    scale = mask_patch_size // model_patch_size
    return jnp.repeat(jnp.repeat(cells, scale, axis=1), scale, axis=2)
