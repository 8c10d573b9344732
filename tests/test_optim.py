import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from configs import swin_b
from swin_jax.convert import layouts
from swin_jax.convert.fitting import expected_params
from swin_jax.models import create_model
from swin_jax.train import optim


def test_schedule_matches_the_official_cosine_scheduler():
    """configs/swin_b.py at batch 1024 (1251 steps per ImageNet epoch) against timm's CosineLRScheduler
    built as the official lr_scheduler.py builds it."""
    from timm.scheduler.cosine_lr import CosineLRScheduler

    config = swin_b.get_config()
    steps_per_epoch = 1_281_167 // config.batch_size
    lr = optim.schedule(config, int(config.epochs * steps_per_epoch), steps_per_epoch)
    assert lr.peak_lr == pytest.approx(5e-4 * 1024 / 512) and lr.min_lr == pytest.approx(5e-6 * 2)
    assert lr.warmup_lr == pytest.approx(5e-7 * 2) and lr.warmup_steps == 20 * 1251 and lr.total_steps == 300 * 1251
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr.peak_lr)
    reference = CosineLRScheduler(optimizer, t_initial=lr.total_steps - lr.warmup_steps, lr_min=lr.min_lr,
                                  warmup_lr_init=lr.warmup_lr, warmup_t=lr.warmup_steps, cycle_limit=1,
                                  t_in_epochs=False, warmup_prefix=True)
    points = {"warm-up start": 0, "warm-up middle": 12_510, "warm-up end": lr.warmup_steps - 1,
              "peak": lr.warmup_steps, "mid-run": 160_000, "near the end": lr.total_steps - 1, "end": lr.total_steps}
    for name, step in points.items():
        reference.step_update(step)
        np.testing.assert_allclose(float(lr(step)), optimizer.param_groups[0]["lr"], rtol=2e-6, err_msg=name)
    assert float(lr(0)) == pytest.approx(1e-6) and float(lr(lr.total_steps)) == pytest.approx(1e-5)


def test_scaling_with_accumulation_and_total_steps_override():
    config = swin_b.get_config()
    config.batch_size, config.grad_accum_steps = 256, 4
    assert optim.scaled_lr(config.base_lr, config) == pytest.approx(5e-4 * 256 * 4 / 512)
    lr = optim.schedule(config, total_steps=300 * 400, steps_per_epoch=400)
    assert lr.total_steps == 30_000 and lr.warmup_steps == 2_000  # counted in optimiser updates
    config.total_steps = 3000
    assert optim.schedule(config, total_steps=3000, steps_per_epoch=400).warmup_steps == int(750 * 20 / 300)


def _official_no_decay(model: torch.nn.Module) -> set[str]:
    """The official set_weight_decay: 1-D tensors, biases, absolute_pos_embed, bias tables."""
    return {name for name, p in model.named_parameters()
            if p.ndim == 1 or name.endswith(".bias") or name == "absolute_pos_embed"
            or "relative_position_bias_table" in name}


@pytest.mark.parametrize("ape", [False, True])
def test_weight_decay_mask_is_the_official_set(ape):
    import timm

    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    ours = create_model("swin_tiny_patch4_window7_224", ape=ape)
    scanned = jax.eval_shape(lambda: ours.init(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32)))["params"]
    stacked_mask = traverse_util.flatten_dict(optim.decay_mask(scanned))
    assert all(isinstance(v, bool) for v in stacked_mask.values())
    no_decay = {layouts.timm_key(path) for path in expected_params(ours) if not optim.decays(path)}
    decay = {layouts.timm_key(path) for path in expected_params(ours) if optim.decays(path)}
    official = _official_no_decay(reference) | ({"absolute_pos_embed"} if ape else set())
    # timm names the head head.fc; everything else maps one to one.
    assert no_decay == official
    assert decay == {n for n, _ in reference.named_parameters()} - official
    listed = {"patch_embed.norm.weight", "patch_embed.proj.bias", "layers.0.blocks.1.attn.relative_position_bias_table",
              "layers.2.blocks.5.norm2.bias", "layers.1.downsample.norm.weight", "norm.weight", "head.fc.bias"}
    assert listed <= no_decay
    assert {"patch_embed.proj.weight", "layers.1.downsample.reduction.weight", "layers.3.blocks.1.mlp.fc2.weight",
            "head.fc.weight"} <= decay
    assert len(no_decay) == 120 + ape and len(decay) == 53  # 12 blocks x 9 + 12 others; 12 x 4 + 5


def test_layer_ids_follow_simmim_fine_tuning():
    model = create_model("swin_tiny_patch4_window7_224")
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32)))["params"]
    ids = optim.layer_ids(params, model.depths)
    assert ids[("patch_embed", "proj", "kernel")] == 0
    np.testing.assert_array_equal(ids[("layers_0", "blocks", "block0", "attn", "qkv", "kernel")], [1])
    np.testing.assert_array_equal(ids[("layers_0", "blocks", "block1", "attn", "qkv", "kernel")], [2])
    np.testing.assert_array_equal(ids[("layers_2", "blocks", "block1", "mlp", "fc1", "bias")], [6, 8, 10])
    assert ids[("layers_2", "downsample", "reduction", "kernel")] == 4  # merges after block 4 of 12
    assert ids[("head", "kernel")] == ids[("norm", "scale")] == 13
    scales = traverse_util.flatten_dict(optim.layer_scales(params, model.depths, 0.9))
    assert scales[("layers_2", "blocks", "block1", "mlp", "fc1", "kernel")].shape == (3, 1, 1)
    np.testing.assert_allclose(scales[("patch_embed", "proj", "kernel")], 0.9 ** 13)
    np.testing.assert_allclose(scales[("head", "kernel")], 1.0)


@pytest.mark.parametrize("name, part", [("upernet_swin_tiny_patch4_window7_224", "backbone"),
                                        ("simmim_swin_tiny_patch4_window7_224", "encoder"),
                                        ("mask_rcnn_swin_tiny_patch4_window7_224", "backbone")])
def test_layer_ids_of_a_swin_inside_a_segmenter_simmim_model_or_detector(name, part):
    """The Swin inside is counted as the classifier's is; heads and decoder are last (scale 1)."""
    small = dict(embed_dim=16, num_heads=(1, 2, 2, 4), img_size=64)
    model = create_model(name, **small)
    inputs = [np.zeros((1, 64, 64, 3), np.float32)] + ([np.zeros((1, 16, 16), bool)] if part == "encoder" else [])
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
    classifier = create_model("swin_tiny_patch4_window7_224", **small)
    alone = optim.layer_ids(jax.eval_shape(lambda: classifier.init(jax.random.key(0), inputs[0]))["params"],
                            model.depths if hasattr(model, "depths") else classifier.depths)
    ids = optim.layer_ids(params, classifier.depths)
    inside = {path[1:]: v for path, v in ids.items() if path[0] == part}
    for path, value in inside.items():
        if path in alone and path[0] not in ("norm", "head"):
            np.testing.assert_array_equal(value, alone[path], err_msg=str(path))
    assert ids[(part, "patch_embed", "proj", "kernel")] == 0
    np.testing.assert_array_equal(ids[(part, "layers_2", "blocks", "block1", "mlp", "fc1", "bias")], [6, 8, 10])
    heads = [v for path, v in ids.items() if path[0] != part]
    assert heads and all(v == 13 for v in heads)
    scales = traverse_util.flatten_dict(optim.layer_scales(params, classifier.depths, 0.9))
    np.testing.assert_allclose(scales[(part, "patch_embed", "proj", "kernel")], 0.9 ** 13)
    assert len({float(np.min(v)) for v in scales.values()}) > 2


def test_multistep_milestones_keep_their_share_when_total_steps_overrides_the_epochs():
    from configs import simmim_swin_b_192

    config = simmim_swin_b_192.get_config()  # 800 epochs, warm-up 10, milestone at 700
    lr = optim.schedule(config, total_steps=800 * 100, steps_per_epoch=100)
    assert lr.warmup_steps == 1000 and lr.milestones == (70_000,)
    config.total_steps = 1600
    lr = optim.schedule(config, total_steps=1600, steps_per_epoch=100)
    assert lr.warmup_steps == 20 and lr.milestones == (1400,)


def _official_v2_no_decay(model: torch.nn.Module) -> set[str]:
    """The official V2 set_weight_decay: 1-D tensors, biases, absolute_pos_embed (no_weight_decay) and
    every name holding cpb_mlp, logit_scale or relative_position_bias_table (no_weight_decay_keywords)."""
    keywords = ("cpb_mlp", "logit_scale", "relative_position_bias_table")
    return {name for name, p in model.named_parameters()
            if p.ndim == 1 or name.endswith(".bias") or name == "absolute_pos_embed"
            or any(k in name for k in keywords)}


def test_weight_decay_mask_is_the_official_v2_set():
    import timm

    with torch.device("meta"):  # shapes and names only
        reference = timm.create_model("swinv2_tiny_window8_256", pretrained=False)
    ours = create_model("swinv2_tiny_window8_256")
    scanned = jax.eval_shape(lambda: ours.init(jax.random.key(0), np.zeros((1, 256, 256, 3), np.float32)))["params"]
    stacked_mask = traverse_util.flatten_dict(optim.decay_mask(scanned))
    assert all(isinstance(v, bool) for v in stacked_mask.values())
    assert not stacked_mask[("layers_2", "blocks", "block1", "attn", "cpb_mlp", "0", "kernel")]
    no_decay = {layouts.timm_key(path) for path in expected_params(ours) if not optim.decays(path)}
    decay = {layouts.timm_key(path) for path in expected_params(ours) if optim.decays(path)}
    official = _official_v2_no_decay(reference)
    assert no_decay == official
    assert decay == {n for n, _ in reference.named_parameters()} - official
    assert {"layers.0.blocks.1.attn.cpb_mlp.0.weight", "layers.0.blocks.1.attn.cpb_mlp.0.bias",
            "layers.0.blocks.1.attn.cpb_mlp.2.weight", "layers.2.blocks.5.attn.logit_scale",
            "layers.2.blocks.5.attn.q_bias", "layers.2.blocks.5.attn.v_bias", "layers.1.downsample.norm.weight",
            "layers.3.blocks.0.norm1.weight", "head.fc.bias"} <= no_decay
    assert {"patch_embed.proj.weight", "layers.1.downsample.reduction.weight", "layers.3.blocks.1.attn.qkv.weight",
            "layers.3.blocks.1.attn.proj.weight", "head.fc.weight"} <= decay
    assert len(no_decay) == 168 and len(decay) == 53  # 12 blocks x 13 + 12 others; 12 x 4 + 5


def test_v2_layer_ids_follow_simmim_fine_tuning():
    model = create_model("swinv2_tiny_window8_256")
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 256, 256, 3), np.float32)))["params"]
    ids = optim.layer_ids(params, model.depths)
    assert ids[("patch_embed", "proj", "kernel")] == 0
    np.testing.assert_array_equal(ids[("layers_0", "blocks", "block1", "attn", "cpb_mlp", "2", "kernel")], [2])
    np.testing.assert_array_equal(ids[("layers_2", "blocks", "block0", "attn", "logit_scale")], [5, 7, 9])
    assert ids[("layers_3", "downsample", "norm", "scale")] == 10  # merges after block 10 of 12
    assert ids[("head", "kernel")] == ids[("norm", "scale")] == 13
    scales = traverse_util.flatten_dict(optim.layer_scales(params, model.depths, 0.9))
    assert scales[("layers_2", "blocks", "block1", "attn", "cpb_mlp", "0", "kernel")].shape == (3, 1, 1)
    assert scales[("layers_2", "blocks", "block1", "attn", "logit_scale")].shape == (3, 1, 1, 1)
    np.testing.assert_allclose(scales[("layers_1", "blocks", "block0", "attn", "q_bias")][0], 0.9 ** (13 - 3))




def test_frozen_stages_as_mmseg_defines_them():
    """The frozen set, in the official names (the official backbone's `_freeze_stages`: patch_embed, then
    absolute_pos_embed, then layers[0 .. k - 2], each holding the patch merging after it), and an update
    that leaves it bit for bit as it was: no gradient step, no weight decay, no share of the clipping norm."""
    import re

    import jax.numpy as jnp

    model = create_model("upernet_swin_tiny_patch4_window7_224", img_size=64, window_size=4, ape=True, channels=16,
                         auxiliary_channels=8, num_classes=3)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
    flat = traverse_util.flatten_dict(params)
    official = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample",
                       layouts.timm_key(path[1:])): path for path in flat if path[0] == "backbone"}
    for frozen_stages in (-1, 0, 1, 2, 4):
        want = {path for key, path in official.items()
                if (frozen_stages >= 0 and key.startswith("patch_embed."))
                or (frozen_stages >= 1 and key == "absolute_pos_embed")
                or any(key.startswith(f"layers.{i}.") for i in range(frozen_stages - 1))}
        assert {path for path in flat if optim.frozen(path, frozen_stages)} == want, frozen_stages
    assert optim.frozen(("backbone", "layers_1", "downsample", "reduction", "kernel"), 2)  # merging after stage 0
    assert not optim.frozen(("backbone", "layers_2", "downsample", "reduction", "kernel"), 2)

    config = swin_b.get_config()
    config.frozen_stages, config.weight_decay, config.clip_grad = 2, 0.5, 1.0
    tx = optim.optimizer(config, params, optim.schedule(config, 10, 5), model.backbone.depths)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    moved = {path for path, u in traverse_util.flatten_dict(updates).items() if float(jnp.abs(u).max()) > 0}
    assert moved == {path for path in flat if not optim.frozen(path, 2)}
    assert len(moved) < len(flat)


@pytest.mark.parametrize("recipe, placement", [("swin_b", "official"), ("simmim_swin_b_192", "official"),
                                               ("upernet_swin_t_ade20k", "timm")])
def test_each_recipe_applies_the_schedule_where_its_official_loop_does(recipe, placement):
    """The rate each update runs at, over the whole run. main.py and main_simmim_pt.py call
    lr_scheduler.step_update(...) after optimizer.step(), on a scheduler that starts at warmup_lr, so update
    u runs at the rate the scheduler was given for u - 1 (updates 0 and 1 at warmup_lr). mmcv's
    LrUpdaterHook sets the rate in before_train_iter from runner.iter, so update u runs at the rate for u."""
    import importlib

    from timm.scheduler.cosine_lr import CosineLRScheduler

    config = importlib.import_module(f"configs.{recipe}").get_config()
    assert optim.placement(config) == placement == config.lr_schedule_placement
    steps_per_epoch = 1_281_167 // config.batch_size
    total = config.total_steps or int(config.epochs * steps_per_epoch)  # updates: no accumulation
    lr = optim.schedule(config, total, steps_per_epoch)
    applied = optim.update_lr(config, lr)
    updates = [0, 1, 2, 3, lr.warmup_steps - 1, lr.warmup_steps, lr.warmup_steps + 1, total // 2, total - 1]
    if placement == "timm":
        for u in updates:
            assert float(applied(u)) == float(lr(u)), u
        return
    assert float(applied(0)) == float(applied(1)) == float(lr(0)) and float(applied(2)) == float(lr(1))
    assert float(lr(1)) > float(lr(0))
    for u in updates:
        assert float(applied(u)) == float(lr(max(u - 1, 0))), u
    if config.schedule == "cosine":  # main.py's loop itself, on timm's scheduler
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr.peak_lr)
        scheduler = CosineLRScheduler(optimizer, t_initial=lr.total_steps - lr.warmup_steps, lr_min=lr.min_lr,
                                      warmup_lr_init=lr.warmup_lr, warmup_t=lr.warmup_steps, cycle_limit=1,
                                      t_in_epochs=False, warmup_prefix=True)
        for u in updates:
            if u:
                scheduler.step_update(u - 1)  # what ran after update u - 1
            np.testing.assert_allclose(float(applied(u)), optimizer.param_groups[0]["lr"], rtol=2e-6, err_msg=u)


def test_lr_schedule_placement_of_configs_written_before_it_and_bad_values():
    """A config without the field (an older config file, a workdir's config.json) runs as runs did before,
    the rate of update u at u; the optimiser state has the same structure either way, so checkpoints written
    before the field existed resume. A misspelt value is an error naming the field."""
    import json

    import jax.numpy as jnp
    import ml_collections

    from swin_jax.train.loop import TrainingError, _check

    config = swin_b.get_config()
    old = config.to_dict()
    del old["lr_schedule_placement"]
    old = ml_collections.ConfigDict(json.loads(json.dumps(old)))
    assert optim.placement(old) == "timm"
    lr = optim.schedule(config, 300, 10)
    assert float(optim.update_lr(old, lr)(1)) == float(lr(1)) != float(optim.update_lr(config, lr)(1))
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    for accum in (1, 4):
        config.grad_accum_steps = old.grad_accum_steps = accum
        structures = [jax.tree.structure(optim.optimizer(c, params, lr, (2,)).init(params)) for c in (config, old)]
        assert structures[0] == structures[1]
    config.lr_schedule_placement = "mmcv"
    with pytest.raises(ValueError, match="lr_schedule_placement='mmcv'"):
        optim.placement(config)
    with pytest.raises(TrainingError, match="must be 'official' or 'timm'"):
        _check(config)
