"""SimMIM pre-training step for step against PyTorch: train.py's loop (8 devices) against Hugging Face's
SwinForMaskedImageModeling trained in the test as the official main_simmim_pt.py trains it, on the same
batches under the same masks (those the run drew from its (seed, step) keys).

The PyTorch side is written from the official code: torch.optim.AdamW with get_pretrain_param_groups
(no decay for 1-D tensors, biases, the mask token and relative_position_bias_table), gradient clipping
at 5, the MultiStepLRScheduler (linear warm-up from warmup_lr, then the rate times gamma at each
milestone) stepped after each optimizer.step(), so update u runs at the rate for u - 1; the masked L1
loss over masked pixels divided by the channels. The run is cut to 20 steps by total_steps, so warm-up
and milestone keep their share of the demo's 30 epochs: one warm-up update, the step down at update 17."""

from __future__ import annotations

import copy
import os

import jax
import numpy as np
import torch
from transformers import SwinConfig, SwinForMaskedImageModeling

import runs
from configs import demo_simmim
from references import randomize
from swin_jax import checkpoint, data
from swin_jax.convert import export_state_dict
from swin_jax.tasks.simmim import masks_for
from swin_jax.train import optim, train_and_evaluate
from swin_jax.train.loop import build_model

STEPS, BATCH = 20, 64
ARCH = dict(patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 2), window_size=4, drop_path_rate=0.0)
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
LOSS_RTOL, LR_RTOL, PARAM_RTOL = 1e-5, 1e-6, 1e-4


def hf_simmim():
    config = SwinConfig(image_size=32, encoder_stride=8, hidden_act="gelu", layer_norm_eps=1e-5,
                        **{k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()})
    hf = randomize(SwinForMaskedImageModeling(config))
    with torch.no_grad():
        hf.swin.embeddings.mask_token.copy_(torch.randn(hf.swin.embeddings.mask_token.shape,
                                                        generator=torch.Generator().manual_seed(3)))
    return hf


def official_no_decay(name: str, param) -> bool:
    """get_pretrain_param_groups with SimMIM's skip lists, in Hugging Face's names."""
    return param.ndim == 1 or name.endswith(".bias") or name.endswith("mask_token") \
        or "relative_position_bias_table" in name


def official_rates(updates, base, warmup_lr, warmup_steps, milestones, gamma):
    """MultiStepLRScheduler._get_lr(t) for t = 0 .. updates - 1 and the rate each update runs at:
    lr(0) for the first (set at construction), lr(u - 1) for update u (step_update after the step)."""
    def lr(t):
        if t < warmup_steps:
            return warmup_lr + t * (base - warmup_lr) / warmup_steps
        return base * gamma ** sum(t >= m for m in milestones)

    return [lr(max(u - 1, 0)) for u in range(updates)]


def torch_training(hf, batches, masks, rates, clip):
    hf.train()
    named = list(hf.named_parameters())
    groups = [{"params": [p for n, p in named if not official_no_decay(n, p)]},
              {"params": [p for n, p in named if official_no_decay(n, p)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=rates[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    losses = []
    for images, mask, rate in zip(batches, masks, rates):
        pixels = torch.from_numpy(((images.astype(np.float32) / 255 - MEAN) / STD).astype(np.float32))
        out = hf(pixels.permute(0, 3, 1, 2), bool_masked_pos=torch.from_numpy(mask).flatten(1))
        for group in optimizer.param_groups:
            group["lr"] = rate
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), clip)
        optimizer.step()
        losses.append(out.loss.item())
    return np.array(losses)


def test_simmim_pretraining_matches_the_official_loop_step_for_step(tmp_path):
    """Every step's loss and rate to 1e-5, every parameter after 20 updates to 1e-4 of the tensor's largest
    value (the key biases, whose exact gradient is zero, shown and not held)."""
    hf = hf_simmim()
    weights = str(tmp_path / "simmim_random.pth")
    torch.save(hf.state_dict(), weights)
    config = demo_simmim.get_config()
    config.model_overrides.update(ARCH)
    config.update(dict(total_steps=STEPS, log_every_steps=1, eval_every_steps=STEPS, checkpoint_every_steps=STEPS,
                       init_from=weights))
    config.input.preview_images = 0
    assert config.batch_size == BATCH and config.lr_schedule_placement == "official" and jax.device_count() == 8
    lr = optim.schedule(config, STEPS, 1437 // BATCH)
    assert lr.warmup_steps == 1 and lr.milestones == (17,)

    model = build_model(config, 1)
    stream = iter(data.train_input(config.input, seed=config.seed))
    batches = [next(stream)["image"] for _ in range(STEPS)]
    run_key = jax.random.key_data(jax.random.split(jax.random.key(config.seed))[1])  # as the loop draws it
    masks = [np.asarray(masks_for(model, config, jax.random.split(jax.random.fold_in(
        jax.random.wrap_key_data(run_key), step))[0], BATCH, 32)) for step in range(STEPS)]

    train_and_evaluate(config, str(tmp_path / "work"))
    rates = official_rates(STEPS, lr.peak_lr, lr.warmup_lr, 1, (17,), config.lr_gamma)
    reference = copy.deepcopy(hf)
    want = torch_training(reference, batches, masks, rates, config.clip_grad)

    rows = [r for r in runs.rows(str(tmp_path / "work")) if "train_loss" in r]
    losses, got_rates = np.array([r["train_loss"] for r in rows]), np.array([r["lr"] for r in rows])
    print("relative loss difference per step: " + " ".join(f"{d:.1e}" for d in np.abs(losses - want) / want))
    np.testing.assert_allclose(got_rates, rates, rtol=LR_RTOL)
    np.testing.assert_allclose(losses, want, rtol=LOSS_RTOL)

    checkpoints = checkpoint.TrainCheckpoints(os.path.join(str(tmp_path / "work"), "checkpoints"))
    try:
        saved = checkpoints.saved_arrays(STEPS, fields=("params",))
    finally:
        checkpoints.close()
    ours, _ = export_state_dict({"params": saved["params"]}, model)
    start = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    final = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    relative = {k: float(np.abs(ours[k] - v).max() / np.abs(v).max()) for k, v in final.items()}
    key_biases = {k: v for k, v in relative.items() if k.endswith("attention.k_proj.bias")}
    held = {k: v for k, v in relative.items() if k not in key_biases}
    moved = np.median([np.abs(final[k] - start[k]).max() / np.abs(final[k]).max() for k in held])
    worst = max(held, key=held.get)
    print(f"{len(held)} tensors after {STEPS} updates: largest max|diff|/max|ref| {held[worst]:.1e} ({worst}); the "
          f"median tensor moved {moved:.1e}; key biases (zero exact gradient, not held): "
          f"{max(key_biases.values()):.1e}")
    assert moved > 100 * held[worst]
    assert held[worst] < PARAM_RTOL, {k: v for k, v in held.items() if v >= PARAM_RTOL}
