"""The shipped train step: sharding, AdamW against PyTorch (the official main.py loop) over several steps, EMA
and gradient accumulation."""

import jax
import numpy as np
import optax
import pytest
import torch

from configs import demo
from swin_jax.convert import convert_state_dict, export_timm_state_dict
from swin_jax.train import optim, sharding
from swin_jax.train.loop import build_model, build_training
from references import SMALL, numpy_state, perturb, randomize


def _config(**overrides):
    config = demo.get_config()
    config.model_overrides.update(dict(embed_dim=96, drop_path_rate=0.1))  # big enough that FSDP splits arrays
    config.input.update(dict(random_erase=0.25, mixup_alpha=0.8, cutmix_alpha=1.0))  # the whole device-side recipe
    config.total_steps, config.warmup_epochs = 100, 0  # the peak lr from the first step: updates that show
    # Adam's first steps scale each gradient element to about +-lr, so an element whose gradient is rounding
    # noise (the key bias, which the softmax cannot see; a dead unit), summed in another order on 8 devices,
    # could land anywhere in +-lr. With eps 1e-6 rather than 1e-8 such elements stay put; real ones still move.
    config.eps = 1e-6
    for key, value in overrides.items():
        config[key] = value
    return config


def _batch(n=16, size=32, classes=10, seed=0):
    rng = np.random.RandomState(seed)
    return {"image": rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8),
            "label": rng.randint(0, classes, (n,)).astype(np.int32)}


def _run(config, devices, steps=3, model=None):
    """Train `steps` steps on fixed batches from perturbed parameters; the params and metrics after each."""
    mesh = sharding.make_mesh(devices)
    model = model or build_model(config, 10)
    lr = optim.schedule(config, config.total_steps, 22)
    history = []
    with jax.set_mesh(mesh):
        state, state_sharding, train_step = build_training(config, model, lr, mesh, 10)
        state = state.replace(params=jax.device_put(perturb(jax.device_get(state.params)), state_sharding.params))
        for step in range(steps):
            batch = jax.device_put(_batch(seed=step), sharding.batch_sharding(mesh))
            state, metrics = train_step(state, batch)
            history.append((jax.device_get(state.params), jax.device_get(metrics)))
    return history, state_sharding


@pytest.fixture(scope="module")
def single_device():
    return _run(_config(), jax.devices()[:1])[0]


@pytest.mark.parametrize("fsdp", [False, True], ids=["data-parallel", "fsdp"])
def test_eight_devices_match_one(single_device, fsdp):
    history, state_sharding = _run(_config(fsdp=fsdp), jax.devices())
    specs = [s.spec for s in jax.tree.leaves(state_sharding.params)]
    if fsdp:
        assert sum(spec != jax.P() for spec in specs) >= 20  # the big matrices really are split
    else:
        assert all(spec == jax.P() for spec in specs)
    for step, ((params_8, metrics_8), (params_1, metrics_1)) in enumerate(zip(history, single_device)):
        np.testing.assert_allclose(metrics_8["train_loss"], metrics_1["train_loss"], rtol=1e-5, err_msg=step)
        np.testing.assert_allclose(metrics_8["grad_norm"], metrics_1["grad_norm"], rtol=1e-5, err_msg=step)
        # A dropped or doubled update is off by the lr (1e-3 here), twenty times the tolerance.
        for a, b in zip(jax.tree.leaves(params_8), jax.tree.leaves(params_1)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-5, err_msg=step)
    first, last = single_device[0][0], single_device[-1][0]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(last)))
    assert moved > 1e-3  # the steps really change the parameters, far beyond the tolerance


def official_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The official optimizer.py's set_weight_decay: no decay for 1-D tensors, names ending in '.bias', the
    model's no_weight_decay() (absolute_pos_embed) and names holding relative_position_bias_table."""
    decayed, exempt = [], []
    for name, p in model.named_parameters():
        no_decay = (p.ndim == 1 or name.endswith(".bias") or name == "absolute_pos_embed"
                    or "relative_position_bias_table" in name)
        (exempt if no_decay else decayed).append(p)
    return [{"params": decayed}, {"params": exempt, "weight_decay": 0.0}]


def main_py_training(model: torch.nn.Module, batches, criterion, *, steps_per_epoch: int, epochs: int,
                     warmup_epochs: float, lr: float, warmup_lr: float, min_lr: float, weight_decay: float,
                     betas=(0.9, 0.999), clip_grad: float = 5.0, accum: int = 1, placement: str = "official",
                     ema_decay: float = 0.0) -> dict:
    """Train `model` in place as the official main.py does, on `batches` ((samples, targets) per micro-step,
    steps_per_epoch of them per epoch); rates already scaled as main.py scales them (batch / 512, times the
    accumulation steps). build_optimizer: AdamW(set_weight_decay, eps 1e-8). build_scheduler: timm's
    CosineLRScheduler per update, warmup_prefix. train_one_epoch: loss / ACCUMULATION_STEPS, backward,
    and every ACCUMULATION_STEPS micro-steps clip_grad_norm_, optimizer.step(), zero_grad() and then

      placement "official": lr_scheduler.step_update((epoch * num_steps + idx) // ACCUMULATION_STEPS)
      placement "timm":     timm's train.py, num_updates += 1; lr_scheduler.step_update(num_updates)

    With ema_decay, timm's ModelEmaV2 after each update: ema = decay * ema + (1 - decay) * params.
    Returns the loss of every micro-step (before the division), and per update the rate it used, the
    gradient norm before clipping; the largest |gradient| each parameter saw; the EMA's parameters."""
    from timm.scheduler.cosine_lr import CosineLRScheduler

    optimizer = torch.optim.AdamW(official_param_groups(model, weight_decay), lr=lr, betas=betas, eps=1e-8,
                                  weight_decay=weight_decay)
    n_iter_per_epoch = steps_per_epoch // accum  # main.py: len(data_loader_train) // ACCUMULATION_STEPS
    total, warmup = int(epochs * n_iter_per_epoch), int(warmup_epochs * n_iter_per_epoch)
    scheduler = CosineLRScheduler(optimizer, t_initial=total - warmup, cycle_mul=1.0, lr_min=min_lr,
                                  warmup_lr_init=warmup_lr, warmup_t=warmup, cycle_limit=1, t_in_epochs=False,
                                  warmup_prefix=True)
    ema = {n: p.detach().clone() for n, p in model.named_parameters()} if ema_decay else None
    out = {"loss": [], "lr": [], "grad_norm": [],
           "largest_grad": {n: np.zeros(p.shape, np.float32) for n, p in model.named_parameters()}}
    num_updates = 0
    model.train()
    for epoch in range(epochs):
        optimizer.zero_grad()
        num_steps = steps_per_epoch  # main.py: len(data_loader)
        for idx in range(num_steps):
            samples, targets = batches[epoch * num_steps + idx]
            loss = criterion(model(samples), targets)
            out["loss"].append(loss.item())
            loss = loss / accum
            loss.backward()
            if (idx + 1) % accum == 0:
                for n, p in model.named_parameters():
                    out["largest_grad"][n] = np.maximum(out["largest_grad"][n], np.abs(p.grad.numpy()))
                if clip_grad:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                else:
                    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
                out["grad_norm"].append(grad_norm.item())
                out["lr"].append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                optimizer.zero_grad()
                if placement == "official":
                    scheduler.step_update((epoch * num_steps + idx) // accum)
                else:
                    num_updates += 1
                    scheduler.step_update(num_updates=num_updates)
                if ema is not None:
                    with torch.no_grad():
                        for n, p in model.named_parameters():
                            ema[n].copy_(ema[n] * ema_decay + (1.0 - ema_decay) * p)
    out["ema"] = {n: v.numpy() for n, v in ema.items()} if ema is not None else None
    return out


@pytest.mark.parametrize("placement", ["official", "timm"])
def test_adamw_steps_match_pytorch(placement):
    """Four steps of our train step against timm's Swin trained by main.py's loop (official_param_groups,
    AdamW, clip_grad_norm_, timm's CosineLRScheduler stepped where `placement` steps it): soft-target loss
    with label smoothing, no drop path, betas (0.8, 0.95), a weight decay large enough to see on every matrix
    and a clipping norm that binds."""
    from timm.loss import SoftTargetCrossEntropy
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    steps, batch_size, lr_peak, decay, clip = 4, 4, 1e-3, 5.0, 0.5
    architecture = {k: v for k, v in SMALL.items() if k not in ("img_size", "num_classes")}
    reference = randomize(TimmSwin(**SMALL, drop_path_rate=0.0)).train()
    config = demo.get_config()
    config.model_overrides = type(config.model_overrides)(dict(architecture, drop_path_rate=0.0))
    config.image_size, config.batch_size = 64, batch_size
    config.update(dict(warmup_epochs=1, epochs=steps, total_steps=0, base_lr=lr_peak * 512 / batch_size,
                       warmup_lr=lr_peak / 10 * 512 / batch_size, min_lr=lr_peak / 100 * 512 / batch_size,
                       weight_decay=decay, betas=(0.8, 0.95), clip_grad=clip, lr_schedule_placement=placement))
    config.input.update(dict(random_erase=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1))
    model = build_model(config, 10)
    lr = optim.schedule(config, steps, 1)  # one step per epoch
    assert lr.warmup_steps == 1 and float(lr(0)) == pytest.approx(lr_peak / 10)

    batches = [_batch(batch_size, 64, seed=s) for s in range(steps)]
    mesh = sharding.make_mesh(jax.devices()[:1])
    ours = []
    with jax.set_mesh(mesh):
        state, state_sharding, train_step = build_training(config, model, lr, mesh, 10)
        params = convert_state_dict(numpy_state(reference), model)
        state = state.replace(params=jax.device_put(params["params"], state_sharding.params))
        for batch in batches:
            state, metrics = train_step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
            ours.append(jax.device_get(metrics))
    final = export_timm_state_dict({"params": jax.device_get(state.params)}, model)

    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch_batches = [(((torch.from_numpy(b["image"]).float() / 255 - mean) / std).permute(0, 3, 1, 2),
                      torch.nn.functional.one_hot(torch.from_numpy(b["label"]).long(), 10).float() * 0.9 + 0.01)
                     for b in batches]
    assert len(official_param_groups(reference, decay)[0]["params"]) > 20
    torch_run = main_py_training(reference, torch_batches, SoftTargetCrossEntropy(), steps_per_epoch=1, epochs=steps,
                                 warmup_epochs=1, lr=lr_peak, warmup_lr=lr_peak / 10, min_lr=lr_peak / 100,
                                 weight_decay=decay, betas=(0.8, 0.95), clip_grad=clip, placement=placement)
    expected_lrs = [lr_peak / 10, lr_peak / 10, lr_peak] if placement == "official" else [lr_peak / 10, lr_peak]
    np.testing.assert_allclose(torch_run["lr"][:len(expected_lrs)], expected_lrs, rtol=1e-6)
    for step in range(steps):
        assert torch_run["grad_norm"][step] > clip, "the clipping must bind for this test to see it"
        np.testing.assert_allclose(float(ours[step]["train_loss"]), torch_run["loss"][step], rtol=1e-5, err_msg=step)
        np.testing.assert_allclose(float(ours[step]["grad_norm"]), torch_run["grad_norm"][step], rtol=1e-4,
                                   err_msg=step)
        np.testing.assert_allclose(float(ours[step]["lr"]), torch_run["lr"][step], rtol=1e-6, err_msg=step)

    # Adam's step lr * m / (sqrt(v) + eps) turns the float32 rounding of gradients at or below eps = 1e-8
    # (1e-10 to 2e-9 between two implementations that sum in different orders) into up to a few tenths of
    # lr. Elements whose gradient never rose above 1e-7 are held to lr per step (a wrong sign or a missing
    # decay is off by more); every other element of every tensor to 1e-5.
    worst = {}
    for name, p in reference.named_parameters():
        diff = np.abs(final[name] - p.detach().numpy())
        tiny = torch_run["largest_grad"][name] < 1e-7
        assert diff[tiny].max(initial=0.0) <= lr_peak * steps, name
        worst[name] = float(diff[~tiny].max(initial=0.0))
    print("adamw parity (%s), largest difference of any tensor: %.3g (%s)"
          % ((placement,) + max((v, k) for k, v in worst.items())))
    bad = {k: v for k, v in worst.items() if v >= 1e-5}
    assert not bad, bad


def _accumulating_config():
    config = demo.get_config()
    config.update(dict(grad_accum_steps=2, ema_decay=0.5, total_steps=8, warmup_epochs=0, clip_grad=0.0))
    config.model_overrides.drop_path_rate = 0.0
    config.input.update(dict(random_erase=0.0, mixup_alpha=0.0, cutmix_alpha=0.0))  # a deterministic loss
    return config


def test_ema_moves_once_per_optimiser_update_and_grad_norm_is_the_applied_gradient():
    """grad_accum_steps=2, ema_decay=0.5: the EMA stays put on the micro-step that only accumulates and
    takes exactly one step d * ema + (1 - d) * params at each update; grad_norm is the norm of the mean
    gradient of the two micro-batches, the gradient the optimiser applies."""
    config = _accumulating_config()
    model = build_model(config, 10)
    lr = optim.schedule(config, config.total_steps, 22)
    mesh = sharding.make_mesh(jax.devices()[:1])
    batches = [_batch(seed=s) for s in range(4)]
    with jax.set_mesh(mesh):
        state, _, train_step = build_training(config, model, lr, mesh, 10)
        states, metrics = [jax.device_get(state)], []
        for batch in batches:
            state, m = train_step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
            states.append(jax.device_get(state))
            metrics.append(jax.device_get(m))
    assert [bool(m["updated"]) for m in metrics] == [False, True, False, True]

    def close(a, b, **kw):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, **kw)

    for micro, update in ((1, 2), (3, 4)):
        before = states[micro - 1]
        close(states[micro].params, before.params, rtol=0, atol=0)  # accumulating only
        close(states[micro].ema_params, before.ema_params, rtol=0, atol=0)
        expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, before.ema_params, states[update].params)
        close(states[update].ema_params, expected, rtol=1e-6, atol=1e-7)
        assert max(float(np.abs(a - b).max()) for a, b in zip(
            jax.tree.leaves(states[update].params), jax.tree.leaves(before.params))) > 1e-4

    def loss(params, batch):
        images = (batch["image"].astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406])) / np.array(
            [0.229, 0.224, 0.225])
        targets = jax.nn.one_hot(batch["label"], 10) * 0.9 + 0.01
        logits = model.apply({"params": params}, images.astype(np.float32), train=True,
                             rngs={"dropout": jax.random.key(0)})
        return optax.softmax_cross_entropy(logits, targets).mean()

    grad = jax.jit(jax.grad(loss))
    for first, update in ((0, 1), (2, 3)):
        params = states[first].params
        mean = jax.tree.map(lambda a, b: (a + b) / 2, grad(params, batches[first]), grad(params, batches[first + 1]))
        np.testing.assert_allclose(metrics[update]["grad_norm"], optax.global_norm(mean), rtol=1e-4)
        single = optax.global_norm(grad(params, batches[update]))
        assert abs(float(single) - float(metrics[update]["grad_norm"])) > 1e-3 * float(single)
