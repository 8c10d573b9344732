"""Image classification: the official Swin recipe (RandAugment, Mixup / CutMix, soft-target cross
entropy), evaluated by top-1 and top-5 accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from swin_jax import data
from swin_jax.data import on_device
from swin_jax.models import create_model
from swin_jax.tasks.base import Task, model_options


class Classification(Task):
    name = "classification"
    best_metric = "eval_top1"

    def inputs(self, config, *, train: bool):
        training = data.train_input(config.input, seed=config.seed) if train else None
        return training, data.eval_input(config.input)

    def build_model(self, config, num_classes: int):
        return create_model(config.model, num_classes=num_classes, img_size=config.input.image_size,
                            **model_options(config), **config.model_overrides)

    def init_variables(self, model, rng):
        return {"params": model.init(rng, jnp.zeros((1, *model.input_hw, model.in_chans), jnp.float32))["params"]}

    def train_loss(self, model, params, model_state, batch, rngs, config, num_classes):
        k_data, k_dropout = rngs
        images, targets = on_device.train_batch(k_data, batch["image"], batch["label"], config.input,
                                                num_classes=num_classes, dtype=jnp.dtype(config.model_dtype))
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": k_dropout})
        # timm's SoftTargetCrossEntropy: the batch mean of -sum(targets * log_softmax(logits)).
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean(), (model_state, {})

    def eval_sums(self, model, variables, batch, config):
        """Sums over the real (mask=True) examples: loss, top-1 and top-5 hits, count."""
        images = on_device.normalize(batch["image"], dtype=jnp.dtype(config.model_dtype))
        logits = model.apply(variables, images).astype(jnp.float32)
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        return {"loss": jnp.sum(loss * mask), "top1": jnp.sum((top5[:, 0] == labels) * mask),
                "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask), "count": jnp.sum(mask)}

    def summarize(self, totals, evaluation):
        count = max(float(totals["count"]), 1.0)
        return {"eval_loss": float(totals["loss"]) / count, "eval_top1": float(totals["top1"]) / count,
                "eval_top5": float(totals["top5"]) / count, "eval_examples": float(totals["count"])}

    def report(self, results, class_names):
        line = (f"eval top-1 {results['eval_top1']:.4f}, top-5 {results['eval_top5']:.4f}, "
                f"loss {results['eval_loss']:.4f} ({int(results['eval_examples'])} examples)")
        if "ema_eval_top1" in results:
            line += f"; EMA top-1 {results['ema_eval_top1']:.4f}"
        return line


TASK = Classification()
