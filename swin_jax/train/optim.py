"""The official Swin optimiser (official `optimizer.py` and `lr_scheduler.py`) in optax.

AdamW (0.9, 0.999, eps 1e-8), learning rates given per 512 images and scaled linearly with the
global batch and gradient accumulation, linear warm-up from warmup_lr then a per-step cosine to
min_lr, weight decay 0.05 on every weight matrix and none on biases, LayerNorm parameters, the
absolute position embedding and the relative position bias tables (Swin V2: nor on the position-bias
MLP `cpb_mlp`, `logit_scale` and the q/v biases), global-norm clipping at 5.

When each update takes its rate (`config.lr_schedule_placement`, `update_lr`): the official loops
(main.py, SimMIM's) step timm's scheduler after the optimiser step, so update u runs at the rate of u - 1
and the first two at warmup_lr ("official"); timm's train.py, and mmcv's runner, which sets the rate
before each iteration, run update u at the rate of u ("timm").

Dense-prediction configs follow mmseg instead (`config.schedule = "poly"`, `config.no_decay_keys`): mmcv's
PolyLrUpdaterHook with its linear warm-up, and the decay rule of mmcv's `paramwise_cfg.custom_keys`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

# Parameters the official code exempts from weight decay by name (besides every 1-D tensor and bias):
# its no_weight_decay() and no_weight_decay_keywords(), V1's and V2's.
NO_DECAY_NAMES = ("absolute_pos_embed", "relative_position_bias_table", "cpb_mlp", "logit_scale")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Learning rates already scaled to the batch; steps counted in optimiser updates."""
    peak_lr: float
    warmup_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step):
        """timm's CosineLRScheduler as the official code builds it (warmup_prefix=True, per step): a linear
        warm-up from warmup_lr, then a cosine from peak_lr to min_lr over the remaining steps."""
        steps = max(self.warmup_steps, 1)

        # Written out, not optax.linear_schedule: optax computes (init - end) * (1 - t) + end, which in
        # float32 loses a small warmup_lr to the rounding of peak_lr (7.6e-6 relative at the start).
        def warmup(count):
            return self.warmup_lr + (self.peak_lr - self.warmup_lr) * jnp.minimum(count, steps) / steps

        cosine = optax.cosine_decay_schedule(self.peak_lr, max(self.total_steps - self.warmup_steps, 1),
                                             alpha=self.min_lr / self.peak_lr if self.peak_lr else 0.0)
        return optax.join_schedules([warmup, cosine], [self.warmup_steps])(step)


@dataclasses.dataclass(frozen=True)
class PolySchedule:
    """mmcv's PolyLrUpdaterHook by iteration with warmup='linear': the regular rate
    (peak - min) * (1 - step / total) ** power + min, scaled during warm-up by
    1 - (1 - step / warmup) * (1 - warmup_ratio), so the first step runs at warmup_ratio of it."""
    peak_lr: float
    min_lr: float
    power: float
    warmup_steps: int
    warmup_ratio: float
    total_steps: int

    def __call__(self, step):
        step = jnp.asarray(step, jnp.float32)
        remaining = (self.total_steps - jnp.minimum(step, self.total_steps)) / max(self.total_steps, 1)  # exact
        regular = (self.peak_lr - self.min_lr) * remaining ** self.power + self.min_lr
        if not self.warmup_steps:
            return regular
        # 1 - k with k = (1 - step / warmup) * (1 - ratio), written so float32 keeps a ratio of 1e-6.
        factor = self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        return jnp.where(step < self.warmup_steps, regular * factor, regular)


@dataclasses.dataclass(frozen=True)
class MultiStepSchedule:
    """The official SimMIM pre-training schedule (lr_scheduler.py's MultiStepLRScheduler, per step): a
    linear warm-up from warmup_lr over warmup_steps, then peak_lr * gamma ** (milestones passed), the
    milestones counted in steps from the start of the run."""
    peak_lr: float
    warmup_lr: float
    warmup_steps: int
    milestones: tuple[int, ...]
    gamma: float

    def __call__(self, step):
        step = jnp.asarray(step, jnp.float32)
        passed = sum((step >= m).astype(jnp.float32) for m in self.milestones) if self.milestones else 0.0
        regular = self.peak_lr * self.gamma ** passed
        if not self.warmup_steps:
            return regular
        warmup = self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / self.warmup_steps
        return jnp.where(step < self.warmup_steps, warmup, regular)


def scaled_lr(lr: float, config) -> float:
    """The official linear scaling: lr * global batch * accumulation steps / 512."""
    return lr * config.batch_size * config.grad_accum_steps / config.lr_base_batch_size


def schedule(config, total_steps: int, steps_per_epoch: int, *, training: bool = True
             ) -> Schedule | PolySchedule | MultiStepSchedule:
    """The schedule over `total_steps` optimiser updates. Warm-up lasts `warmup_steps` if set, else
    warmup_epochs; when total_steps overrides the epochs, warm-up keeps its share of the run
    (warmup_epochs / epochs). Not `training` (an evaluation), the milestones are not checked."""
    updates_per_epoch = max(steps_per_epoch // config.grad_accum_steps, 1)
    updates = max(total_steps // config.grad_accum_steps, 1)
    kind = config.get("schedule", "cosine")
    if kind not in ("cosine", "poly", "multistep"):
        raise ValueError(f"config.schedule={kind!r}: must be 'cosine', 'poly' or 'multistep'")
    if config.get("warmup_steps", 0):
        warmup = config.warmup_steps // config.grad_accum_steps
    elif config.total_steps:
        warmup = int(updates * config.warmup_epochs / config.epochs)
    else:
        warmup = int(config.warmup_epochs * updates_per_epoch)
    if kind == "multistep":  # milestones in epochs, as the official MULTISTEPS
        if config.total_steps:  # they keep their share of the run, as the warm-up does
            milestones = tuple(int(updates * e / config.epochs) for e in config.lr_milestones)
        else:
            milestones = tuple(int(e * updates_per_epoch) for e in config.lr_milestones)
        if training and milestones and min(milestones) < warmup:
            raise ValueError(f"config.lr_milestones={tuple(config.lr_milestones)}: the first milestone falls inside "
                             f"the {warmup}-step warm-up")
        return MultiStepSchedule(peak_lr=scaled_lr(config.base_lr, config),
                                 warmup_lr=scaled_lr(config.warmup_lr, config), warmup_steps=warmup,
                                 milestones=milestones, gamma=config.lr_gamma)
    if kind == "poly":
        return PolySchedule(peak_lr=scaled_lr(config.base_lr, config), min_lr=scaled_lr(config.min_lr, config),
                            power=config.poly_power, warmup_steps=warmup, warmup_ratio=config.warmup_ratio,
                            total_steps=updates)
    return Schedule(peak_lr=scaled_lr(config.base_lr, config), warmup_lr=scaled_lr(config.warmup_lr, config),
                    min_lr=scaled_lr(config.min_lr, config), warmup_steps=warmup, total_steps=updates)


PLACEMENTS = ("official", "timm")


def placement(config) -> str:
    """config.lr_schedule_placement; a config written before the field existed (a custom config file, an old
    workdir's config.json) gets the placement runs had then, "timm"."""
    value = config.get("lr_schedule_placement", "timm")
    if value not in PLACEMENTS:
        raise ValueError(f"config.lr_schedule_placement={value!r}: must be 'official' or 'timm'")
    return value


def update_lr(config, lr):
    """The rate each optimiser update runs at, as a function of the updates done before it (optax's count):
    the schedule itself ("timm": update u at lr(u)), or the schedule one update late ("official": update u
    at lr(u - 1), clamped at 0, so updates 0 and 1 both run at lr(0)), which is where main.py's
    `lr_scheduler.step_update(...)` after `optimizer.step()` puts it. The optimiser and the logged `lr`
    both take their rate from here."""
    if placement(config) == "timm":
        return lr
    return lambda count: lr(jnp.maximum(jnp.asarray(count) - 1, 0))


def decays(path: tuple[str, ...]) -> bool:
    """Whether a parameter (its path in the Flax tree) gets weight decay: weight matrices and the
    patch-embedding kernel do; biases (V2's q_bias and v_bias too), LayerNorm scales, the position
    embedding, bias tables, V2's cpb_mlp weights and logit_scale don't."""
    return path[-1] == "kernel" and not any(name in NO_DECAY_NAMES for name in path)


def decays_custom_keys(path: tuple[str, ...], no_decay_keys) -> bool:
    """mmcv's DefaultOptimizerConstructor with `custom_keys={key: dict(decay_mult=0.)}`: a parameter
    whose name contains one of the keys gets no decay; every other one, biases and BatchNorm included,
    decays. Our parameter names hold "norm" exactly where the official ones do (LayerNorms `norm*`,
    the heads' BatchNorm `bn`), so matching the Flax path is matching the official name."""
    return not any(key in name for key in no_decay_keys for name in path)


def decay_mask(params, no_decay_keys=()):
    """Which parameters get weight decay: the official Swin rule, or with `no_decay_keys` mmcv's."""
    flat = traverse_util.flatten_dict(params)
    rule = (lambda path: decays_custom_keys(path, no_decay_keys)) if no_decay_keys else decays
    return traverse_util.unflatten_dict({path: rule(path) for path in flat})


def frozen(path: tuple[str, ...], frozen_stages: int) -> bool:
    """Whether `frozen_stages` (mmdet/mmseg's definition, in the official layout where stage i holds
    the patch merging after it) freezes a parameter: >= 0 the patch embedding, >= 1 the absolute position
    embedding, k >= 2 the blocks of stages 0..k-2 and the merging after each. A segmenter's backbone
    parameters sit under `backbone`."""
    if path[0] == "backbone":
        path = path[1:]
    top = path[0]
    if top == "patch_embed":
        return frozen_stages >= 0
    if top == "absolute_pos_embed":
        return frozen_stages >= 1
    if top.startswith("layers_"):
        stage = int(top.split("_")[1]) - (path[1] == "downsample")  # timm's merging starts the next stage
        return stage <= frozen_stages - 2
    return False


def zero_frozen(frozen_stages: int) -> optax.GradientTransformation:
    """Zero the updates of frozen parameters: before clipping (they have no gradient) and after AdamW
    (no weight decay either), as requires_grad=False does in PyTorch."""
    return optax.masked(optax.set_to_zero(), lambda params: traverse_util.unflatten_dict(
        {p: frozen(p, frozen_stages) for p in traverse_util.flatten_dict(params)}))


SWIN_PARTS = ("backbone", "encoder")  # where segmenters, detectors and SimMIM hold their Swin


def layer_ids(params, depths) -> dict:
    """Each parameter's depth for layer-wise lr decay, as SimMIM's Swin fine-tuning counts it: the patch
    embedding (and SimMIM's mask token) is 0, block j of the whole network is j + 1, a patch merging sits
    with the last block before it, and the final norm and head are last. Scanned blocks get one id per
    stacked entry. In a segmenter, detector or SimMIM model the Swin is counted inside its `backbone` /
    `encoder`, and the heads and decoder are last."""
    num_layers = sum(depths) + 1
    flat = traverse_util.flatten_dict(params)
    ids = {}
    wrapped = any(path[0] in SWIN_PARTS for path in flat)
    for full_path, value in flat.items():
        if wrapped and full_path[0] not in SWIN_PARTS:  # a head or decoder around the Swin
            ids[full_path] = np.asarray(num_layers)
            continue
        path = full_path[1:] if wrapped else full_path
        top = path[0]
        if top.startswith("layers_"):
            stage = int(top.split("_")[1])
            first = sum(depths[:stage])
            if path[1] == "downsample":
                ids[full_path] = np.asarray(first)
            elif path[1] == "blocks":  # scanned pairs: leading axis is the pair, block0/1 inside
                parity = int(path[2][-1])
                ids[full_path] = first + 1 + parity + 2 * np.arange(value.shape[0])
            else:  # unrolled: blocks_j
                ids[full_path] = np.asarray(first + 1 + int(path[1].split("_")[1]))
        elif top in ("patch_embed", "absolute_pos_embed", "mask_token"):
            ids[full_path] = np.asarray(0)
        else:
            ids[full_path] = np.asarray(num_layers)
    return ids




def layer_scales(params, depths, decay: float):
    """decay ** (num_layers - id) per parameter, shaped to broadcast over stacked blocks."""
    top = sum(depths) + 1
    scales = {}
    for path, ids in layer_ids(params, depths).items():
        value = traverse_util.flatten_dict(params)[path]
        scale = np.power(decay, top - ids).astype(np.float32)
        scales[path] = scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))
    return traverse_util.unflatten_dict(scales)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiply each update by its entry of `scales`. (optax.multi_transform labels whole leaves; scanned
    blocks need one scale per stacked entry of a leaf.)"""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer(config, params, lr: Schedule, depths) -> optax.GradientTransformation:
    """clip(global norm) -> AdamW with the decay mask at the rates of `update_lr` -> optional layer-wise lr
    decay, optionally accumulating `grad_accum_steps` micro-batches per update; frozen stages
    (`frozen_stages`) get no update at all."""
    freeze = [zero_frozen(config.frozen_stages)] if config.get("frozen_stages", -1) >= 0 else []
    chain = list(freeze)
    if config.clip_grad:
        chain.append(optax.clip_by_global_norm(config.clip_grad))
    chain.append(optax.adamw(update_lr(config, lr), b1=config.betas[0], b2=config.betas[1], eps=config.eps,
                             weight_decay=config.weight_decay,
                             mask=functools.partial(decay_mask, no_decay_keys=tuple(config.get("no_decay_keys", ())))))
    if config.layer_decay < 1.0:
        chain.append(scale_by_tree(layer_scales(params, depths, config.layer_decay)))
    tx = optax.chain(*chain, *freeze)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
    return tx


def applied_gradient(grads, opt_state, accum_steps: int):
    """(the gradient the optimiser applies at this micro-step, whether it applies one now).

    Without accumulation: `grads`, at every step. With optax.MultiSteps the update at every
    `accum_steps`-th micro-step applies the mean of its micro-batches' gradients; this is that mean
    so far (optax's own running-mean update), so at an update step it is exactly what was applied."""
    if accum_steps == 1:
        return grads, jnp.asarray(True)
    n = opt_state.mini_step
    mean = jax.tree.map(lambda g, acc: acc + (g.astype(acc.dtype) - acc) / (n + 1), grads, opt_state.acc_grads)
    return mean, n == accum_steps - 1
