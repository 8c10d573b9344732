"""PyTorch checkpoints -> swin_jax: parity with timm, Hugging Face and the official layout, and back."""

import logging
import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.swin_transformer import checkpoint_filter_fn
from transformers import SwinConfig, SwinForImageClassification

import swin_jax
from swin_jax.convert import (ConversionError, convert_state_dict, export_timm_state_dict, load_pytorch_checkpoint,
                              resample)
from swin_jax.convert.__main__ import main as convert_main
from swin_jax.models.swin import SwinTransformer
from references import (ATOL, RTOL, SMALL, check_close, images, jax_outputs, numpy_state, official_layout, randomize,
                        timm_outputs)

def check_timm_parity(name, tmp_path):
    tm = randomize(timm.create_model(name))
    path = tmp_path / f"{name}.safetensors"
    save_file(tm.state_dict(), str(path))
    model = swin_jax.create_model(name)
    variables = load_pytorch_checkpoint(path, model)
    x = images(2, model.img_size, model.img_size)
    check_close(f"timm {name}", jax_outputs(model, variables, x), timm_outputs(tm, x))


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swin_base_patch4_window12_384"])
def test_timm_parity(name, tmp_path):
    check_timm_parity(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
                                  "swin_large_patch4_window7_224", "swin_large_patch4_window12_384"])
def test_timm_parity_all_variants(name, tmp_path):
    check_timm_parity(name, tmp_path)


def hf_tiny(num_labels=1000, **options):
    config = SwinConfig(**options, image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                        window_size=7, num_labels=num_labels, hidden_act="gelu", layer_norm_eps=1e-5)
    return randomize(SwinForImageClassification(config))


def hf_outputs(hf, x_nhwc):
    with torch.no_grad():
        out = hf(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2), output_hidden_states=True,
                 output_hidden_states_before_downsampling=True)
    return out.logits.numpy(), [t.permute(0, 2, 3, 1).numpy() for t in out.reshaped_hidden_states[1:5]]


def test_absolute_position_embedding_parity_and_resize():
    hf = hf_tiny(use_absolute_embeddings=True)
    with torch.no_grad():
        hf.swin.embeddings.position_embeddings.normal_(0, 0.5)
    state = numpy_state(hf)
    model = swin_jax.create_model("swin_tiny_patch4_window7_224", ape=True)
    variables = convert_state_dict(state, model)
    x = images(1, 224, 224)
    chex.assert_trees_all_close(jax_outputs(model, variables, x), hf_outputs(hf, x), rtol=RTOL, atol=ATOL)
    # At another resolution the (1, 56*56, C) embedding is resized as F.interpolate does it.
    big = convert_state_dict(state, swin_jax.create_model("swin_tiny_patch4_window7_224", ape=True, img_size=256))
    flat = torch.from_numpy(state["swin.embeddings.position_embeddings"])
    want = F.interpolate(flat.reshape(1, 56, 56, 96).permute(0, 3, 1, 2), size=(64, 64), mode="bicubic",
                         align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(big["params"]["absolute_pos_embed"], want, rtol=1e-5, atol=1e-5)


def test_init_from_a_converted_directory_fits_our_own_parameters(tmp_path, monkeypatch):
    """A converted ape=True directory (timm's layout has no absolute position embedding) initialises a
    model at 384 / window 12 with 10 classes: bias tables resampled, the embedding resized and the head
    reset on our own parameter tree, exactly as converting the PyTorch file to that model does."""
    from swin_jax import checkpoint
    from swin_jax.convert import fitting, layouts
    from swin_jax.train.loop import load_init

    hf = hf_tiny(use_absolute_embeddings=True)
    with torch.no_grad():
        hf.swin.embeddings.position_embeddings.normal_(0, 0.5)
    state = numpy_state(hf)
    source = swin_jax.create_model("swin_tiny_patch4_window7_224", ape=True)
    checkpoint.save_pretrained(tmp_path / "ape", convert_state_dict(state, source), "swin_tiny_patch4_window7_224",
                               {"ape": True})
    target = swin_jax.create_model("swin_tiny_patch4_window7_224", ape=True, img_size=384, window_size=12,
                                   num_classes=10)
    expected = convert_state_dict(state, target)["params"]
    checkpoint.save_pretrained(tmp_path / "plain", convert_state_dict(numpy_state(hf_tiny()), swin_jax.create_model(
        "swin_tiny_patch4_window7_224")), "swin_tiny_patch4_window7_224", {})

    def refuse(*args, **kwargs):
        raise AssertionError("went through the timm layout")

    monkeypatch.setattr(layouts, "to_timm_layout", refuse)
    monkeypatch.setattr(fitting, "export_timm_state_dict", refuse)
    params = load_init(str(tmp_path / "ape"), target)["params"]
    assert params["absolute_pos_embed"].shape == (1, 96, 96, 96)
    assert params["layers_0"]["blocks"]["block0"]["attn"]["relative_position_bias_table"].shape == (1, 23 * 23, 3)
    chex.assert_trees_all_equal(params, expected)
    # A directory without the embedding cannot initialise a model that has one: named in our own terms.
    with pytest.raises(ConversionError, match=r"plain does not fit swin_tiny_patch4_window7_224 \(Swin V1, (.|\n)*"
                                              r"missing in the checkpoint \(1\):\n    absolute_pos_embed "
                                              r"\(expected \(1, 56, 56, 96\)\)"):
        load_init(str(tmp_path / "plain"), source)


def old_hf_names(state: dict) -> dict:
    """Hugging Face's key names before the q/k/v/o_proj renaming."""
    renames = [("attention.q_proj", "attention.self.query"), ("attention.k_proj", "attention.self.key"),
               ("attention.v_proj", "attention.self.value"), ("attention.o_proj", "attention.output.dense"),
               ("attention.relative_position_bias.relative_position_bias_table", "attention.self.relative_position_bias_table"),
               ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]
    out = {}
    for k, v in state.items():
        for new, old in renames:
            k = k.replace(new, old)
        out[k] = v
    return out


@pytest.mark.parametrize("key_names", ["current", "old"])
def test_huggingface_parity(key_names, tmp_path):
    hf = hf_tiny()
    state = hf.state_dict()
    if key_names == "old":
        state = old_hf_names(state)
        assert any(".attention.self.query." in k for k in state)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = swin_jax.create_model("swin_tiny_patch4_window7_224")
    variables = load_pytorch_checkpoint(path, model)
    x = images(2, 224, 224)
    chex.assert_trees_all_close(jax_outputs(model, variables, x), hf_outputs(hf, x), rtol=RTOL, atol=ATOL)


def test_huggingface_parity_on_a_non_divisible_size():
    # A fresh reference: Hugging Face's blocks change their shift for good once they see a small map.
    hf = hf_tiny()
    model = swin_jax.create_model("swin_tiny_patch4_window7_224")
    variables = convert_state_dict(numpy_state(hf), model)
    x = images(1, 230, 317)
    got, want = jax_outputs(model, variables, x), hf_outputs(hf, x)
    assert [s.shape[1:3] for s in got[1]] == [(58, 80), (29, 40), (15, 20), (8, 10)]
    chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)


def test_official_layout_parity(tmp_path):
    tm = randomize(timm.create_model("swin_tiny_patch4_window7_224"))
    official = official_layout(tm)
    assert "layers.0.downsample.reduction.weight" in official and "head.weight" in official
    assert any(k.endswith("attn_mask") for k in official)
    # timm's own filter turns it back into timm's layout: proof that the file is in the official layout.
    chex.assert_trees_all_equal(dict(checkpoint_filter_fn(dict(official), tm)), dict(tm.state_dict()))
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": official, "epoch": 300}, path)
    model = swin_jax.create_model("swin_tiny_patch4_window7_224")
    variables = load_pytorch_checkpoint(path, model)
    x = images(2, 224, 224)
    chex.assert_trees_all_close(jax_outputs(model, variables, x), timm_outputs(tm, x), rtol=RTOL, atol=ATOL)


def test_official_relative_index_is_checked():
    tm = timm.create_model("swin_tiny_patch4_window7_224")
    official = {k: v.numpy() for k, v in official_layout(tm).items()}
    key = next(k for k in official if k.endswith("relative_position_index"))
    official[key] = official[key][::-1].copy()
    with pytest.raises(ConversionError, match=f"buffer {re.escape(key)} is not the standard relative position index"):
        convert_state_dict(official, swin_jax.create_model("swin_tiny_patch4_window7_224"))


def test_gradient_parity_with_torch_autograd():
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    tm = randomize(TimmSwin(**SMALL, drop_path_rate=0.0))
    model = SwinTransformer(**SMALL, drop_path_rate=0.0)
    variables = convert_state_dict(numpy_state(tm), model)
    x = images(2, 64, 64)
    weights = np.random.RandomState(1).randn(2, 10).astype(np.float32)

    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) * weights)))(variables["params"])
    loss = (tm(torch.from_numpy(x).permute(0, 3, 1, 2)) * torch.from_numpy(weights)).sum()
    loss.backward()
    want = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    got = export_timm_state_dict({"params": grads}, model)
    assert set(got) == set(want)
    for key in want:
        scale = np.abs(want[key]).max()
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5 * scale, err_msg=key)


@pytest.mark.parametrize("old, new", [(7, 12), (12, 7), (7, 8), (12, 24)])
def test_bias_table_resampling_matches_torch_interpolate(old, new):
    table = np.random.RandomState(0).randn((2 * old - 1) ** 2, 3).astype(np.float32)
    got = resample.resize_bias_table(table, new)
    grid = torch.from_numpy(table).reshape(1, 2 * old - 1, 2 * old - 1, 3).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(2 * new - 1, 2 * new - 1), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).reshape(-1, 3).numpy(), rtol=1e-5, atol=1e-5)


def test_bicubic_resize_of_non_square_grids():
    grid = np.random.RandomState(0).randn(5, 9, 2).astype(np.float32)
    want = F.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=(11, 4), mode="bicubic",
                         align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(resample.resize_bicubic(grid, (11, 4)), want, rtol=1e-5, atol=1e-5)


def test_resolution_change_gives_the_logits_timm_gives_for_the_same_conversion():
    # Fine-tuning a 224 / window 7 checkpoint at 384 / window 12: bias tables resampled bicubically.
    tm = randomize(timm.create_model("swin_tiny_patch4_window7_224"))
    state = tm.state_dict()
    tm384 = timm.create_model("swin_tiny_patch4_window7_224", img_size=384, window_size=12).eval()
    # The official recipe (Swin's utils.load_pretrained): F.interpolate bicubic on each head's table.
    # (timm's own filter uses a different, BEiT-style resampling, so it is not the reference here.)
    official = {}
    for k, v in state.items():
        if k.endswith("relative_position_bias_table") and v.shape[0] != 23 * 23:
            grid = v.T.reshape(1, -1, 13, 13)
            v = F.interpolate(grid, size=(23, 23), mode="bicubic", align_corners=False).reshape(-1, 23 * 23).T
        official[k] = v
    tm384.load_state_dict(official)
    model = swin_jax.create_model("swin_tiny_patch4_window7_224", img_size=384, window_size=12)
    variables = convert_state_dict({k: v.numpy() for k, v in state.items()}, model)
    table = variables["params"]["layers_0"]["blocks"]["block0"]["attn"]["relative_position_bias_table"]
    assert table.shape == (1, 23 * 23, 3)
    x = images(1, 384, 384)
    chex.assert_trees_all_close(jax_outputs(model, variables, x), timm_outputs(tm384, x), rtol=RTOL, atol=ATOL)


def test_round_trip_and_export_that_timm_loads(tmp_path):
    name = "swin_tiny_patch4_window7_224"
    tm = randomize(timm.create_model(name))
    source = tmp_path / "source.pth"
    torch.save(tm.state_dict(), source)
    converted = tmp_path / "converted"
    assert convert_main(["--model", name, "--checkpoint", str(source), "--output", str(converted)]) == 0
    exported = tmp_path / "exported.safetensors"
    assert convert_main(["--to-pytorch", "--checkpoint", str(converted), "--output", str(exported)]) == 0

    from safetensors.numpy import load_file

    back = load_file(exported)
    original = numpy_state(tm)
    assert set(back) == set(original)
    for k in original:
        np.testing.assert_array_equal(back[k], original[k], err_msg=k)

    reloaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(exported))).eval()
    x = torch.from_numpy(images(2, 224, 224)).permute(0, 3, 1, 2)
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(x).numpy(), tm(x).numpy())


def test_new_head_is_dropped_with_a_warning(caplog):
    tm = randomize(timm.create_model("swin_tiny_patch4_window7_224"))
    model = swin_jax.create_model("swin_tiny_patch4_window7_224", num_classes=10)
    with caplog.at_level(logging.WARNING):
        variables = convert_state_dict(numpy_state(tm), model)
    assert "head.fc.weight: the checkpoint's head has 1000 classes, the model 10" in caplog.text
    assert variables["params"]["head"]["kernel"].shape == (768, 10)
    np.testing.assert_array_equal(variables["params"]["head"]["bias"], 0)
    np.testing.assert_array_equal(variables["params"]["norm"]["scale"], tm.norm.weight.detach().numpy())


def test_imagenet_22k_head_maps_to_1k(tmp_path):
    tm = randomize(timm.create_model("swin_tiny_patch4_window7_224", num_classes=21841))
    class_map = np.sort(np.random.RandomState(0).choice(21841, 1000, replace=False))
    map_file = tmp_path / "map22kto1k.txt"
    map_file.write_text("\n".join(map(str, class_map)) + "\n")
    ckpt = tmp_path / "swin_tiny_22k.pth"
    torch.save({"model": tm.state_dict()}, ckpt)
    out = tmp_path / "converted"
    assert convert_main(["--model", "swin_tiny_patch4_window7_224", "--checkpoint", str(ckpt), "--output", str(out),
                         "--map-22k-to-1k", str(map_file)]) == 0
    model, variables, _ = swin_jax.checkpoint.load_pretrained(out)
    assert model.num_classes == 1000
    x = images(1, 224, 224)
    np.testing.assert_allclose(jax_outputs(model, variables, x)[0], timm_outputs(tm, x)[0][:, class_map],
                               rtol=RTOL, atol=ATOL)


# ---- failures: each a clear message, a non-zero exit and no output directory ----

def failing_cli(tmp_path, checkpoint, model="swin_tiny_patch4_window7_224", capsys=None):
    out = tmp_path / "out"
    code = convert_main(["--model", model, "--checkpoint", str(checkpoint), "--output", str(out)])
    assert code != 0
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
    return capsys.readouterr().err if capsys else None


def test_another_variant_names_the_keys(tmp_path, capsys):
    ckpt = tmp_path / "tiny.pth"
    torch.save(timm.create_model("swin_tiny_patch4_window7_224").state_dict(), ckpt)
    err = failing_cli(tmp_path, ckpt, model="swin_small_patch4_window7_224", capsys=capsys)
    # First what was asked for and what the file is, then the keys.
    first, second = err.splitlines()[:2]
    assert first.startswith(f"error: {ckpt} (timm layout) does not fit swin_small_patch4_window7_224 (Swin V1")
    assert second.startswith("the checkpoint looks like: embed_dim=96") and "it matches swin_tiny_patch4_window7_224" in second
    assert "missing in the checkpoint (156):\n    layers.2.blocks.6.attn.proj.bias (expected (384,))" in err
    assert "layers.2.blocks.6.attn.qkv.weight (expected (1152, 384))" in err
    assert "depths=(2, 2, 6, 2)" in err

    base = {k: v.numpy() for k, v in timm.create_model("swin_base_patch4_window7_224").state_dict().items()}
    with pytest.raises(ConversionError) as e:
        convert_state_dict(base, swin_jax.create_model("swin_small_patch4_window7_224"))
    assert "shape mismatch (" in str(e.value) and "head.fc.weight: expected (1000, 768), found (1000, 1024)" in str(e.value)


def test_non_swin_checkpoint(tmp_path, capsys):
    import torchvision

    ckpt = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    assert "not a Swin checkpoint: no 'patch_embed.proj.weight'" in failing_cli(tmp_path, ckpt, capsys=capsys)


def test_unexpected_tensors_are_listed():
    state = numpy_state(timm.create_model("swin_tiny_patch4_window7_224"))
    state["layers.1.blocks.0.attn.extra_scale"] = np.ones(3, np.float32)
    with pytest.raises(ConversionError, match=r"unexpected in the checkpoint \(1\):\n    layers.1.blocks.0.attn.extra_scale \(3,\)"):
        convert_state_dict(state, swin_jax.create_model("swin_tiny_patch4_window7_224"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, capsys, suffix):
    ckpt = tmp_path / f"model{suffix}"
    state = timm.create_model("swin_tiny_patch4_window7_224").state_dict()
    torch.save(state, ckpt) if suffix == ".pth" else save_file(state, str(ckpt))
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    err = failing_cli(tmp_path, ckpt, capsys=capsys)
    assert str(ckpt) in err and "truncated or corrupt" in err


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_never_run(tmp_path, capsys):
    ckpt = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Payload()}, ckpt)
    err = failing_cli(tmp_path, ckpt, capsys=capsys)
    assert "refused to load" in err and "never allowed to run code" in err


def test_missing_file_and_unknown_format(tmp_path, capsys):
    assert "checkpoint not found" in failing_cli(tmp_path, tmp_path / "nope.pth", capsys=capsys)
    other = tmp_path / "weights.h5"
    other.write_bytes(b"x")
    assert "unknown checkpoint format" in failing_cli(tmp_path, other, capsys=capsys)


def test_output_that_exists_is_not_touched(tmp_path, capsys):
    ckpt = tmp_path / "tiny.pth"
    torch.save(timm.create_model("swin_tiny_patch4_window7_224").state_dict(), ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert convert_main(["--model", "swin_tiny_patch4_window7_224", "--checkpoint", str(ckpt), "--output", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "precious"
