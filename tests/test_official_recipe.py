"""train.py against the official recipe, as a new user would check it: a small Swin with every tensor random,
saved as an official checkpoint, given to train.py through init_from and trained on an image folder with
every augmentation and dropout off; the same batches through the official main.py loop in PyTorch
(test_train_step.main_py_training). Every step's loss and learning rate, and every parameter (and EMA
weight) after 20 updates, with and without gradient accumulation, for both lr_schedule_placement values;
and the same run stopped by SIGTERM and resumed."""

from __future__ import annotations

import copy
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import runs
from references import SMALL, official_layout, randomize
from test_train_step import main_py_training

from swin_jax import checkpoint, data
from swin_jax.convert import export_timm_state_dict
from swin_jax.data import on_device
from swin_jax.train import optim
from swin_jax.train.loop import build_model

CLASSES, BATCH, UPDATES, EPOCHS, WARMUP_EPOCHS = 10, 8, 20, 4, 1  # 5 updates per epoch, 5 of warm-up
# Training splits of 5 batches per epoch, and of 10 to accumulate two at a time.
SPLITS = {1: ("train_5", 4), 2: ("train_10", 8)}  # grad_accum_steps: (split, images per class)
PEAK, WARMUP_LR, MIN_LR = 5e-4, 1e-5, 1e-6  # the rates of the run, after main.py's linear scaling

# Tolerances: per-step loss and lr (relative), parameters after the run (max |diff| / max |ref| per tensor).
LOSS_RTOL, LR_RTOL, PARAM_RTOL = 1e-5, 1e-5, 1e-4

# (lr_schedule_placement, grad_accum_steps, ema_decay)
CASES = {"official": ("official", 1, 0.0), "official-accum-ema": ("official", 2, 0.9),
         "timm-accum-ema": ("timm", 2, 0.9)}

CONFIG_FILE = '''"""{doc}"""
from configs import common


def get_config():
    config = common.get_config("swin_tiny_patch4_window7_224")
{lines}
    return config
'''


def _image_folder(root):
    """root/SPLIT/CLASS/*.png: random 64x64 images, the SPLITS to train on, one per class to evaluate."""
    rng = np.random.RandomState(0)
    for split, count in (*SPLITS.values(), ("val", 1)):
        for c in range(CLASSES):
            os.makedirs(os.path.join(root, split, f"class{c}"))
            for i in range(count):
                Image.fromarray(rng.randint(0, 256, (64, 64, 3), np.uint8)).save(
                    os.path.join(root, split, f"class{c}", f"{i}.png"))
    return str(root)


def _write_config(path, fields: dict) -> str:
    lines = "\n".join(f"    config.{k} = {v!r}" for k, v in fields.items())
    with open(path, "w") as f:
        f.write(CONFIG_FILE.format(doc="The official recipe on a small Swin and an image folder (test).", lines=lines))
    return str(path)


def _load_config(path):
    spec = importlib.util.spec_from_file_location("recipe_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _fields(folder, weights, placement, accum, ema):
    split, _ = SPLITS[accum]
    per_512 = 512 / (BATCH * accum)  # the config's rates are per 512 images, scaled by batch x accumulation
    architecture = {k: v for k, v in SMALL.items() if k not in ("img_size", "num_classes")}
    return {
        "dataset": "folder", "input.data_dir": folder, "input.train_split": split, "image_size": 64,
        "batch_size": BATCH,
        "model_overrides": dict(architecture, drop_path_rate=0.0), "init_from": weights,
        "epochs": EPOCHS, "warmup_epochs": WARMUP_EPOCHS, "total_steps": 0,
        "base_lr": PEAK * per_512, "warmup_lr": WARMUP_LR * per_512, "min_lr": MIN_LR * per_512,
        "grad_accum_steps": accum, "ema_decay": ema, "lr_schedule_placement": placement,
        "log_every_steps": 1, "eval_every_steps": 1000, "checkpoint_every_steps": 1000,
        # Every augmentation off: the whole image at its size, no flip, RandAugment, erasing, Mixup, smoothing.
        "input.scale": (1.0, 1.0), "input.ratio": (1.0, 1.0), "input.hflip": 0.0, "input.rand_augment": "",
        "input.random_erase": 0.0, "input.mixup_alpha": 0.0, "input.cutmix_alpha": 0.0,
        "input.label_smoothing": 0.0, "input.crop_pct": 1.0,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The image folder, the random timm Swin saved as an official checkpoint ({"model": ...}, Microsoft's
    layout) and a config file per case."""
    root = tmp_path_factory.mktemp("recipe")
    folder = _image_folder(root / "images")
    torch.manual_seed(0)
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    reference = randomize(TimmSwin(**SMALL, drop_path_rate=0.0))
    weights = str(root / "swin_small_random.pth")
    torch.save({"model": official_layout(reference)}, weights)
    configs = {name: _write_config(root / f"{name.replace('-', '_')}.py", _fields(folder, weights, *case))
               for name, case in CASES.items()}
    return root, reference, configs


_RUNS = {}


def _start_train_py(setup, name):
    """train.py on the case's config in a fresh process (one device), once per case: a function that waits
    for it and returns its workdir."""
    root, _, configs = setup
    workdir = str(root / f"run_{name}")
    if name in _RUNS:
        return lambda: workdir
    process = runs.start(["--config", configs[name]], workdir)

    def finish():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        _RUNS[name] = workdir
        return workdir

    return finish


def _torch_batches(config, micro_steps):
    """The batches train.py trained on (the training stream is a function of the seed and the step),
    normalised as on device, NCHW."""
    stream = iter(data.train_input(config.input, seed=config.seed))
    out = []
    for _ in range(micro_steps):
        batch = next(stream)
        images = np.asarray(on_device.normalize(batch["image"]))
        out.append((torch.from_numpy(images.copy()).permute(0, 3, 1, 2).contiguous(),
                    torch.from_numpy(batch["label"].copy()).long()))
    return out


def _relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def _compare_tensors(ours: dict, reference: dict, label: str) -> tuple[dict, dict]:
    """max |diff| / max |ref| per tensor; each qkv bias as its query, key and value thirds. The key third has an
    exact gradient of zero (softmax cannot see a per-query constant), so Adam moves it only by float32 rounding
    divided by eps: it is shown, not held."""
    held, key_bias = {}, {}
    for name, want in reference.items():
        got = np.asarray(ours[name])
        if name.endswith("attn.qkv.bias"):
            (got_q, got_k, got_v), (want_q, want_k, want_v) = np.split(got, 3), np.split(want, 3)
            held[name + "[q]"] = _relative(got_q, want_q)
            key_bias[name + "[k]"] = _relative(got_k, want_k)
            held[name + "[v]"] = _relative(got_v, want_v)
        else:
            held[name] = _relative(got, want)
    worst = max(held, key=held.get)
    print(f"{label}: largest max|diff|/max|ref| of {len(held)} tensors {held[worst]:.2e} ({worst}); key third of "
          f"the qkv biases (zero exact gradient, shown, not held): " +
          ", ".join(f"{k.split('.attn')[0]} {v:.1e}" for k, v in key_bias.items()))
    return held, key_bias


@pytest.mark.parametrize("name", list(CASES))
def test_train_py_matches_the_official_loop(setup, name):
    """train.py (init_from the official checkpoint) against main.py's loop on the same batches, the scheduler
    stepped where the case's lr_schedule_placement says: every micro-step's loss and the rate its update ran at
    to 1e-5, every parameter (and EMA weight) after 20 updates to 1e-4 of the tensor's largest value."""
    placement, accum, ema = CASES[name]
    root, initial, configs = setup
    finish = _start_train_py(setup, name)  # the PyTorch side runs meanwhile
    config = _load_config(configs[name])
    micro_steps = UPDATES * accum
    steps_per_epoch = CLASSES * SPLITS[accum][1] // BATCH
    lr = optim.schedule(config, micro_steps, steps_per_epoch)
    assert lr.warmup_steps == 5 and lr.total_steps == UPDATES and micro_steps == EPOCHS * steps_per_epoch

    reference = copy.deepcopy(initial)
    torch_run = main_py_training(
        reference, _torch_batches(config, micro_steps), torch.nn.CrossEntropyLoss(),
        steps_per_epoch=steps_per_epoch, epochs=config.epochs, warmup_epochs=config.warmup_epochs,
        lr=PEAK, warmup_lr=WARMUP_LR, min_lr=MIN_LR, weight_decay=config.weight_decay, clip_grad=config.clip_grad,
        accum=accum, placement=placement, ema_decay=ema)
    # Where the placements differ: main.py runs updates 0 and 1 at WARMUP_LR, timm's train.py update 1 higher.
    first = torch_run["lr"][:2]
    assert first[0] == pytest.approx(WARMUP_LR) and (first[1] == pytest.approx(WARMUP_LR)) == (placement == "official")

    workdir = finish()
    rows = [r for r in runs.rows(workdir) if "train_loss" in r]
    assert [r["step"] for r in rows] == list(range(1, micro_steps + 1))

    losses = np.array([r["train_loss"] for r in rows])
    lrs = np.array([r["lr"] for r in rows])  # the rate of the update each micro-step belongs to
    want_lrs = np.repeat(torch_run["lr"], accum)
    loss_diff = np.abs(losses - torch_run["loss"])
    lr_diff = np.abs(lrs - want_lrs) / want_lrs
    print(f"{name}: {micro_steps} micro-steps, {UPDATES} updates; max |loss diff| {loss_diff.max():.2e} "
          f"(losses {losses.min():.3f}-{losses.max():.3f}), max relative lr diff {lr_diff.max():.2e}, "
          f"gradient norms {min(torch_run['grad_norm']):.2f}-{max(torch_run['grad_norm']):.2f} (clip 5)")
    np.testing.assert_allclose(losses, torch_run["loss"], rtol=LOSS_RTOL, atol=0)
    np.testing.assert_allclose(lrs, want_lrs, rtol=LR_RTOL, atol=0)

    model = build_model(config, CLASSES)
    checkpoints = checkpoint.TrainCheckpoints(os.path.join(workdir, "checkpoints"))
    try:
        saved = checkpoints.saved_arrays(micro_steps, fields=("params", "ema_params"))
    finally:
        checkpoints.close()
    start = {n: p.detach().numpy() for n, p in initial.named_parameters()}
    final = {n: p.detach().numpy() for n, p in reference.named_parameters()}
    ours = export_timm_state_dict({"params": jax.device_get(saved["params"])}, model)
    held, _ = _compare_tensors(ours, final, f"{name} parameters")
    moved = max(_relative(final[n], start[n]) for n in final)
    assert moved > 100 * PARAM_RTOL  # the run moves the parameters far beyond the tolerance
    assert max(held.values()) < PARAM_RTOL, {k: v for k, v in held.items() if v >= PARAM_RTOL}
    if ema:
        ours_ema = export_timm_state_dict({"params": jax.device_get(saved["ema_params"])}, model)
        held, _ = _compare_tensors(ours_ema, torch_run["ema"], f"{name} EMA")
        assert max(held.values()) < PARAM_RTOL, {k: v for k, v in held.items() if v >= PARAM_RTOL}
    else:
        assert not jax.tree.leaves(saved["ema_params"])


def test_init_from_with_ema_and_accumulation_resumes_after_sigterm(setup):
    """init_from + ema_decay + grad_accum_steps (the EMA once shared the loaded arrays, and the first step
    failed with 'Attempt to donate the same buffer twice'): stopped by SIGTERM mid-way and run again, the run
    logs the losses of the uninterrupted one bit for bit (accumulated gradients, optimiser and EMA restored)."""
    root, _, configs = setup
    flags = ["--config", configs["official-accum-ema"]]
    reference = runs.losses(_start_train_py(setup, "official-accum-ema")())
    runs.check_resumes(flags, str(root / "sigterm"), UPDATES * 2, after_step=5, reference=reference,
                       interruptions=("sigterm",))
    with open(os.path.join(root, "sigterm", "interrupted", "config.json")) as f:
        assert json.load(f)["lr_schedule_placement"] == "official"
