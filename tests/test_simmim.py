"""SimMIM: parity with Hugging Face's SwinForMaskedImageModeling and Swinv2ForMaskedImageModeling (every
tensor randomised, the mask token too, the same mask), gradients against torch autograd, the official
SimMIM layout, export back to Hugging Face, the mask generator, normalised targets, bad input."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from transformers import SwinConfig, SwinForMaskedImageModeling, Swinv2Config, Swinv2ForMaskedImageModeling  # noqa: F401

import swin_jax
from swin_jax.convert import ConversionError, load_pytorch_checkpoint
from swin_jax.convert import export_timm_state_dict, load_weights
from swin_jax.convert.masked_image import convert_mim_state_dict, export_huggingface_mim
from swin_jax.data.on_device import simmim_mask_count, simmim_masks
from swin_jax.models.simmim import norm_targets, pixel_shuffle
from references import check_close, images, numpy_state, randomize

ARCH = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
# V1 at the official pre-training size (192, window 6); V2 at one of its fine-tuning sizes (256, window 8).
VERSIONS = {"v1": ("swin_tiny_patch4_window7_224", SwinConfig, SwinForMaskedImageModeling, 192, 6),
            "v2": ("swinv2_tiny_window8_256", Swinv2Config, Swinv2ForMaskedImageModeling, 256, 8)}


def hf_mim(version, img_size=None, window_size=None):
    _, config_cls, model_cls, size, window = VERSIONS[version]
    config = config_cls(image_size=img_size or size, window_size=window_size or window, encoder_stride=32, hidden_act="gelu",
                        layer_norm_eps=1e-5, drop_path_rate=0.0,
                        **{k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()})
    hf = randomize(model_cls(config))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("mask_token"):
                p.copy_(torch.randn(p.shape, generator=g))
    return hf.eval()


def ours(version, img_size=None, window_size=None, **options):
    name, _, _, size, window = VERSIONS[version]
    return swin_jax.create_model("simmim_" + name, img_size=img_size or size, window_size=window_size or window,
                                 drop_path_rate=0.0, **ARCH, **options)


def hf_forward(hf, x, mask):
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2)
    out = hf(pixels, bool_masked_pos=torch.from_numpy(np.array(mask)).flatten(1))
    return out.loss, out.reconstruction


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_hugging_face_parity(version):
    """Reconstruction and loss of the same images and mask, fp32, within 1e-5."""
    hf, model = hf_mim(version), ours(version)
    variables = convert_mim_state_dict(numpy_state(hf), model)
    size = model.input_hw[0]
    mask = simmim_masks(jax.random.key(0), 2, size)
    x = images(2, size, size, seed=1)
    got = jax.jit(model.apply)(variables, x, mask)
    assert got["reconstruction"].shape == (2, size, size, 3) and got["loss"].shape == ()
    with torch.no_grad():
        loss, reconstruction = hf_forward(hf, x, mask)
    check_close(f"SimMIM {version} reconstruction", np.asarray(got["reconstruction"]),
                reconstruction.permute(0, 2, 3, 1).numpy())
    check_close(f"SimMIM {version} loss", np.asarray(got["loss"]), loss.numpy())
    # The mask token is in the computation: without it the reconstruction differs.
    other = jax.tree.map(lambda a: a, variables)
    other["params"]["encoder"]["mask_token"] = jnp.zeros_like(other["params"]["encoder"]["mask_token"])
    assert not np.allclose(jax.jit(model.apply)(other, x, mask)["reconstruction"], got["reconstruction"], atol=1e-3)


def test_gradients_match_torch_autograd():
    """The gradient of the loss for every parameter (mask token and decoder included) on a small V1."""
    hf, model = hf_mim("v1", img_size=128, window_size=4), ours("v1", img_size=128, window_size=4)
    variables = convert_mim_state_dict(numpy_state(hf), model)
    mask = simmim_masks(jax.random.key(1), 3, 128)
    x = images(3, 128, 128, seed=2)
    loss, _ = hf_forward(hf, x, mask)
    loss.backward()
    value, grads = jax.jit(jax.value_and_grad(lambda p: model.apply({"params": p}, x, mask)["loss"]))(
        variables["params"])
    np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
    torch_grads = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    expected = convert_mim_state_dict(torch_grads, model)["params"]
    paths = jax.tree_util.tree_leaves_with_path(grads)
    assert len(paths) == len(jax.tree.leaves(expected))
    for (path, got), want in zip(paths, jax.tree.leaves(expected)):
        scale = float(np.abs(want).max())
        assert scale > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


def official_layout(variables, model, v2: bool) -> dict:
    """Our variables as an official SimMIM checkpoint: encoder.* in the official Swin layout (patch
    merging at the end of stages 0..2; V2's position-bias MLP as `rpe_mlp`, as SimMIM's releases),
    encoder.mask_token (1, 1, C), decoder.0.*."""
    params = dict(variables["params"]["encoder"])
    token = np.asarray(params.pop("mask_token"))
    out = {}
    for key, value in export_timm_state_dict({"params": params}, model.encoder.clone(use_mask_token=False)).items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        out["encoder." + (key.replace(".cpb_mlp.", ".rpe_mlp.") if v2 else key)] = torch.from_numpy(np.array(value))
    out["encoder.mask_token"] = torch.from_numpy(np.array(token).reshape(1, 1, -1))
    decoder = variables["params"]["decoder"]
    out["decoder.0.weight"] = torch.from_numpy(np.asarray(decoder["kernel"]).transpose(3, 2, 0, 1).copy())
    out["decoder.0.bias"] = torch.from_numpy(np.asarray(decoder["bias"]))
    return out


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_official_layout_and_export_to_hugging_face(version, tmp_path):
    """An official SimMIM file (`model` wrapper, encoder.*) loads to the same tensors; the export loads
    strictly into Hugging Face's model and computes what ours does."""
    hf, model = hf_mim(version), ours(version)
    variables = convert_mim_state_dict(numpy_state(hf), model)
    path = tmp_path / "simmim.pth"
    torch.save({"model": official_layout(variables, model, version == "v2")}, path)
    loaded = load_pytorch_checkpoint(str(path), model)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    if version == "v1":  # the CLI both ways: the official file to a directory, the directory to HF's layout
        from safetensors.numpy import load_file

        from swin_jax.convert.__main__ import main as convert_main

        name = VERSIONS[version][0]
        assert convert_main(["--model", "simmim_" + name, "--img-size", "192", "--window-size", "6", "--checkpoint",
                             str(path), "--output", str(tmp_path / "dir")]) == 1  # ARCH differs: a named error
        directory = tmp_path / "converted"
        from swin_jax import checkpoint

        checkpoint.save_pretrained(directory, loaded, "simmim_" + name, dict(img_size=192, window_size=6,
                                                                             drop_path_rate=0.0, **ARCH))
        assert convert_main(["--to-pytorch", "--checkpoint", str(directory), "--output",
                             str(tmp_path / "hf.safetensors")]) == 0
        exported = load_file(str(tmp_path / "hf.safetensors"))
        assert sorted(exported) == sorted(numpy_state(hf))

    fresh = hf_mim(version)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in export_huggingface_mim(variables, model).items()},
                          strict=True)
    size = model.input_hw[0]
    mask = simmim_masks(jax.random.key(2), 1, size)
    x = images(1, size, size, seed=3)
    with torch.no_grad():
        _, want = hf_forward(fresh, x, mask)
    check_close("exported", np.asarray(jax.jit(model.apply)(variables, x, mask)["reconstruction"]),
                want.permute(0, 2, 3, 1).numpy())


def test_a_simmim_file_initialises_a_classifier_and_a_segmenter_only_through_init_from(tmp_path, caplog):
    hf, mim = hf_mim("v1"), ours("v1")
    path = tmp_path / "mim.bin"
    torch.save(hf.state_dict(), path)
    classifier = swin_jax.create_model("swin_tiny_patch4_window7_224", img_size=192, window_size=6, num_classes=7,
                                       **ARCH)
    with pytest.raises(ConversionError, match=r"holds a SimMIM model(.|\n)*simmim_(.|\n)*config.init_from"):
        load_pytorch_checkpoint(str(path), classifier)
    with caplog.at_level(logging.WARNING):
        variables = load_weights(str(path), classifier)
    assert "SimMIM checkpoint: only its encoder is taken" in caplog.text
    mim_params = convert_mim_state_dict(numpy_state(hf), mim)["params"]["encoder"]
    for name in ("patch_embed", "layers_2", "norm"):
        jax.tree.map(np.testing.assert_array_equal, variables["params"][name], mim_params[name])
    assert variables["params"]["head"]["kernel"].shape == (128, 7)

    segmenter = swin_jax.create_model("upernet_swin_tiny_patch4_window7_224", img_size=192, window_size=6,
                                      num_classes=5, channels=16, auxiliary_channels=8, **ARCH)
    variables = load_weights(str(path), segmenter)
    jax.tree.map(np.testing.assert_array_equal, variables["params"]["backbone"]["layers_3"], mim_params["layers_3"])


def test_mask_generator_counts_and_uniformity():
    """The official MaskGenerator at its defaults (192, mask patch 32, model patch 4, ratio 0.6): exactly
    ceil(36 * 0.6) = 22 of the 6x6 cells per image, each cell masked 60% of the time over 10k draws,
    each cell constant over its 8x8 model patches; the same key, the same masks."""
    assert simmim_mask_count(192, 32, 4, 0.6) == (6, 22)
    masks = np.asarray(jax.jit(lambda k: simmim_masks(k, 10_000, 192))(jax.random.key(0)))
    assert masks.shape == (10_000, 48, 48) and masks.dtype == bool
    cells = masks[:, ::8, ::8]
    np.testing.assert_array_equal(masks, cells.repeat(8, 1).repeat(8, 2))
    assert (cells.sum((1, 2)) == 22).all()
    frequency = cells.mean(0)  # binomial: std sqrt(0.61 * 0.39 / 10k) = 0.005
    assert np.abs(frequency - 22 / 36).max() < 0.025, frequency
    pairs = cells.reshape(10_000, 36)
    together = (pairs[:, 0] & pairs[:, 35]).mean()  # without replacement: P = 22/36 * 21/35
    assert abs(together - 22 / 36 * 21 / 35) < 0.03
    np.testing.assert_array_equal(simmim_masks(jax.random.key(5), 4, 192), simmim_masks(jax.random.key(5), 4, 192))
    assert not np.array_equal(simmim_masks(jax.random.key(5), 4, 192), simmim_masks(jax.random.key(6), 4, 192))
    with pytest.raises(ValueError, match="mask_patch_size=32 does not divide the input size 200"):
        simmim_mask_count(200, 32, 4, 0.6)
    with pytest.raises(ValueError, match="patch size 6 does not divide mask_patch_size=32"):
        simmim_mask_count(192, 32, 6, 0.6)


def numpy_norm_targets(x, window):
    """The official `norm_targets` (avg_pool2d, count_include_pad=False, unbiased variance) in NumPy
    float64, one pixel at a time."""
    b, h, w, c = x.shape
    out = np.empty_like(x, np.float64)
    r = window // 2
    for i in range(h):
        for j in range(w):
            patch = x[:, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].astype(np.float64)
            n = patch.shape[1] * patch.shape[2]
            mean = patch.mean((1, 2))
            var = np.maximum(((patch ** 2).mean((1, 2)) - mean ** 2) * n / (n - 1), 0.0)
            out[:, i, j] = (x[:, i, j] - mean) / np.sqrt(var + 1e-6)
    return out


def test_norm_targets_equal_the_official_formula():
    """The formula at a small window and at the official 47 (larger than the image here: every pixel's
    neighbourhood is cut by the border), and the loss against those targets."""
    x = images(2, 20, 23, seed=4) * 2.0 + 0.5
    np.testing.assert_allclose(norm_targets(jnp.asarray(x), 7), numpy_norm_targets(x, 7), rtol=1e-4, atol=1e-4)
    model = ours("v1", img_size=64, window_size=4, norm_target_window=47)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 16, 16), bool))
    mask = simmim_masks(jax.random.key(0), 2, 64)
    x = images(2, 64, 64, seed=5)
    out = jax.jit(model.apply)(variables, x, mask)
    pixels = np.asarray(mask).repeat(4, 1).repeat(4, 2)[..., None]
    target = numpy_norm_targets(x, 47)
    np.testing.assert_allclose(norm_targets(jnp.asarray(x), 47), target, rtol=1e-4, atol=1e-4)
    want = (np.abs(target - np.asarray(out["reconstruction"])) * pixels).sum() / (pixels.sum() + 1e-5) / 3
    np.testing.assert_allclose(out["loss"], want, rtol=1e-5)
    with pytest.raises(ValueError, match="norm_target_window=46: must be odd"):
        ours("v1", norm_target_window=46)


def test_pixel_shuffle_is_torchs():
    x = np.random.RandomState(0).randn(2, 3, 4, 3 * 4).astype(np.float32)
    want = torch.nn.PixelShuffle(2)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(pixel_shuffle(jnp.asarray(x), 2), want)


def test_bad_input_is_named():
    model = ours("v1", img_size=64, window_size=4)
    x = jnp.zeros((2, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((2, 16, 16), bool))
    apply = jax.jit(model.apply)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 8, 8\) does not fit the patch grid.*\(2, 16, 16\)"):
        apply(variables, x, jnp.zeros((2, 8, 8), bool))
    with pytest.raises(ValueError, match="mask must be boolean.*float32"):
        apply(variables, x, jnp.zeros((2, 16, 16), jnp.float32))
    with pytest.raises(ValueError, match=r"encoder stride 32 divides, got shape \(2, 48, 64, 3\)"):
        apply(variables, jnp.zeros((2, 48, 64, 3)), jnp.zeros((2, 12, 16), bool))
    classifier = swin_jax.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4, **ARCH)
    with pytest.raises(ValueError, match="got a mask but has no mask token"):
        jax.jit(classifier.init)(jax.random.key(0), x, mask=jnp.zeros((2, 16, 16), bool))
    with pytest.raises(ValueError, match="unknown SimMIM model 'simmim_swin_tiny'.*Did you mean"):
        swin_jax.create_model("simmim_swin_tiny")


def test_a_segmenter_starts_from_a_simmim_checkpoint(tmp_path, caplog):
    """config.init_from with an official SimMIM file or our SimMIM directory: the segmenter's backbone is
    the encoder (blocks, patch embedding; the last stage's bias tables resampled from the 3x3 window the
    encoder's 3x3 map had to the 6x6 window a segmenter keeps), the mask token and decoder are left out
    with a warning, the stage-map norms and heads are fresh."""
    from swin_jax import checkpoint
    from swin_jax.train.loop import load_init

    hf, model = hf_mim("v1", img_size=96), ours("v1", img_size=96)
    variables = convert_mim_state_dict(numpy_state(hf), model)
    torch.save({"model": official_layout(variables, model, False)}, tmp_path / "simmim.pth")
    checkpoint.save_pretrained(tmp_path / "simmim", variables, "simmim_swin_tiny_patch4_window7_224",
                               dict(img_size=96, window_size=6, drop_path_rate=0.0, **ARCH))
    segmenter = swin_jax.create_model("upernet_swin_tiny_patch4_window7_224", img_size=96, window_size=6, **ARCH,
                                      channels=16, auxiliary_channels=8, num_classes=5)
    encoder = variables["params"]["encoder"]
    for source in (tmp_path / "simmim.pth", tmp_path / "simmim"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            params = load_init(str(source), segmenter)["params"]
        assert "SimMIM" in caplog.text and "only its encoder" in caplog.text
        backbone = params["backbone"]
        for part in ("patch_embed", "layers_0", "layers_1", "layers_2"):
            jax.tree.map(np.testing.assert_array_equal, backbone[part], encoder[part])
        tables = lambda tree: {k: v for k, v in traverse_util.flatten_dict(tree).items()  # noqa: E731
                               if k[-1] == "relative_position_bias_table"}
        others = lambda tree: {k: v for k, v in traverse_util.flatten_dict(tree).items() if k not in tables(tree)}  # noqa: E731
        jax.tree.map(np.testing.assert_array_equal, others(backbone["layers_3"]), others(encoder["layers_3"]))
        assert {v.shape[-2] for v in tables(backbone["layers_3"]).values()} == {121}
        assert {v.shape[-2] for v in tables(encoder["layers_3"]).values()} == {25}
        assert "mask_token" not in backbone and "head" not in backbone
        np.testing.assert_array_equal(backbone["norm0"]["scale"], np.ones(16))
        assert {"decode_head", "auxiliary_head"} <= set(params)
