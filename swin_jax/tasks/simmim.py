"""SimMIM pre-training (official `main_simmim_pt.py`): masked image modeling on unlabelled images.

Input: RandomResizedCrop to config.input.image_size (scale 0.67-1, ratio 3/4-4/3, bilinear), horizontal
flip, normalisation; labels, where the source has them, are ignored. The mask of each image is drawn on
device from the step's data key, so it is a function of (seed, step) like the rest of the batch: exactly
ceil(cells * mask_ratio) of the mask_patch_size cells, as the official MaskGenerator.

Evaluation: the reconstruction loss on the held-out images under masks drawn from a fixed key (the same
masks at every evaluation, so the numbers compare across steps); TensorBoard gets a few of them as
original | masked | reconstruction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from swin_jax import data
from swin_jax.data import on_device
from swin_jax.models import create_model
from swin_jax.tasks.base import Task, model_options

EVAL_MASK_SEED = 1234


def masks_for(model, config, rng, batch: int, size: int) -> jax.Array:
    return on_device.simmim_masks(rng, batch, size, mask_patch_size=config.input.mask_patch_size,
                                  model_patch_size=model.patch_size, ratio=config.input.mask_ratio)


def triptych(images: np.ndarray, masks: np.ndarray, reconstruction: np.ndarray, patch_size: int,
             mean=on_device.IMAGENET_MEAN, std=on_device.IMAGENET_STD) -> np.ndarray:
    """uint8 rows original | masked (masked patches grey) | reconstruction (the model's pixels where
    masked, the original where visible), from normalised images and reconstructions. Normalised-target
    reconstructions (V2's NORM_TARGET) are brought back with each image's own mean and spread."""
    pixels = np.repeat(np.repeat(np.asarray(masks, bool), patch_size, 1), patch_size, 2)[..., None]
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    to_uint8 = lambda x: np.clip(np.round((x * std + mean) * 255.0), 0, 255).astype(np.uint8)  # noqa: E731
    original = to_uint8(images)
    masked = np.where(pixels, np.uint8(127), original)
    filled = to_uint8(np.where(pixels, reconstruction, images))
    return np.concatenate([original, masked, filled], axis=2)


class MaskedImageModeling(Task):
    name = "simmim"
    best_metric = ""  # a lower reconstruction loss is not a better model for fine-tuning: keep the latest

    def inputs(self, config, *, train: bool):
        training = data.train_input(config.input, seed=config.seed) if train else None
        return training, data.eval_input(config.input)

    def build_model(self, config, num_classes: int):
        return create_model(config.model, img_size=config.input.image_size, **model_options(config),
                            **config.model_overrides)

    def init_variables(self, model, rng):
        size = model.input_hw
        images = jnp.zeros((1, *size, model.in_chans), jnp.float32)
        return {"params": model.init(rng, images, jnp.zeros((1, *model.mask_grid), bool))["params"]}

    def train_loss(self, model, params, model_state, batch, rngs, config, num_classes):
        k_data, k_dropout = rngs
        images = on_device.normalize(batch["image"], dtype=jnp.dtype(config.model_dtype))
        masks = masks_for(model, config, k_data, images.shape[0], images.shape[1])
        out = model.apply({"params": params}, images, masks, train=True, rngs={"dropout": k_dropout})
        return out["loss"], (model_state, {})

    def _eval_outputs(self, model, variables, batch, config):
        images = on_device.normalize(batch["image"], dtype=jnp.dtype(config.model_dtype))
        masks = masks_for(model, config, jax.random.key(EVAL_MASK_SEED), images.shape[0], images.shape[1])
        return images, masks, model.apply(variables, images, masks)

    def eval_sums(self, model, variables, batch, config):
        """The masked L1 of every real image, summed: per image |x - x_rec| over its masked pixels."""
        images, masks, out = self._eval_outputs(model, variables, batch, config)
        target = images.astype(jnp.float32)
        if model.norm_target_window:
            from swin_jax.models.simmim import norm_targets

            target = norm_targets(target, model.norm_target_window)
        pixels = jnp.repeat(jnp.repeat(masks, model.patch_size, 1), model.patch_size, 2)[..., None]
        per_image = jnp.sum(jnp.abs(target - out["reconstruction"]) * pixels, axis=(1, 2, 3)) / (
            jnp.sum(pixels, axis=(1, 2, 3)) * model.in_chans)
        mask = batch["mask"].astype(jnp.float32)
        return {"loss": jnp.sum(per_image * mask), "count": jnp.sum(mask)}

    def summarize(self, totals, evaluation):
        count = max(float(totals["count"]), 1.0)
        return {"eval_loss": float(totals["loss"]) / count, "eval_examples": float(totals["count"])}

    def report(self, results, class_names):
        return (f"eval reconstruction loss (masked L1) {results['eval_loss']:.4f} "
                f"({int(results['eval_examples'])} images)")

    def previews(self, model, variables, evaluation, config, batch_sharding):
        count = config.input.preview_images
        if not count:
            return {}
        def predict(variables, batch):
            images, masks, out = self._eval_outputs(model, variables, batch, config)
            return images, masks, out["reconstruction"]

        batch, (images, masks, reconstruction) = self.preview_outputs(model, variables, evaluation, batch_sharding,
                                                                      predict)
        keep = np.flatnonzero(jax.device_get(batch["mask"]))[:count]
        if model.norm_target_window:  # back from each image's normalised targets, roughly
            scale = images[keep].std(axis=(1, 2), keepdims=True)
            reconstruction = reconstruction[keep] * scale + images[keep].mean(axis=(1, 2), keepdims=True)
        else:
            reconstruction = reconstruction[keep]
        return {"eval/original | masked | reconstruction": triptych(images[keep], masks[keep], reconstruction,
                                                                     model.patch_size)}


TASK = MaskedImageModeling()
