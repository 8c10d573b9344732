"""The window-attention core: every implementation that runs on CPU against a NumPy reference and
against the default one, inside whole V1 and V2 models, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import swin_jax
from swin_jax.models import layers, windows

CPU_IMPLEMENTATIONS = ("xla", "jax", "tokamax")  # cudnn needs a GPU; tokamax runs its XLA path here


def numpy_attention(q, k, v, bias):
    """softmax(q k^T + bias) v per window, float64; q, k, v (B * nW, n, h, d), bias (nW or 1, h, n, n)."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    nw = bias.shape[0]
    logits = np.einsum("wqhd,wkhd->whqk", q, k).reshape(-1, nw, *bias.shape[1:]) + np.asarray(bias, np.float64)
    logits = logits.reshape(-1, *bias.shape[1:])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("whqk,wkhd->wqhd", probs, v)
    return out.reshape(*out.shape[:2], -1)


def random_inputs(window=7, images=2, heads=3, head_dim=8, shift=3, grid=14):
    keys = jax.random.split(jax.random.key(0), 4)
    num_windows = (grid // window) ** 2
    n = window * window
    q, k, v = (jax.random.normal(key, (images * num_windows, n, heads, head_dim)) for key in keys[:3])
    position = 0.5 * jax.random.normal(keys[3], (heads, n, n))
    mask = windows.shifted_window_mask(grid, grid, window, shift) if shift else None
    return q, k, v, layers.window_bias(position, mask)


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
@pytest.mark.parametrize("shift", [0, 3])
def test_core_matches_numpy_forward_and_backward(implementation, shift):
    q, k, v, bias = random_inputs(shift=shift)
    assert bias.shape == ((4 if shift else 1), 3, 49, 49)
    out = layers.window_attention(q, k, v, bias, implementation=implementation)
    np.testing.assert_allclose(out, numpy_attention(q, k, v, bias), rtol=1e-5, atol=1e-5)

    def loss(impl):
        weights = jnp.cos(jnp.arange(q.shape[0] * 49 * 24, dtype=jnp.float32)).reshape(q.shape[0], 49, 24)
        return lambda q, k, v, b: jnp.sum(weights * layers.window_attention(q, k, v, b, implementation=impl))

    got = jax.grad(loss(implementation), argnums=(0, 1, 2, 3))(q, k, v, bias)
    want = jax.grad(loss("xla"), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_padding_to_the_kernel_block_masks_the_padded_keys():
    """49 tokens go to the kernels as 64: the 15 padded keys must get no probability at all."""
    q, k, v, bias = random_inputs(shift=3)
    padded = layers._pad_tokens(q, k, v, bias)
    assert padded[0].shape[1] == 64 and padded[3].shape[2:] == (64, 64)
    np.testing.assert_array_equal(padded[3][..., 49:], layers._PADDED_KEY_BIAS)
    # The padded keys and values are zeros: any probability left on them would shrink the outputs.
    out = layers._kernel_attention(q, k, v, bias, "jax", None)
    np.testing.assert_allclose(out, layers._xla_attention(q, k, v, bias, None, None), rtol=1e-5, atol=1e-5)


def tiny(name, **overrides):
    config = dict(img_size=56, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=7, num_classes=5,
                  drop_path_rate=0.0)
    return swin_jax.create_model(name, **{**config, **overrides})


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256"])
@pytest.mark.parametrize("implementation", ["jax", "tokamax"])
def test_models_give_the_same_logits_and_gradients_with_every_implementation(name, implementation):
    reference = tiny(name, attention_impl="xla")
    model = tiny(name, attention_impl=implementation)
    x = jax.random.normal(jax.random.key(1), (2, 56, 56, 3))
    params = reference.init(jax.random.key(0), x)["params"]
    np.testing.assert_allclose(model.apply({"params": params}, x), reference.apply({"params": params}, x),
                               rtol=1e-5, atol=1e-5)

    def loss(m):
        return lambda p: jnp.sum(jnp.sin(m.apply({"params": p}, x)))

    got, want = jax.grad(loss(model))(params), jax.grad(loss(reference))(params)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(w).max())),
                                   err_msg=jax.tree_util.keystr(path))


def test_auto_picks_per_platform(monkeypatch):
    assert layers.resolve("auto", jnp.float32, dropout=False) == "xla"  # this CPU
    assert layers.resolve("tokamax", jnp.float32, dropout=False) == "tokamax"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.resolve("auto", jnp.bfloat16, dropout=False) == "cudnn"
    assert layers.resolve("auto", jnp.float32, dropout=False) == "xla"  # cuDNN's fused attention is bf16/fp16
    assert layers.resolve("auto", jnp.bfloat16, dropout=True) == "xla"  # no kernel applies dropout
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert layers.resolve("auto", jnp.bfloat16, dropout=False) == "tokamax"


def test_bad_choices_are_named():
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        tiny("swin_tiny_patch4_window7_224", attention_impl="flash")
    q, k, v, bias = random_inputs()
    with pytest.raises(ValueError, match="attention_impl='tokamax' cannot apply attention dropout"):
        layers.window_attention(q, k, v, bias, implementation="tokamax", dropout=lambda p: p)
    # With dropout "auto" stays on XLA, which applies it.
    out = layers.window_attention(q, k, v, bias, implementation="auto", dropout=lambda p: 0 * p)
    np.testing.assert_array_equal(out, 0.0)


def test_workdirs_saved_before_the_option_build_with_auto():
    import ml_collections

    from swin_jax.tasks.base import model_options

    saved = ml_collections.ConfigDict(dict(model_dtype="float32", remat=False, scan_unroll=False))
    assert model_options(saved)["attention_impl"] == "auto"


def test_auto_falls_back_to_xla_where_the_kernel_refuses(monkeypatch):
    """"auto" on a GPU asks cuDNN first; where cuDNN is missing (here: a CPU posing as a GPU) it computes
    with XLA; asked for by name, cuDNN's own error comes through."""
    q, k, v, bias = random_inputs(shift=3)
    q, k, v = (t.astype(jnp.bfloat16) for t in (q, k, v))
    want = layers.window_attention(q, k, v, bias, implementation="xla")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    np.testing.assert_array_equal(layers.window_attention(q, k, v, bias, implementation="auto"), want)
    with pytest.raises(RuntimeError, match="cuDNN"):
        layers.window_attention(q, k, v, bias, implementation="cudnn")
