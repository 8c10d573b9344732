"""Swin V1 model: parameter counts, shapes, layouts, modes and errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import swin_jax
from swin_jax.models import windows
from swin_jax.models.swin import SwinTransformer, stack_blocks, unstack_blocks
from references import (SMALL, apply, check_close, images, jax_outputs, numpy_state, param_count, perturb, randomize,
                        timm_outputs)


@pytest.mark.parametrize("name, expected", [
    ("swin_tiny_patch4_window7_224", 28_288_354),
    ("swin_small_patch4_window7_224", 49_606_258),
    ("swin_base_patch4_window7_224", 87_768_224),
    ("swin_base_patch4_window12_384", 87_903_584),
    ("swin_large_patch4_window7_224", 196_532_476),
    ("swin_large_patch4_window12_384", 196_735_516),
])
def test_parameter_counts_match_the_official_models(name, expected):
    model = swin_jax.create_model(name, num_classes=1000)
    assert param_count(model) == expected


def stage_shapes(model, height, width):
    def run():
        variables = model.init(jax.random.key(0), jnp.zeros((1, height, width, 3)))
        _, state = model.apply(variables, jnp.zeros((1, height, width, 3)), mutable=["intermediates"])
        return state["intermediates"]

    inter = jax.eval_shape(run)
    return [inter[f"stage{i}"][0].shape[1:] for i in range(4)]


def test_tiny_stage_shapes_at_224():
    model = swin_jax.create_model("swin_tiny_patch4_window7_224")
    assert stage_shapes(model, 224, 224) == [(56, 56, 96), (28, 28, 192), (14, 14, 384), (7, 7, 768)]


@pytest.mark.parametrize("height, width, expected", [
    # 230x317 -> padded to 232x320 -> 58x80 patches, then halved with odd sizes rounded up.
    (230, 317, [(58, 80), (29, 40), (15, 20), (8, 10)]),
    (97, 64, [(25, 16), (13, 8), (7, 4), (4, 2)]),
])
def test_non_square_non_divisible_inputs(height, width, expected):
    tiny = swin_jax.create_model("swin_tiny_patch4_window7_224")
    dims = (96, 192, 384, 768)
    assert stage_shapes(tiny, height, width) == [(*hw, c) for hw, c in zip(expected, dims)]
    # And they really run (a small model with the same edge cases: padding, odd merges, shrunk windows).
    model = SwinTransformer(**{**SMALL, "img_size": 224, "window_size": 7})
    x = jax.random.normal(jax.random.key(0), (2, height, width, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    logits = apply(model, variables, x)
    assert logits.shape == (2, 10) and np.isfinite(np.asarray(logits)).all()


def _layer_norm(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def test_dense_backbone_outputs_normalised_stage_maps(small):
    classifier, variables, x = small
    model = classifier.clone(out_indices=(1, 3), num_classes=0)
    params = {k: v for k, v in variables["params"].items() if k not in ("head", "norm")}
    params.update(norm1=perturb(jax.tree.map(lambda p: p[:32], variables["params"]["norm"]), seed=5),
                  norm3=perturb(variables["params"]["norm"], seed=6))
    chex.assert_trees_all_equal_shapes(params, jax.eval_shape(model.init, jax.random.key(1), x)["params"])
    outs = apply(model, {"params": params}, x)
    assert [o.shape for o in outs] == [(2, 8, 8, 32), (2, 2, 2, 128)]
    # Each output is its stage map (the classifier's, same blocks) through the stage's own LayerNorm.
    _, stages = jax_outputs(classifier, variables, x)
    for out, stage, norm in zip(outs, (stages[1], stages[3]), ("norm1", "norm3")):
        np.testing.assert_allclose(out, _layer_norm(stage, params[norm]), rtol=1e-5, atol=1e-5)


def test_pooled_features_without_head(small):
    classifier, variables, x = small
    model = classifier.clone(num_classes=0)
    params = {k: v for k, v in variables["params"].items() if k != "head"}
    assert "head" not in jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    pooled = apply(model, {"params": params}, x)
    assert pooled.shape == (2, 128)
    _, stages = jax_outputs(classifier, variables, x)
    want = _layer_norm(stages[3], params["norm"]).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-5)
    # and the classifier's logits are the head applied to these features
    head = variables["params"]["head"]
    np.testing.assert_allclose(apply(classifier, variables, x), want @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small():
    """The small model with every parameter perturbed (no LayerNorm at 1 and 0, no bias at 0)."""
    model = SwinTransformer(**SMALL)
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    return model, {"params": perturb(jax.jit(model.init)(jax.random.key(1), x)["params"])}, x


def test_jit_and_eager_agree(small):
    model, variables, x = small
    eager = model.apply(variables, x)
    # Under jit XLA fuses and reorders the float32 sums differently from op-by-op execution: a few ulps
    # per op, which add up over the blocks to ~1e-6 on logits of order 1 (seen: 1.1e-6 on one of 20).
    chex.assert_trees_all_close(jax.jit(model.apply)(variables, x), eager, rtol=1e-5, atol=1e-5)


def test_masks_and_indices_are_built_once_not_per_call(small):
    model, variables, x = small
    traces = []

    @jax.jit
    def forward(variables, x):
        traces.append(1)
        return model.apply(variables, x)

    windows.shifted_window_mask.cache_clear()
    windows.relative_position_index.cache_clear()
    forward(variables, x).block_until_ready()
    built = (windows.shifted_window_mask.cache_info().misses, windows.relative_position_index.cache_info().misses)
    # 64x64 input: stages of 16, 8, 4 (one window, unshifted) and 2 patches: two distinct masks.
    assert built == (2, 2)
    for _ in range(3):
        forward(variables, x + 1.0).block_until_ready()
    assert len(traces) == 1
    assert (windows.shifted_window_mask.cache_info().misses, windows.relative_position_index.cache_info().misses) == built
    # In the compiled program the masks are literals: no iota/compare chain rebuilds them.
    jaxpr = jax.make_jaxpr(model.apply)(variables, x)
    assert "iota" not in str(jaxpr)


def test_scanned_and_unrolled_blocks_compute_the_same(small):
    model, variables, x = small
    unrolled = model.clone(scan_blocks=False)
    params = unstack_blocks(variables["params"])
    reference = jax.eval_shape(lambda: unrolled.init(jax.random.key(0), x))["params"]
    chex.assert_trees_all_equal_shapes(params, reference)
    # The logits and every stage map; the blocks of each pair differ, so a swap between them would show.
    chex.assert_trees_all_close(jax_outputs(unrolled, {"params": params}, x), jax_outputs(model, variables, x),
                                rtol=1e-6, atol=1e-6)
    assert not np.allclose(params["layers_0"]["blocks_0"]["norm1"]["scale"], params["layers_0"]["blocks_1"]["norm1"]["scale"])
    chex.assert_trees_all_equal(stack_blocks(params), variables["params"])


@pytest.mark.parametrize("option", [dict(remat=True), dict(scan_unroll=True), dict(remat=True, scan_unroll=True)],
                         ids=["remat", "scan_unroll", "both"])
def test_remat_and_unrolling_change_neither_outputs_nor_gradients(small, option):
    model, _, x = small
    model = model.clone(depths=(2, 2, 4, 2), drop_path_rate=0.3)  # a stage that loops over two pairs
    params = perturb(jax.jit(model.init)(jax.random.key(0), x)["params"])

    def loss(m):
        return lambda p: jnp.mean(m.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(3)}) ** 2)

    plain = jax.jit(jax.value_and_grad(loss(model)))(params)
    other = jax.jit(jax.value_and_grad(loss(model.clone(**option))))(params)
    chex.assert_trees_all_close(other, plain, rtol=1e-5, atol=1e-6)


def test_training_mode_applies_drop_path_and_dropout(small):
    model, variables, x = small
    model = model.clone(drop_path_rate=0.5, drop_rate=0.1)
    a = apply(model, variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    b = apply(model, variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    c = apply(model, variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    chex.assert_trees_all_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, apply(model, variables, x))
    # With all rates at zero, training mode computes exactly what evaluation does.
    quiet = model.clone(drop_path_rate=0.0, drop_rate=0.0)
    chex.assert_trees_all_close(apply(quiet, variables, x, train=True, rngs={"dropout": jax.random.key(0)}),
                                apply(quiet, variables, x), atol=1e-6)


def bf16_products(model, variables, x) -> tuple[int, int]:
    """(matrix products with bf16 operands, all matrix products) in the compiled forward pass."""
    jaxpr = str(jax.make_jaxpr(model.apply)(variables, x))
    products = [line for line in jaxpr.splitlines() if "dot_general[" in line or "conv_general_dilated[" in line]
    return sum(":bf16[" in line.split("=", 1)[1] or "bf16[" in line.split("=", 1)[0] for line in products), len(products)


def test_bf16_compute_keeps_float32_parameters(small):
    model, variables, x = small
    bf16 = model.clone(dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(jax.eval_shape(bf16.init, jax.random.key(1), x)))
    out, reference = apply(bf16, variables, x), apply(model, variables, x)
    assert out.dtype == jnp.float32
    # Really computed in bf16: every product (the attention core's too; its softmax runs in float32 between
    # them) takes bf16, and the result moves.
    assert bf16_products(model, variables, x)[0] == 0
    low, total = bf16_products(bf16, variables, x)
    assert low == total > 0, (low, total)
    error = float(jnp.abs(out - reference).max() / jnp.abs(reference).max())
    assert 1e-4 < error < 0.05, error


def test_initialisation_follows_the_official_recipe():
    model = swin_jax.create_model("swin_tiny_patch4_window7_224")
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    block = params["layers_2"]["blocks"]["block1"]
    for w in (block["attn"]["qkv"]["kernel"], block["mlp"]["fc1"]["kernel"], block["attn"]["relative_position_bias_table"]):
        assert abs(float(np.std(w)) - 0.02) < 0.001 and float(np.abs(w).max()) < 0.2
    assert not np.any(block["attn"]["qkv"]["bias"]) and not np.any(block["mlp"]["fc2"]["bias"])
    np.testing.assert_array_equal(block["norm1"]["scale"], 1.0)
    # Parameters of the scanned blocks are drawn independently per block.
    assert not np.allclose(block["attn"]["qkv"]["kernel"][0], block["attn"]["qkv"]["kernel"][1])


@pytest.mark.parametrize("overrides, message", [
    (dict(depths=(2, 2, 6)), r"num_heads=.*one entry per stage"),
    (dict(num_heads=(3, 5, 12, 24)), r"stage 1 has 192 channels, which 5 heads do not divide"),
    (dict(depths=(2, 2, 5, 2)), r"depths=.*every depth must be even"),
    (dict(window_size=0), r"window_size=0"),
    (dict(img_size=16), r"img_size=16: a 4x4 patch grid is too small"),
    (dict(out_indices=(0, 4)), r"out_indices"),
])
def test_configs_that_do_not_fit_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        swin_jax.create_model("swin_tiny_patch4_window7_224", **overrides)


def test_odd_depths_match_timm_unrolled():
    """Odd depths (scan_blocks=False): the blocks still alternate no shift / shift, as timm's do."""
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    config = dict(SMALL, depths=(1, 3, 1, 1))
    tm = randomize(TimmSwin(**config, drop_path_rate=0.0))
    model = SwinTransformer(**config, scan_blocks=False, drop_path_rate=0.0)
    variables = swin_jax.convert.convert_state_dict(numpy_state(tm), model)
    assert "blocks_2" in variables["params"]["layers_1"]
    x = images(2, 64, 64)
    check_close("odd depths (1, 3, 1, 1)", jax_outputs(model, variables, x), timm_outputs(tm, x))


def test_bad_inputs_are_named(small):
    model, variables, _ = small
    with pytest.raises(ValueError, match=r"NHWC.*got shape \(64, 64, 3\)"):
        apply(model, variables, jnp.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match=r"expected 3 channels.*got shape \(1, 3, 64, 64\)"):
        apply(model, variables, jnp.zeros((1, 3, 64, 64)))
    with pytest.raises(ValueError, match=r"unknown model name 'swin_tiny_patch4_window7'.*Did you mean swin_tiny"):
        swin_jax.create_model("swin_tiny_patch4_window7")
    # A shortened name suggests the names it begins first (not the most similar V2 name).
    with pytest.raises(ValueError, match=r"unknown model name 'swin_tiny'\. Did you mean swin_tiny_patch4_window7_224\?"):
        swin_jax.create_model("swin_tiny")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['windowsize'\]"):
        swin_jax.create_model("swin_tiny_patch4_window7_224", windowsize=8)


def test_absolute_position_embedding_checks_the_grid():
    model = SwinTransformer(**{**SMALL, "ape": True})
    x = jnp.ones((1, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert variables["params"]["absolute_pos_embed"].shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match="absolute_pos_embed covers a 16x16 patch grid"):
        apply(model, variables, jnp.ones((1, 96, 64, 3)))
