"""Semantic segmentation: UPerNet-Swin trained and evaluated as the official Swin segmentation code
(mmsegmentation 0.11) does.

Loss: pixel cross entropy of the decode head plus `auxiliary_weight` times the auxiliary head's, each
the mean over every pixel of the batch with ignored pixels contributing zero (mmseg's CrossEntropyLoss
with reduction 'mean' and no avg_factor: ignored pixels stay in the denominator). BatchNorm statistics
of the heads are taken over the global batch (SyncBN) and kept in `batch_stats`.

Evaluation: whole-image logits, resized bilinearly to the annotation's original size, argmax; per class
the intersection, the predicted area and the labelled area are summed over the whole evaluation set
(on device, over every device and process) and give mmseg's metrics: IoU and Acc per class, mIoU and
mAcc as means over the classes that occur (NaN-aware), aAcc over all labelled pixels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from swin_jax import data
from swin_jax.data import on_device
from swin_jax.models import create_model
from swin_jax.models.layers import bilinear_matrix_of_sizes
from swin_jax.tasks.base import Task, model_options, stack_panels


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = 255,
                        class_weight=None) -> jax.Array:
    """mmseg's cross entropy (reduction 'mean', no avg_factor): summed over labelled pixels, divided by
    all pixels, ignored ones included; with `class_weight` each pixel's term is scaled by its class's
    weight (F.cross_entropy's `weight` with reduction 'none', as mmseg applies it)."""
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    if class_weight is not None:
        picked = picked * jnp.asarray(class_weight, jnp.float32)[safe]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / labels.size


def area_counts(pred: jax.Array, labels: jax.Array, num_classes: int, ignore_index: int = 255) -> dict:
    """mmseg's intersect_and_union summed over a batch: per class the pixels predicted and labelled
    that class, predicted, and labelled, over pixels whose label is not `ignore_index`."""
    valid = labels != ignore_index
    labels = labels.astype(jnp.int32)

    def count(values, where):
        return jnp.bincount(jnp.where(where, values, num_classes).ravel(), length=num_classes + 1)[:num_classes]

    return {"intersect": count(labels, valid & (pred == labels)), "area_pred": count(pred, valid),
            "area_label": count(labels, valid)}


def iou_metrics(intersect, area_pred, area_label) -> dict:
    """mmseg's total_area_to_metrics: IoU = I / U and Acc = I / labelled per class (NaN where the class
    is in neither prediction nor labels, resp. not labelled); mIoU, mAcc the NaN-aware means; aAcc."""
    intersect, area_pred, area_label = (np.asarray(a, np.float64) for a in (intersect, area_pred, area_label))
    union = area_pred + area_label - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = intersect / union, intersect / area_label
        aacc = intersect.sum() / area_label.sum()
    nan_mean = (lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan"))
    return {"iou": iou, "acc": acc, "miou": nan_mean(iou), "macc": nan_mean(acc), "aacc": float(aacc)}


def class_names_for(input_config, num_classes: int, from_source=None) -> tuple[str, ...]:
    if input_config.class_names:
        names = tuple(input_config.class_names)
    elif from_source:
        names = tuple(from_source)
    elif num_classes == 150:
        from swin_jax.data.ade20k import CLASSES
        names = CLASSES
    else:
        names = tuple(f"class {i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"config.input.class_names has {len(names)} names for {num_classes} classes")
    return names


class Segmentation(Task):
    name = "segmentation"
    best_metric = "eval_miou"

    def inputs(self, config, *, train: bool):
        training = data.segmentation_train_input(config.input, seed=config.seed) if train else None
        evaluation = data.segmentation_eval_input(config.input)
        evaluation.class_names = class_names_for(config.input, evaluation.num_classes, evaluation.class_names)
        return training, evaluation

    def build_model(self, config, num_classes: int):
        height, width = config.input.crop_size  # the grid V2 windows and shifts are decided on
        return create_model(config.model, num_classes=num_classes, img_size=height if height == width else (height, width),
                            **model_options(config), **config.model_overrides)

    def init_variables(self, model, rng):
        return dict(model.init(rng, jnp.zeros((1, *model.input_hw, model.in_chans), jnp.float32)))

    def train_loss(self, model, params, model_state, batch, rngs, config, num_classes):
        images = on_device.segmentation_batch(batch["image"], batch["valid"], dtype=jnp.dtype(config.model_dtype))
        labels = batch["label"].astype(jnp.int32)
        (logits, auxiliary), updated = model.apply({"params": params, **model_state}, images, train=True,
                                                   mutable=["batch_stats"], rngs={"dropout": rngs[1]})
        ignore, weight = config.input.ignore_index, tuple(config.class_weight) or None
        decode_loss = pixel_cross_entropy(logits, labels, ignore, weight)
        auxiliary_loss = pixel_cross_entropy(auxiliary, labels, ignore, weight)
        loss = decode_loss + config.auxiliary_weight * auxiliary_loss
        return loss, (dict(updated), {"decode_loss": decode_loss, "auxiliary_loss": auxiliary_loss})

    @staticmethod
    def logits_at_label_size(model, variables, batch, config) -> jax.Array:
        """Whole-image logits of the resized inputs, brought to each annotation's original size."""
        images = on_device.segmentation_batch(batch["image"], batch["valid"], dtype=jnp.dtype(config.model_dtype))
        logits = model.apply(variables, images).astype(jnp.float32)
        rows, cols = batch["label"].shape[1:3]
        matrices = jax.vmap(functools.partial(bilinear_matrix_of_sizes, rows=rows, cols=logits.shape[1]))
        ry = matrices(batch["valid"][:, 0], batch["label_size"][:, 0])
        matrices = jax.vmap(functools.partial(bilinear_matrix_of_sizes, rows=cols, cols=logits.shape[2]))
        rx = matrices(batch["valid"][:, 1], batch["label_size"][:, 1])
        highest = jax.lax.Precision.HIGHEST
        logits = jnp.einsum("bih,bhwc->biwc", ry, logits, precision=highest)
        return jnp.einsum("bjw,biwc->bijc", rx, logits, precision=highest)

    def eval_sums(self, model, variables, batch, config):
        pred = jnp.argmax(self.logits_at_label_size(model, variables, batch, config), axis=-1)
        labels = jnp.where(batch["mask"][:, None, None], batch["label"], config.input.ignore_index)
        return area_counts(pred, labels, model.num_classes, config.input.ignore_index)

    def summarize(self, totals, evaluation):
        m = iou_metrics(totals["intersect"], totals["area_pred"], totals["area_label"])
        results = {"eval_miou": m["miou"], "eval_macc": m["macc"], "eval_aacc": m["aacc"],
                   "eval_pixels": float(np.sum(totals["area_label"]))}
        for name, iou, acc in zip(evaluation.class_names, m["iou"], m["acc"]):
            results[f"eval_iou/{name}"] = float(iou)
            results[f"eval_acc/{name}"] = float(acc)
        return results

    def report(self, results, class_names):
        line = (f"eval mIoU {results['eval_miou']:.4f}, mAcc {results['eval_macc']:.4f}, "
                f"aAcc {results['eval_aacc']:.4f} ({int(results['eval_pixels']):,} labelled pixels)")
        width = max(len(n) for n in class_names)
        rows = [f"  {'class':<{width}}    IoU    Acc"]
        for name in class_names:
            iou, acc = results[f"eval_iou/{name}"], results[f"eval_acc/{name}"]
            rows.append(f"  {name:<{width}} {100 * iou:6.2f} {100 * acc:6.2f}")
        return "\n".join([line, *rows])

    def previews(self, model, variables, evaluation, config, batch_sharding):
        """A few held-out images at their annotation's size: image | ground truth | prediction."""
        count = config.input.preview_images
        if not count:
            return {}
        from swin_jax.data.ade20k import palette

        def predict(variables, batch):
            pred = jnp.argmax(self.logits_at_label_size(model, variables, batch, config), axis=-1)
            rows, cols = batch["label"].shape[1:3]
            ry = jax.vmap(functools.partial(bilinear_matrix_of_sizes, rows=rows, cols=batch["image"].shape[1]))(
                batch["valid"][:, 0], batch["label_size"][:, 0])
            rx = jax.vmap(functools.partial(bilinear_matrix_of_sizes, rows=cols, cols=batch["image"].shape[2]))(
                batch["valid"][:, 1], batch["label_size"][:, 1])
            image = jnp.einsum("bih,bhwc,bjw->bijc", ry, batch["image"].astype(jnp.float32), rx)
            return jnp.clip(jnp.round(image), 0, 255).astype(jnp.uint8), batch["label"], pred.astype(jnp.int32)

        batch, (image, label, pred) = self.preview_outputs(model, variables, evaluation, batch_sharding, predict)
        sizes, mask = jax.device_get(batch["label_size"]), jax.device_get(batch["mask"])
        colours = np.concatenate([palette(model.num_classes), np.zeros((256 - model.num_classes, 3), np.uint8)])
        panels = []
        for i in np.flatnonzero(mask)[:count]:
            h, w = sizes[i]
            gt = colours[label[i, :h, :w].astype(np.int64)]  # ignored pixels (255) black
            panels.append(np.concatenate([image[i, :h, :w], gt, colours[pred[i, :h, :w]]], axis=1))
        return {"eval/image | ground truth | prediction": stack_panels(panels)} if panels else {}


TASK = Segmentation()
