"""UPerNet segmenters: PyTorch-exact resampling, parity with Hugging Face's UperNetForSemanticSegmentation
(V1 and V2 backbones, every tensor randomised, BatchNorm running statistics included), gradients against
torch autograd, the official mmsegmentation layout, names and parameter counts."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import SwinConfig, Swinv2Config, UperNetConfig, UperNetForSemanticSegmentation

import swin_jax
from swin_jax.convert import ConversionError, convert_state_dict, load_pytorch_checkpoint
from swin_jax.convert.segmenter import convert_segmenter_state_dict
from swin_jax.models import layers
from references import check_close, images, numpy_state, param_count, randomize

# A small UPerNet with every feature of the real ones: four stages, shifts, stage maps smaller than
# the window at small inputs, non-divisible sizes; heads of 32 and 16 channels, 10 classes.
ARCH = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
BACKBONES = {"v1": ("swin_tiny_patch4_window7_224", SwinConfig), "v2": ("swinv2_tiny_window8_256", Swinv2Config)}


def hf_upernet(version, img_size=64, drop_path_rate=0.0, num_labels=10):
    config_cls = BACKBONES[version][1]
    backbone = config_cls(image_size=img_size, **{k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()},
                          out_features=["stage1", "stage2", "stage3", "stage4"], hidden_act="gelu",
                          layer_norm_eps=1e-5, drop_path_rate=drop_path_rate)
    hf = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=num_labels, hidden_size=32,
                                                      auxiliary_channels=16))
    randomize(hf)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buffer in hf.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.2 * torch.randn(buffer.shape, generator=g))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=g))
    return hf.eval()


def ours(version, **options):
    return swin_jax.create_model("upernet_" + BACKBONES[version][0], **{
        **ARCH, "img_size": 64, "channels": 32, "auxiliary_channels": 16, "num_classes": 10, **options})


def hf_logits(hf, x_nhwc):
    """(main, auxiliary) logits of Hugging Face's UperNet at the input size, NHWC."""
    pixels = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    with torch.no_grad():
        features = hf.backbone(pixels).feature_maps
        main = F.interpolate(hf.decode_head(features), size=pixels.shape[2:], mode="bilinear", align_corners=False)
        aux = F.interpolate(hf.auxiliary_head(features), size=pixels.shape[2:], mode="bilinear", align_corners=False)
        assert torch.equal(main, hf(pixels).logits)
    return main.permute(0, 2, 3, 1).numpy(), aux.permute(0, 2, 3, 1).numpy()


def test_pooling_and_resizing_match_pytorch():
    x = torch.randn(2, 5, 23, 37)
    nhwc = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
    for scale in (1, 2, 3, 6):  # bins of 23 / 6 and 37 / 6 rows overlap
        want = F.adaptive_avg_pool2d(x, scale).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(layers.adaptive_avg_pool(nhwc, scale), want, rtol=0, atol=1e-6, err_msg=scale)
    # whole factors (the phase taps: UPerNet's 2x to 32x), others (the matrices), and a mix of both
    for size in ((46, 74), (368, 37), (23, 148), (64, 96), (6, 9), (11, 80), (23, 37), (92, 50)):
        leaf = x.clone().requires_grad_(True)
        out = F.interpolate(leaf, size=size, mode="bilinear", align_corners=False)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(size[0]))
        (out * weights).sum().backward()
        np.testing.assert_allclose(layers.resize_bilinear(nhwc, size), out.detach().permute(0, 2, 3, 1).numpy(),
                                   rtol=0, atol=1e-6, err_msg=size)
        grad = jax.grad(lambda a: jnp.sum(layers.resize_bilinear(a, size) * weights.permute(0, 2, 3, 1).numpy()))(nhwc)
        want = leaf.grad.permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(grad, want, rtol=0, atol=1e-6 * np.abs(want).max(), err_msg=size)


@pytest.mark.parametrize("k", [1, 3])
def test_tap_convolution_lowering_matches_torch(k):
    """conv_same with the kernel gradient as one product per tap, and as XLA's convolution: the values and
    both gradients of PyTorch's Conv2d(padding=k // 2), on a map that is neither square nor even."""
    rng = np.random.RandomState(k)
    x, kernel, weights = rng.randn(2, 9, 7, 5), rng.randn(k, k, 5, 4), rng.randn(2, 9, 7, 4)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tk = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
    out = F.conv2d(tx, tk, padding=k // 2)
    (out * torch.from_numpy(weights.transpose(0, 3, 1, 2))).sum().backward()
    want = [out.detach().permute(0, 2, 3, 1).numpy(), tx.grad.permute(0, 2, 3, 1).numpy(),
            tk.grad.permute(2, 3, 1, 0).numpy()]
    f32 = [jnp.asarray(a, jnp.float32) for a in (x, kernel, weights)]
    for implementation in ("taps", "xla"):
        def loss(x, kernel):
            return jnp.sum(layers.conv_same(x, kernel, implementation) * f32[2])
        got = [layers.conv_same(*f32[:2], implementation), *jax.grad(loss, (0, 1))(*f32[:2])]
        for name, g, w in zip(("output", "input gradient", "kernel gradient"), got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(), err_msg=f"{implementation} {name}")
    assert layers.resolve_conv("auto") == ("taps" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="conv_impl='im2col'"):
        layers.conv_same(*f32[:2], "im2col")


def test_fusion_convolves_each_level_at_its_own_size():
    """ConvNormAct over a list of maps (UPerNet's fusion): with "taps" each level is convolved at its own
    size and the result resized, with "xla" the levels are resized, concatenated and convolved, as in
    PyTorch. The same outputs, gradients and BatchNorm statistics, for upsampling by 2, 4 and by a
    ratio that is not whole (5 rows to 16), and downsampling."""
    rng = np.random.RandomState(0)
    maps = [jnp.asarray(rng.randn(2, *hw, c), jnp.float32) for hw, c in (((16, 12), 3), ((8, 6), 4), ((4, 3), 2),
                                                                          ((5, 7), 3), ((20, 30), 2))]
    weights = jnp.asarray(rng.randn(2, 16, 12, 6), jnp.float32)
    results = {}
    for implementation in ("taps", "xla"):
        module = layers.ConvNormAct(6, 3, conv_impl=implementation)
        variables = module.init(jax.random.key(0), maps, False)

        def loss(params, maps):
            out, state = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, maps, True,
                                      mutable=["batch_stats"])
            return jnp.sum(out * weights), (out, state)

        (_, (out, state)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(variables["params"], maps)
        results[implementation] = (variables, out, state, grads)
    (v_m, *got), (v_x, *want) = results["taps"], results["xla"]
    chex.assert_trees_all_equal(v_m, v_x)  # the same parameters, names and initial values
    torch_out = F.conv2d(torch.cat([F.interpolate(torch.from_numpy(np.asarray(m)).permute(0, 3, 1, 2), size=(16, 12),
                                                  mode="bilinear", align_corners=False) for m in maps], 1),
                         torch.from_numpy(np.asarray(v_x["params"]["conv"]["kernel"])).permute(3, 2, 0, 1), padding=1)
    stats = v_x["batch_stats"]["bn"]
    torch_out = F.relu(F.batch_norm(torch_out, torch.from_numpy(np.asarray(stats["mean"])),
                                    torch.from_numpy(np.asarray(stats["var"])), training=True, eps=1e-5))
    np.testing.assert_allclose(want[0], torch_out.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("output", "batch statistics", "gradients"), got, want):
        chex.assert_trees_all_close(g, w, rtol=1e-5, atol=1e-5, custom_message=name)


@pytest.mark.parametrize("version,conv_impl", [("v1", "auto"), ("v2", "auto"), ("v1", "xla")])
def test_hugging_face_upernet_parity(version, conv_impl):
    """Main and auxiliary logits at 512x512 and at two sizes that are neither square nor multiples of 32
    (the backbone pads), through the strict loader; the heads' convolutions as this platform lowers
    them, and as XLA's convolutions."""
    hf = hf_upernet(version)
    model = ours(version, conv_impl=conv_impl)
    variables = convert_segmenter_state_dict(numpy_state(hf), model)
    forward = jax.jit(lambda v, x: model.apply(v, x, with_auxiliary=True))
    for h, w in ((512, 512), (70, 93), (97, 50)):
        x = images(2, h, w, seed=h)
        got = forward(variables, x)
        assert got[0].shape == (2, h, w, 10) and got[0].dtype == jnp.float32
        check_close(f"UPerNet {version} {h}x{w}", [np.asarray(g) for g in got], list(hf_logits(hf, x)))


@pytest.mark.slow
def test_hugging_face_upernet_swin_tiny_parity_at_512():
    """The official Swin-T UPerNet (150 classes) at 512x512: the size ADE20K runs at."""
    backbone = SwinConfig(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"], hidden_act="gelu", layer_norm_eps=1e-5)
    hf = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=150))
    randomize(hf)
    with torch.no_grad():
        for name, buffer in hf.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    hf.eval()
    assert sum(p.numel() for p in hf.parameters()) - 1536 == 59_941_862  # less HF's unused final LayerNorm
    model = swin_jax.create_model("upernet_swin_tiny")
    assert param_count(model) == 59_941_862
    variables = convert_segmenter_state_dict(numpy_state(hf), model)
    x = images(1, 512, 512)
    check_close("UPerNet Swin-T 512x512", np.asarray(jax.jit(model.apply)(variables, x)), hf_logits(hf, x)[0])


def randomize_near_one(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor random as a user would draw it, block post-norms included: LayerNorm and BatchNorm
    weights in 0.5..1.5, biases N(0, 0.1), other weights N(0, 0.02), logit_scale in 1..3, BatchNorm
    running statistics random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(1 + 2 * torch.rand(p.shape, generator=g))
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.2 * torch.randn(buffer.shape, generator=g))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=g))
    return module.eval()


@pytest.mark.slow
@pytest.mark.parametrize("size", ["tiny", "base"])
def test_hugging_face_upernet_swinv2_parity_at_full_size(size):
    """The real V2-T and V2-B backbones (window 8, 256) under Hugging Face's UperNet, with the tests'
    randomisation (post-norm weights near 0.25) and with every weight near 1: logits and the four stage
    maps within 1e-5 of the largest value at 256x256 and at two sizes where every stage pads."""
    arch = {"tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
            "base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32])}[size]
    backbone = Swinv2Config(image_size=256, window_size=8, out_features=["stage1", "stage2", "stage3", "stage4"],
                            hidden_act="gelu", layer_norm_eps=1e-5, **arch)
    hf = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=10, hidden_size=64,
                                                      auxiliary_channels=32))
    model = swin_jax.create_model(f"upernet_swinv2_{size}_window8_256", num_classes=10, channels=64,
                                  auxiliary_channels=32)
    forward = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))
    for randomisation in (randomize, randomize_near_one):
        randomisation(hf)
        if randomisation is randomize:
            with torch.no_grad():
                for name, buffer in hf.named_buffers():
                    if name.endswith("running_var"):
                        buffer.uniform_(0.5, 1.5)
        variables = convert_segmenter_state_dict(numpy_state(hf), model)
        for h, w in ((256, 256), (200, 296), (330, 250)):
            x = images(1, h, w, seed=h)
            pixels = torch.from_numpy(x).permute(0, 3, 1, 2)
            with torch.no_grad():
                want_maps = [f.permute(0, 2, 3, 1).numpy() for f in hf.backbone(pixels).feature_maps]
                want = hf(pixels).logits.permute(0, 2, 3, 1).numpy()
            logits, state = forward(variables, x)
            got_maps = [np.asarray(state["intermediates"]["backbone"][f"stage{i}"][0]) for i in range(4)]
            label = f"UPerNet V2-{size} ({randomisation.__name__}) {h}x{w}"
            for name, got_i, want_i in zip(["logits", "stage0", "stage1", "stage2", "stage3"],
                                           [np.asarray(logits)] + got_maps, [want] + want_maps):
                error = np.abs(got_i - want_i).max() / np.abs(want_i).max()
                print(f"{label} {name}: {error:.2e} of the largest value")
                assert error < 1e-5, (label, name, error)


def test_gradients_and_batch_statistics_match_torch_autograd():
    """Training mode (BatchNorm on batch statistics, no dropout): the gradient of every parameter of a
    loss on both heads, and the running statistics after the step, against PyTorch."""
    hf = hf_upernet("v1").train()
    model = ours("v1", dropout_rate=0.0, drop_path_rate=0.0)
    variables = convert_segmenter_state_dict(numpy_state(hf), model)
    # Batch 4: with 2 images the pool-scale-1 branch's BatchNorm sees 2 values per channel, normalises
    # them to +-1 whatever they are, and its gradient is rounding noise on both sides.
    x = images(4, 70, 93, seed=5)
    weights = np.random.RandomState(0).randn(2, 4, 70, 93, 10).astype(np.float32)

    pixels = torch.from_numpy(x).permute(0, 3, 1, 2)
    features = hf.backbone(pixels).feature_maps
    main = F.interpolate(hf.decode_head(features), size=(70, 93), mode="bilinear", align_corners=False)
    aux = F.interpolate(hf.auxiliary_head(features), size=(70, 93), mode="bilinear", align_corners=False)
    w = torch.from_numpy(weights).permute(0, 1, 4, 2, 3)
    loss = (main * w[0]).sum() + 0.4 * (aux * w[1]).sum()
    loss.backward()

    def our_loss(params):
        (main, aux), state = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                         mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return jnp.sum(main * weights[0]) + 0.4 * jnp.sum(aux * weights[1]), state

    (value, state), grads = jax.jit(jax.value_and_grad(our_loss, has_aux=True))(variables["params"])
    np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
    # The gradients in PyTorch's names, through the converter (as if they were a checkpoint): ours is
    # held to the same tree, tensor by tensor, relative to each tensor's largest gradient. The loss sums
    # 260k weighted logits through batch statistics, so float32 noise (of either side) in the deepest
    # backbone gradients reaches about 1.2e-5 of their largest value; a wrong gradient is off by O(1).
    torch_grads = {k: p.grad.numpy() for k, p in hf.named_parameters() if p.grad is not None}
    torch_grads.update({k: v.numpy() for k, v in hf.named_buffers()})
    expected = convert_segmenter_state_dict(torch_grads, model)["params"]
    paths = jax.tree_util.tree_leaves_with_path(grads)
    assert len(paths) == len(jax.tree.leaves(expected))
    top = max(float(np.abs(w).max()) for w in jax.tree.leaves(expected))
    vanishing = []
    for (path, got), want in zip(paths, jax.tree.leaves(expected)):
        scale = float(np.abs(want).max())
        if scale < 1e-5 * top:  # zero in exact arithmetic: rounding noise on both sides
            assert float(np.abs(got).max()) < 1e-5 * top, jax.tree_util.keystr(path)
            vanishing.append(jax.tree_util.keystr(path))
            continue
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=3e-5 * scale, err_msg=jax.tree_util.keystr(path))
    # The biases of the stage-map norms that feed only 1x1 lateral convolutions: a train-mode BatchNorm
    # subtracts whatever constant they add.
    assert vanishing == ["['backbone']['norm0']['bias']", "['backbone']['norm1']['bias']"], vanishing
    # PyTorch's train-mode forward updated its running statistics (unbiased variance): ours the same.
    updated = convert_segmenter_state_dict(numpy_state(hf), model)["batch_stats"]
    chex.assert_trees_all_close(state["batch_stats"], updated, rtol=1e-5, atol=1e-6)


def official_mmseg_state(hf) -> dict:
    """Hugging Face's tensors under the names of the official Swin-Transformer-Semantic-Segmentation
    checkpoints (mmseg/models/backbones/swin_transformer.py, decode_heads/uper_head.py, psp_head.py,
    fcn_head.py), written out here independently of the converter: backbone.patch_embed.proj,
    backbone.layers.i.blocks.j.attn.qkv (q, k, v concatenated), attn.proj, norm1/norm2, mlp.fc1/fc2,
    patch merging at the end of stages 0..2, the per-stage norms norm0..3 and the relative position
    index buffers; ConvModules' `bn`, the classifiers `conv_seg`."""
    state = numpy_state(hf)
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("backbone.swin.layernorm."):
            continue
        k = key.replace("backbone.swin.embeddings.patch_embeddings.projection.", "backbone.patch_embed.proj.")
        k = k.replace("backbone.swin.embeddings.norm.", "backbone.patch_embed.norm.")
        k = k.replace("backbone.swin.encoder.layers.", "backbone.layers.")
        for a, b in ((".layernorm_before.", ".norm1."), (".layernorm_after.", ".norm2."), (".attention.o_proj.", ".attn.proj."),
                     (".attention.relative_position_bias.relative_position_bias_table", ".attn.relative_position_bias_table"),
                     (".batch_norm.", ".bn."), ("_head.classifier.", "_head.conv_seg.")):
            k = k.replace(a, b)
        for i in range(4):
            k = k.replace(f"backbone.hidden_states_norms.stage{i + 1}.", f"backbone.norm{i}.")
        if ".attention.q_proj." in k:
            parts = [state[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[k.replace(".attention.q_proj.", ".attn.qkv.")] = np.concatenate(parts)
        elif ".attention.k_proj." not in k and ".attention.v_proj." not in k:
            out[k] = value
    window = ARCH["window_size"]
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + window - 1
    index = rel[..., 0] * (2 * window - 1) + rel[..., 1]
    for i, depth in enumerate(ARCH["depths"]):
        for j in range(depth):
            out[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = index
    return out


def test_official_mmseg_checkpoint_gives_the_same_logits(tmp_path):
    hf = hf_upernet("v1")
    model = ours("v1")
    state = official_mmseg_state(hf)
    assert "backbone.layers.0.downsample.reduction.weight" in state and "decode_head.conv_seg.weight" in state
    path = tmp_path / "upernet_official.pth"
    torch.save({"meta": {"mmseg_version": "0.11.0"}, "state_dict": {k: torch.from_numpy(np.asarray(v))
                                                                    for k, v in state.items()}}, path)
    variables = swin_jax.load_pytorch_checkpoint(path, model)  # the public loader takes segmenters too
    chex.assert_trees_all_equal(variables, convert_segmenter_state_dict(numpy_state(hf), model))
    x = images(1, 70, 93)
    check_close("official layout", np.asarray(jax.jit(model.apply)(variables, x)), hf_logits(hf, x)[0])


def test_a_classifier_initialises_the_backbone_only(caplog):
    import timm

    tm = randomize(timm.create_model("swin_tiny_patch4_window7_224", img_size=64, **ARCH, num_classes=7))
    model = ours("v1")
    with caplog.at_level("INFO"):
        variables = convert_segmenter_state_dict(numpy_state(tm), model, source="cls.pth")
    assert "the backbone comes from it (its stage-map norms norm0, norm1, norm2, norm3 freshly initialised); " \
           "decode_head and auxiliary_head are freshly initialised" in caplog.text
    assert "skipping head.fc.bias, head.fc.weight, norm.bias, norm.weight" in caplog.text
    classifier = convert_state_dict(numpy_state(tm), swin_jax.create_model(
        "swin_tiny_patch4_window7_224", img_size=64, **ARCH, num_classes=7, partition="always"))["params"]
    backbone = variables["params"]["backbone"]
    chex.assert_trees_all_equal(backbone["layers_2"], classifier["layers_2"])
    np.testing.assert_array_equal(backbone["norm3"]["scale"], np.ones(128))
    assert set(variables["batch_stats"]) == {"decode_head", "auxiliary_head"}


def test_checkpoint_mismatches_are_named():
    hf = hf_upernet("v1")
    state = numpy_state(hf)
    # A segmenter file for a classifier.
    with pytest.raises(ConversionError, match=r"holds a UPerNet segmenter \(decode_head\.\*\)"):
        convert_state_dict(state, swin_jax.create_model("swin_tiny_patch4_window7_224"))
    # A backbone of another size.
    with pytest.raises(ConversionError, match=r"does not fit (.|\n)*shape mismatch"):
        convert_segmenter_state_dict(state, swin_jax.create_model("upernet_swin_tiny", img_size=64, window_size=4,
                                                                  channels=32, auxiliary_channels=16, num_classes=10))
    # Heads of another width, named by their PyTorch keys.
    with pytest.raises(ConversionError, match=r"heads of UPerNet (.|\n)*decode_head\.bottleneck\.conv\.weight"):
        convert_segmenter_state_dict(state, ours("v1", channels=64))
    # A detection checkpoint: its backbone only when asked.
    detection = {k: v for k, v in official_mmseg_state(hf).items() if k.startswith("backbone.")}
    detection["neck.fpn_convs.0.conv.weight"] = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"holds a backbone with other parts \(backbone, neck\)(.|\n)*--backbone-only"):
        convert_segmenter_state_dict(detection, ours("v1"))
    taken = convert_segmenter_state_dict(detection, ours("v1"), backbone_only=True)
    chex.assert_trees_all_equal(taken["params"]["backbone"], convert_segmenter_state_dict(state, ours("v1"))["params"]["backbone"])


def test_other_class_counts_drop_the_classifiers(caplog):
    hf = hf_upernet("v1")
    model = ours("v1", num_classes=3)
    variables = convert_segmenter_state_dict(numpy_state(hf), model)
    assert "classifiers have another number of classes than the model's 3" in caplog.text
    assert variables["params"]["decode_head"]["conv_seg"]["kernel"].shape == (1, 1, 32, 3)
    np.testing.assert_array_equal(variables["params"]["decode_head"]["fpn_bottleneck"]["conv"]["kernel"],
                                  numpy_state(hf)["decode_head.fpn_bottleneck.conv.weight"].transpose(2, 3, 1, 0))


def test_names_and_parameter_counts():
    assert param_count(swin_jax.create_model("upernet_swin_tiny_patch4_window7_224", num_classes=150)) == 59_941_862
    small = swin_jax.create_model("upernet_swin_small")
    assert small.backbone.drop_path_rate == 0.3 and small.backbone.window_size == 7 and small.num_classes == 150
    assert swin_jax.create_model("upernet_swin_large").backbone.window_size == 12
    v2 = swin_jax.create_model("upernet_swinv2_tiny_window8_256")
    assert (v2.backbone.out_norm, v2.backbone.partition) == (False, "per_img_size")
    assert swin_jax.create_model("upernet_swin_tiny").backbone.partition == "always"
    with pytest.raises(ValueError, match=r"unknown segmenter 'upernet_swin_tny'(.|\n)*Did you mean"):
        swin_jax.create_model("upernet_swin_tny")


def test_slide_windows_and_averaging():
    from swin_jax.models.upernet import segment_logits, segment_probabilities, slide_windows

    assert slide_windows(512, 683, 512, 341) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    assert slide_windows(300, 400, 512, 341) == [(0, 300, 0, 400)]
    windows = slide_windows(1000, 700, 512, 341)
    assert len(windows) == 6 and windows[-1] == (488, 1000, 188, 700)
    x = jnp.asarray(images(1, 70, 93))
    # A position-independent "model": averaging overlapping crops gives the whole image's output back.
    ramp = jnp.arange(93, dtype=jnp.float32)[None, None, :, None]
    np.testing.assert_allclose(segment_logits(lambda t: t * 2, x, mode="slide", crop=32, stride=20), x * 2, atol=1e-6)
    # Flip averaging: the mean of the prediction and the flipped prediction of the flipped image.
    fn = lambda t: t + ramp[:, :, :t.shape[2]] / 10  # noqa: E731
    want = (jax.nn.softmax(fn(x), -1) + jax.nn.softmax(fn(x[:, :, ::-1])[:, :, ::-1], -1)) / 2
    np.testing.assert_allclose(segment_probabilities(fn, x, flip=True), want, atol=1e-6)
    # Multi-scale: a half-size view comes back at the input size.
    two = segment_probabilities(lambda t: t, x, scales=(1.0, 0.5))
    half = jax.nn.softmax(layers.resize_bilinear(layers.resize_bilinear(x, (35, 47)), (70, 93)), -1)
    np.testing.assert_allclose(two, (jax.nn.softmax(x, -1) + half) / 2, atol=1e-6)


def test_slide_on_one_crop_equals_whole():
    from swin_jax.models.upernet import segment_logits

    model = ours("v2")
    variables = convert_segmenter_state_dict(numpy_state(hf_upernet("v2")), model)
    forward = jax.jit(lambda x: model.apply(variables, x))
    x = jnp.asarray(images(1, 64, 64))
    np.testing.assert_array_equal(segment_logits(forward, x, mode="slide", crop=64, stride=40),
                                  segment_logits(forward, x))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_export_to_hugging_face_round_trips_and_loads_strictly(version, tmp_path):
    from safetensors.numpy import save_file
    from swin_jax.convert.segmenter import export_huggingface_upernet

    hf = hf_upernet(version)
    model = ours(version)
    variables = convert_segmenter_state_dict(numpy_state(hf), model)
    exported = export_huggingface_upernet(variables, model)
    state = numpy_state(hf)
    unused = {"backbone.swin.layernorm.weight", "backbone.swin.layernorm.bias"} if version == "v1" else set()
    assert set(exported) == set(state)
    for key in set(state) - unused:
        np.testing.assert_array_equal(exported[key], state[key], err_msg=key)  # bit-exact
    path = tmp_path / "upernet.safetensors"
    save_file(exported, str(path))
    fresh = hf_upernet(version)
    from safetensors.torch import load_file
    fresh.load_state_dict(load_file(str(path)), strict=True)
    x = images(1, 70, 93)
    chex.assert_trees_all_equal(hf_logits(fresh, x), hf_logits(hf, x))
    chex.assert_trees_all_equal(load_pytorch_checkpoint(path, model), variables)


def test_convert_cli_for_segmenters(tmp_path, capsys):
    """The official Swin-T UPerNet through `python -m swin_jax.convert` and back (bit-exact), and the
    files it refuses, each with a named error and nothing written."""
    import timm
    from safetensors.numpy import load_file, save_file
    from swin_jax.convert.__main__ import main as convert_main

    backbone = SwinConfig(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"], hidden_act="gelu", layer_norm_eps=1e-5)
    state = numpy_state(UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=150)))
    source = tmp_path / "upernet.safetensors"
    save_file(state, str(source))
    converted, exported = tmp_path / "converted", tmp_path / "exported.safetensors"
    assert convert_main(["--model", "upernet_swin_tiny", "--checkpoint", str(source), "--output", str(converted)]) == 0
    assert convert_main(["--to-pytorch", "--checkpoint", str(converted), "--output", str(exported)]) == 0
    assert "Hugging Face UperNetForSemanticSegmentation layout" in capsys.readouterr().out
    back = load_file(str(exported))
    assert set(back) == set(state)
    for key in state:
        if not key.startswith("backbone.swin.layernorm."):  # built by HF, never used: ones and zeros
            np.testing.assert_array_equal(back[key], state[key], err_msg=key)

    def refused(model, checkpoint, pattern):
        out = tmp_path / f"refused_{len(list(tmp_path.iterdir()))}"
        assert convert_main(["--model", model, "--checkpoint", str(checkpoint), "--output", str(out)]) == 1
        assert re.search(pattern, capsys.readouterr().err), pattern
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]

    refused("swin_tiny_patch4_window7_224", source, r"holds a UPerNet segmenter \(decode_head\.\*\)")
    classifier = tmp_path / "classifier.safetensors"
    save_file(numpy_state(timm.create_model("swin_tiny_patch4_window7_224")), str(classifier))
    refused("upernet_swin_tiny", classifier, r"holds a classifier checkpoint, no UPerNet heads")
    refused("upernet_swin_small", source, r"does not fit (.|\n)*missing in the checkpoint")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(source.read_bytes()[:100_000])
    refused("upernet_swin_tiny", truncated, r"truncated\.safetensors: not a readable safetensors file")


def test_a_converted_classifier_directory_initialises_the_backbone(tmp_path):
    """init_from with a converted classification directory (the training loop's path): the backbone's
    blocks are the classifier's, the stage-map norms and heads fresh; a segmenter's directory gives
    itself back."""
    import timm
    from swin_jax import checkpoint
    from swin_jax.train.loop import load_init

    tm = randomize(timm.create_model("swin_tiny_patch4_window7_224", img_size=64, **ARCH, num_classes=7))
    name, overrides = "swin_tiny_patch4_window7_224", dict(img_size=64, **ARCH, num_classes=7)
    classifier = swin_jax.create_model(name, **overrides)
    checkpoint.save_pretrained(tmp_path / "cls", convert_state_dict(numpy_state(tm), classifier), name, overrides)
    model = ours("v1")
    params = load_init(str(tmp_path / "cls"), model)["params"]
    want = convert_segmenter_state_dict(numpy_state(tm), model)["params"]
    chex.assert_trees_all_equal(params["backbone"], want["backbone"])
    np.testing.assert_array_equal(params["backbone"]["norm2"]["scale"], np.ones(64))

    seg = convert_segmenter_state_dict(numpy_state(hf_upernet("v1")), model)
    checkpoint.save_pretrained(tmp_path / "seg", seg, "upernet_swin_tiny_patch4_window7_224",
                               dict(img_size=64, **ARCH, channels=32, auxiliary_channels=16, num_classes=10))
    chex.assert_trees_all_equal(load_init(str(tmp_path / "seg"), model), seg)  # batch_stats too

    # The fresh heads follow config.seed (load_init's seed); the backbone does not depend on it.
    for path in (str(tmp_path / "cls"), str(tmp_path / "model.pth")):
        if path.endswith(".pth"):
            torch.save(tm.state_dict(), path)
        first, again, other = (load_init(path, model, seed=s)["params"] for s in (3, 3, 7))
        chex.assert_trees_all_equal(first, again)
        chex.assert_trees_all_equal(first["backbone"], other["backbone"])
        assert not np.allclose(first["decode_head"]["conv_seg"]["kernel"], other["decode_head"]["conv_seg"]["kernel"])
