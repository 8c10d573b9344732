"""The segmentation task: mmseg's metrics against independent computations, the loss, the poly
schedule against mmcv's formulas, the official parameter groups, resizing logits to the annotation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util

import swin_jax
from configs import segmentation as seg_config
from swin_jax.models import layers
from swin_jax.tasks import segmentation as seg
from swin_jax.train import optim


def confusion_metrics(pred, label, num_classes, ignore=255):
    """IoU and Acc per class from a NumPy confusion matrix (rows: label, columns: prediction)."""
    keep = label != ignore
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (label[keep], pred[keep]), 1)
    tp = np.diag(confusion).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
        acc = tp / confusion.sum(1)
    return iou, acc, tp.sum() / confusion.sum()


def ours(pred, label, num_classes):
    counts = jax.device_get(seg.area_counts(jnp.asarray(pred), jnp.asarray(label), num_classes))
    return seg.iou_metrics(counts["intersect"], counts["area_pred"], counts["area_label"])


def test_crafted_cases():
    """Ignored pixels count nowhere; class 3 (in neither) is NaN and left out of the means; class 2 (only
    predicted) has IoU 0 and no Acc."""
    label = np.array([[0, 0, 1, 255], [1, 1, 0, 255]])
    pred = np.array([[0, 2, 1, 3], [1, 0, 0, 3]])  # 3 is predicted only where the label is ignored
    m = ours(pred, label, 4)
    # class 0: I = 2 (0,0),(1,2); predicted 3, labelled 3 -> U 4. class 1: I 2, pred 2, label 3 -> U 3.
    np.testing.assert_allclose(m["iou"][:3], [2 / 4, 2 / 3, 0.0])
    assert np.isnan(m["iou"][3]) and np.isnan(m["acc"][2]) and np.isnan(m["acc"][3])
    np.testing.assert_allclose(m["miou"], (2 / 4 + 2 / 3 + 0) / 3)
    np.testing.assert_allclose(m["macc"], (2 / 3 + 2 / 3) / 2)
    np.testing.assert_allclose(m["aacc"], 4 / 6)
    iou, acc, aacc = confusion_metrics(pred, label, 4)
    np.testing.assert_array_equal(np.isnan(m["iou"]), np.isnan(iou))
    np.testing.assert_allclose(m["iou"], iou)
    np.testing.assert_allclose(m["acc"], acc)
    np.testing.assert_allclose(m["aacc"], aacc)


def test_random_maps_against_numpy_and_sklearn():
    from sklearn.metrics import jaccard_score, recall_score

    rng = np.random.RandomState(0)
    label = rng.randint(0, 9, (3, 40, 50))  # classes 9 and 10 never labelled; 10 never predicted either
    label[rng.rand(*label.shape) < 0.1] = 255
    pred = np.where(rng.rand(*label.shape) < 0.6, label, rng.randint(0, 10, label.shape))
    pred = np.where(pred == 255, 9, pred)
    m = ours(pred, label, 11)
    iou, acc, aacc = confusion_metrics(pred, label, 11)
    np.testing.assert_allclose(m["iou"], iou, rtol=1e-12)
    np.testing.assert_allclose(m["acc"], acc, rtol=1e-12)
    assert np.isnan(m["iou"][10]) and m["iou"][9] == 0.0
    keep = label != 255
    present = np.union1d(np.unique(label[keep]), np.unique(pred[keep]))
    np.testing.assert_allclose(m["iou"][present], jaccard_score(label[keep], pred[keep], labels=present, average=None))
    labelled = np.unique(label[keep])
    np.testing.assert_allclose(m["acc"][labelled], recall_score(label[keep], pred[keep], labels=labelled, average=None))
    np.testing.assert_allclose(m["miou"], np.mean(jaccard_score(label[keep], pred[keep], labels=present, average=None)))


def test_loss_is_mmseg_cross_entropy():
    """Mean over all pixels with ignored ones in the denominator: F.cross_entropy(reduction='none').mean()."""
    rng = np.random.RandomState(1)
    logits = rng.randn(2, 5, 6, 7).astype(np.float32)
    labels = rng.randint(0, 7, (2, 5, 6))
    labels[0, :2] = 255
    expected = F.cross_entropy(torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels),
                               ignore_index=255, reduction="none").mean()
    np.testing.assert_allclose(seg.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), expected.item(),
                               rtol=1e-6)


def test_class_weighted_loss_is_mmseg_cross_entropy():
    """mmseg's CrossEntropyLoss(class_weight=w): each pixel's term scaled by its class's weight, then the
    mean over all pixels (F.cross_entropy(weight=w, reduction='none').mean()), not PyTorch's weighted
    mean (reduction='mean' divides by the sum of the weights)."""
    rng = np.random.RandomState(2)
    logits = rng.randn(2, 5, 6, 7).astype(np.float32)
    labels = rng.randint(0, 7, (2, 5, 6))
    labels[1, 3:] = 255
    weight = rng.uniform(0.2, 3.0, 7).astype(np.float32)
    args = (torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels))
    expected = F.cross_entropy(*args, weight=torch.from_numpy(weight), ignore_index=255, reduction="none").mean()
    weighted_mean = F.cross_entropy(*args, weight=torch.from_numpy(weight), ignore_index=255, reduction="mean")
    got = seg.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), class_weight=tuple(weight))
    np.testing.assert_allclose(got, expected.item(), rtol=1e-6)
    assert abs(float(got) - weighted_mean.item()) > 0.05 * abs(weighted_mean.item())


def test_a_non_square_crop_builds_the_segmenter_on_its_grid():
    """crop_size (h, w) = (64, 96): the backbone's img_size is the crop, so V2 decides its windows and shifts
    on the 16x24 patch grid."""
    config = seg_config.get_config("upernet_swinv2_tiny_window8_256")
    config.input.crop_size = (64, 96)
    config.model_overrides.update(dict(embed_dim=16, num_heads=(1, 2, 2, 4), channels=16, auxiliary_channels=8))
    model = seg.TASK.build_model(config, 5)
    assert model.input_hw == (64, 96) and model.backbone.patch_grid == (16, 24)
    config.input.crop_size = (96, 96)
    assert seg.TASK.build_model(config, 5).backbone.img_size == 96


@pytest.mark.parametrize("size_in,size_out", [(24, 61), (48, 17), (32, 32)])
def test_logits_resized_to_the_annotation_like_pytorch(size_in, size_out):
    """The run-time-size bilinear matrix on a padded map equals F.interpolate of the unpadded one."""
    rng = np.random.RandomState(2)
    x = rng.randn(1, 3, size_in, size_in + 5).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x), size=(size_out, size_out + 3), mode="bilinear",
                             align_corners=False).numpy()[0]
    padded = np.pad(x[0], ((0, 0), (0, 8), (0, 8)))  # (C, H + 8, W + 8): the padding must not leak in
    ry = layers.bilinear_matrix_of_sizes(jnp.int32(size_in), jnp.int32(size_out), rows=size_out + 4, cols=size_in + 8)
    rx = layers.bilinear_matrix_of_sizes(jnp.int32(size_in + 5), jnp.int32(size_out + 3), rows=size_out + 7,
                                         cols=size_in + 13)
    out = np.einsum("ih,chw,jw->cij", ry, padded, rx)
    np.testing.assert_allclose(out[:, :size_out, :size_out + 3], expected, atol=1e-5)
    assert not out[:, size_out:].any() and not out[:, :, size_out + 3:].any()


def mmcv_poly_lr(it, base=6e-5, max_iters=160_000, power=1.0, min_lr=0.0, warmup=1500, ratio=1e-6):
    """mmcv's PolyLrUpdaterHook.get_lr and LrUpdaterHook.get_warmup_lr('linear'), written out."""
    regular = (base - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it >= warmup:
        return regular
    k = (1 - it / warmup) * (1 - ratio)
    return regular * (1 - k)


def test_poly_schedule_is_mmcv():
    config = seg_config.get_config()
    lr = optim.schedule(config, config.total_steps, 1)
    for it in (0, 1, 750, 1499, 1500, 80_000, 159_999, 160_000):
        np.testing.assert_allclose(float(lr(it)), mmcv_poly_lr(it), rtol=2e-6, atol=1e-16, err_msg=it)
    assert float(lr(0)) == pytest.approx(6e-11, rel=1e-4)
    assert float(lr(80_000)) == pytest.approx(3e-5, rel=1e-5) and float(lr(160_000)) == 0.0
    config.batch_size = 32  # lr per 16 images, scaled linearly
    assert float(optim.schedule(config, config.total_steps, 1)(1500)) == pytest.approx(2 * mmcv_poly_lr(1500))


def test_parameter_groups_are_the_official_ones():
    """mmcv's custom_keys rule: no decay exactly for names containing 'norm' or 'relative_position_bias_table'
    (every backbone LayerNorm, weight and bias); biases, convolutions and the heads' BatchNorm decay.
    Checked by name on our tree and, independently, on the PyTorch names of the same model."""
    from swin_jax.convert.segmenter import export_huggingface_upernet

    config = seg_config.get_config()
    model = swin_jax.create_model("upernet_swin_tiny_patch4_window7_224", num_classes=11, img_size=64, embed_dim=16,
                                  depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, channels=16,
                                  auxiliary_channels=8)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    mask = traverse_util.flatten_dict(optim.decay_mask(variables["params"], tuple(config.no_decay_keys)))
    exempt = sorted("/".join(p) for p, decays in mask.items() if not decays)
    for name in exempt:
        leaf = name.rsplit("/", 1)
        assert leaf[1] == "relative_position_bias_table" or "norm" in leaf[0].rsplit("/", 1)[-1], name
    assert any(n.startswith("backbone/norm0/") for n in exempt) and "backbone/patch_embed/norm/bias" in exempt
    assert all(mask[p] for p in mask if p[-2] == "bn" or p[0] in ("decode_head", "auxiliary_head"))
    assert mask[("backbone", "layers_0", "blocks", "block0", "attn", "qkv", "bias")]
    # Leaves (blocks are scanned in pairs: one leaf per stage and position): 2 LayerNorms per block
    # position, the patch embedding's, 3 mergings', 4 stage-map norms, each scale and bias; the tables.
    layer_norms = 4 * 2 * 2 + 1 + 3 + 4
    assert len(exempt) == 2 * layer_norms + 4 * 2
    # The same rule applied to the PyTorch names (Hugging Face's, whose BatchNorm is 'batch_norm' where
    # mmseg's is 'bn'; its final V1 'layernorm' is never applied and has no counterpart).
    torch_state = export_huggingface_upernet(jax.device_get(variables), model)
    names = {k.replace(".batch_norm.", ".bn."): v for k, v in torch_state.items()
             if not k.endswith(("running_mean", "running_var", "num_batches_tracked")) and ".swin.layernorm." not in k}
    torch_exempt = sum(v.size for k, v in names.items() if any(key in k for key in config.no_decay_keys))
    ours_exempt = sum(np.size(traverse_util.flatten_dict(variables["params"])[p]) for p, d in mask.items() if not d)
    assert torch_exempt == ours_exempt
    assert sum(v.size for v in names.values()) == sum(np.size(v) for v in jax.tree.leaves(variables["params"]))
