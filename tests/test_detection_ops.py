"""The detectors' small parts against their PyTorch references: mmdet's anchor generator and delta coder
(written out here from mmdet 2.11's rules), torchvision's box IoU, NMS and RoIAlign (`aligned=True`,
`sampling_ratio=0`, the same kernel as mmcv's), mmdet's RoI level mapping, and mmdet's FPN."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from swin_jax.models.detection import boxes as box_ops
from swin_jax.models.detection.fpn import FPN
from swin_jax.models.detection.nms import batched_nms, nms
from swin_jax.models.detection.roi_align import multilevel_roi_align, roi_align


def mmdet_anchors(feature_hw, stride, ratios=(0.5, 1.0, 2.0), scales=(8.0,)):
    """mmdet 2.11 AnchorGenerator (center_offset 0, scale-major), written out in torch."""
    w = h = stride
    h_ratios = torch.sqrt(torch.tensor(ratios))
    w_ratios = 1 / h_ratios
    ws = (w * w_ratios[:, None] * torch.tensor(scales)[None, :]).view(-1)
    hs = (h * h_ratios[:, None] * torch.tensor(scales)[None, :]).view(-1)
    base = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
    shift_x = torch.arange(0, feature_hw[1]) * stride
    shift_y = torch.arange(0, feature_hw[0]) * stride
    xx = shift_x.repeat(len(shift_y))
    yy = shift_y.view(-1, 1).repeat(1, len(shift_x)).view(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).type_as(base)
    return (base[None, :, :] + shifts[:, None, :]).view(-1, 4).numpy()


def mmdet_delta2bbox(rois, deltas, means, stds, max_shape, wh_ratio_clip=16 / 1000):
    """mmdet 2.11 delta2bbox, written out in torch."""
    means = deltas.new_tensor(means).view(1, -1).repeat(1, deltas.size(-1) // 4)
    stds = deltas.new_tensor(stds).view(1, -1).repeat(1, deltas.size(-1) // 4)
    d = deltas * stds + means
    dx, dy, dw, dh = d[..., 0::4], d[..., 1::4], d[..., 2::4], d[..., 3::4]
    px = ((rois[..., 0] + rois[..., 2]) * 0.5).unsqueeze(-1).expand_as(dx)
    py = ((rois[..., 1] + rois[..., 3]) * 0.5).unsqueeze(-1).expand_as(dy)
    pw = (rois[..., 2] - rois[..., 0]).unsqueeze(-1).expand_as(dw)
    ph = (rois[..., 3] - rois[..., 1]).unsqueeze(-1).expand_as(dh)
    max_ratio = np.abs(np.log(wh_ratio_clip))
    dw, dh = dw.clamp(min=-max_ratio, max=max_ratio), dh.clamp(min=-max_ratio, max=max_ratio)
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    x1, y1 = (gx - gw * 0.5).clamp(0, max_shape[1]), (gy - gh * 0.5).clamp(0, max_shape[0])
    x2, y2 = (gx + gw * 0.5).clamp(0, max_shape[1]), (gy + gh * 0.5).clamp(0, max_shape[0])
    return torch.stack([x1, y1, x2, y2], dim=-1).view(deltas.size())


def random_boxes(rng, n, hw, min_size=1.0, max_size=None):
    h, w = hw
    max_size = max_size or max(h, w)
    size = rng.uniform(min_size, max_size, (n, 2))
    x1 = rng.uniform(0, w - 1, n)
    y1 = rng.uniform(0, h - 1, n)
    return np.stack([x1, y1, np.minimum(x1 + size[:, 0], w), np.minimum(y1 + size[:, 1], h)], -1).astype(np.float32)


def test_anchors_are_mmdets_not_torchvisions():
    for stride, hw in ((4, (13, 21)), (16, (4, 7)), (64, (1, 2))):
        base = box_ops.base_anchors(stride)
        ours = box_ops.grid_anchors(hw, stride, base)
        np.testing.assert_array_equal(ours, mmdet_anchors(hw, stride))
    # torchvision rounds its base anchors: e.g. stride 4, ratio 0.5 gives w 45.25 in mmdet, 45 there.
    assert box_ops.base_anchors(4)[0, 2] - box_ops.base_anchors(4)[0, 0] == pytest.approx(32 * math.sqrt(2))
    tv = torchvision.models.detection.anchor_utils.AnchorGenerator.generate_anchors(None, [32], [0.5])
    assert float(tv[0, 2] - tv[0, 0]) != pytest.approx(32 * math.sqrt(2), abs=0.1)


@pytest.mark.parametrize("stds", [(1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)])
def test_delta_coder_matches_mmdet(stds):
    rng = np.random.RandomState(0)
    rois = random_boxes(rng, 300, (70, 90), min_size=2)
    deltas = rng.randn(300, 8).astype(np.float32) * 2  # two boxes per RoI, some beyond the log clamp
    want = mmdet_delta2bbox(torch.from_numpy(rois), torch.from_numpy(deltas), (0, 0, 0, 0), stds, (70, 90))
    got = jax.jit(lambda r, d: box_ops.decode_deltas(r, d, stds=stds, max_hw=(70, 90)))(rois, deltas)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-4)
    # encode inverts decode wherever nothing was clamped
    moved = box_ops.decode_deltas(rois, deltas[:, :4] * 0.3, stds=stds)
    np.testing.assert_allclose(box_ops.encode_deltas(rois, moved, stds=stds), deltas[:, :4] * 0.3, rtol=1e-4,
                               atol=1e-4)


def test_iou_and_levels():
    rng = np.random.RandomState(1)
    a, b = random_boxes(rng, 40, (50, 60)), random_boxes(rng, 30, (50, 60))
    np.testing.assert_allclose(box_ops.box_iou(a, b), torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)),
                               rtol=1e-6, atol=1e-7)
    rois = random_boxes(rng, 500, (800, 1333), max_size=900)
    scale = torch.sqrt(torch.from_numpy((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])))
    want = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(min=0, max=3).long()
    np.testing.assert_array_equal(box_ops.roi_levels(rois, 4), want.numpy())
    assert set(want.tolist()) == {0, 1, 2, 3}


def test_nms_matches_torchvision_with_padding_and_a_fixed_output():
    rng = np.random.RandomState(2)
    boxes = random_boxes(rng, 300, (100, 100), min_size=10, max_size=40)  # crowded: many overlaps
    scores = rng.rand(300).astype(np.float32)
    valid = np.ones(300, bool)
    valid[250:] = False  # padding
    want = torchvision.ops.nms(torch.from_numpy(boxes[:250]), torch.from_numpy(scores[:250]), 0.5).numpy()
    assert 20 < len(want) < 200
    index, kept = jax.jit(lambda b, s, v: nms(b, s, 0.5, 200, v))(boxes, scores, valid)
    assert int(kept.sum()) == len(want) and not kept[len(want):].any()
    np.testing.assert_array_equal(index[:len(want)], want)
    index, kept = nms(boxes, scores, 0.5, 10, valid)  # the first ten only
    np.testing.assert_array_equal(index, want[:10])
    assert kept.all()


def test_batched_nms_matches_torchvision():
    rng = np.random.RandomState(3)
    boxes = random_boxes(rng, 400, (100, 100), min_size=10, max_size=40)
    scores = rng.rand(400).astype(np.float32)
    groups = rng.randint(0, 5, 400)
    want = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups),
                                       0.7).numpy()
    index, kept = batched_nms(boxes, scores, groups, 5, 0.7, 120)
    np.testing.assert_array_equal(index[kept], want[:120])


def nhwc(x):
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("aligned, sampling_ratio", [(True, 0), (True, 2), (False, 0)])
def test_roi_align_matches_torchvision_for_every_sample_count(aligned, sampling_ratio):
    """Boxes from a fraction of a pixel to the whole map, so that the number of samples per bin (ceil of
    the bin size) runs from 1 to its largest, and boxes that cross the border."""
    rng = np.random.RandomState(4)
    features = torch.randn(1, 5, 37, 53, generator=torch.Generator().manual_seed(4))
    boxes = np.concatenate([random_boxes(rng, 60, (148, 212), min_size=0.5, max_size=20),
                            random_boxes(rng, 60, (148, 212), min_size=20, max_size=212),
                            np.array([[0, 0, 212, 148], [-3, -2, 30, 20], [200, 140, 215, 150], [10, 10, 10, 10]],
                                     np.float32)])
    bins = np.ceil((boxes[:, 2:] - boxes[:, :2]) / 4 / 7)
    assert set(bins.ravel().astype(int)) >= set(range(0, 9))
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1)
    want = torchvision.ops.roi_align(features, rois, 7, spatial_scale=0.25, sampling_ratio=sampling_ratio,
                                     aligned=aligned)
    got = jax.jit(lambda f, b: roi_align(f, b, 7, 0.25, sampling_ratio, aligned, chunk=32))(nhwc(features)[0], boxes)
    np.testing.assert_allclose(got, nhwc(want), rtol=1e-5, atol=1e-5)


def test_multilevel_roi_align_pools_each_box_from_its_level():
    rng = np.random.RandomState(5)
    strides = (4, 8, 16, 32)
    generator = torch.Generator().manual_seed(5)
    maps = [torch.randn(1, 3, 480 // s, 640 // s, generator=generator) for s in strides]
    boxes = np.concatenate([random_boxes(rng, 80, (480, 640), min_size=4, max_size=640),
                            np.array([[0, 0, 640, 480], [20, 10, 600, 470]], np.float32)])
    levels = box_ops.roi_levels(boxes, 4)
    assert len(set(np.asarray(levels).tolist())) == 4
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1)
    want = torch.zeros(len(boxes), 3, 14, 14)
    for i, (m, s) in enumerate(zip(maps, strides)):
        idx = torch.from_numpy(np.asarray(levels) == i)
        want[idx] = torchvision.ops.roi_align(m, rois[idx], 14, 1 / s, 0, True)
    got = jax.jit(lambda f, b: multilevel_roi_align(f, b, 14, strides))([nhwc(m)[0] for m in maps], boxes)
    # Compiled, XLA fuses a sample position's product and sum into one multiply-add: at coordinates near 160
    # (this map's width) a position may differ from PyTorch's by its last bit, 1.5e-5, which on a map of
    # unit-variance noise (neighbours O(1) apart) moves a value by up to about 6e-5, 1.5e-5 of the largest.
    np.testing.assert_allclose(got, nhwc(want), rtol=1e-5, atol=1e-4)
    assert np.abs(np.asarray(got) - nhwc(want)).max() <= 2e-5 * np.abs(nhwc(want)).max()


def torch_fpn(p, xs, num_outs=5):
    """mmdet's FPN.forward (add_extra_convs=False) from our parameters."""
    def conv(x, name, pad):
        return F.conv2d(x, p[name]["conv"]["kernel"].permute(3, 2, 0, 1), p[name]["conv"]["bias"], padding=pad)

    laterals = [conv(x, f"lateral_convs_{i}", 0) for i, x in enumerate(xs)]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
    outs = [conv(x, f"fpn_convs_{i}", 1) for i, x in enumerate(laterals)]
    while len(outs) < num_outs:
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
    return outs


def torch_multilevel_roi_align(maps, boxes, size, strides=(4, 8, 16, 32)):
    """mmdet's SingleRoIExtractor for one image: map_roi_levels, then torchvision's roi_align per level."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(min=0, max=len(strides) - 1).long()
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
    out = maps[0].new_zeros(len(boxes), maps[0].shape[1], size, size)
    for i, (m, s) in enumerate(zip(maps, strides)):
        index = levels == i
        if index.any():
            out[index] = torchvision.ops.roi_align(m, rois[index], size, 1 / s, 0, True)
    return out


def test_fpn_matches_mmdets():
    """At stage maps of an input that is not a multiple of 32 (the nearest resize is not a plain repeat)."""
    shapes = [(25, 38), (13, 19), (7, 10), (4, 5)]
    channels = [8, 16, 32, 64]
    rng = np.random.RandomState(6)
    xs = [torch.from_numpy(rng.randn(2, c, h, w).astype(np.float32)) for c, (h, w) in zip(channels, shapes)]
    fpn = FPN(channels=12, num_outs=5)
    variables = fpn.init(jax.random.key(0), [nhwc(x) for x in xs])
    variables = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), variables)
    outs = torch_fpn(jax.tree.map(lambda a: torch.from_numpy(np.asarray(a)), variables["params"]), xs)
    got = jax.jit(fpn.apply)(variables, [nhwc(x) for x in xs])
    assert [g.shape[1:3] for g in got] == [*shapes, (2, 3)]
    for g, w in zip(got, outs):
        np.testing.assert_allclose(g, nhwc(w), rtol=1e-5, atol=1e-5)


def test_fpn_and_roi_align_gradients_match_torch_autograd():
    """What training backpropagates through: FPN's parameters and inputs, and RoIAlign's features over
    four levels (every sample's bilinear weights, boxes of every sample count), against torch autograd."""
    strides, shapes, channels = (4, 8, 16, 32), [(100, 150), (50, 75), (25, 38), (13, 19)], [4, 8, 8, 8]
    rng = np.random.RandomState(7)
    xs = [torch.from_numpy(rng.randn(1, c, h, w).astype(np.float32)).requires_grad_(True)
          for c, (h, w) in zip(channels, shapes)]
    fpn = FPN(channels=12, num_outs=5)
    variables = fpn.init(jax.random.key(0), [nhwc(x.detach()) for x in xs])
    variables = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), variables)
    tparams = jax.tree.map(lambda a: torch.from_numpy(np.array(a)).requires_grad_(True), variables["params"])
    boxes = np.concatenate([random_boxes(rng, 40, (400, 600), min_size=1, max_size=60),
                            random_boxes(rng, 40, (400, 600), min_size=60, max_size=600),
                            np.array([[0, 0, 600, 400], [-10, 5, 590, 398]], np.float32)])
    weight = rng.randn(len(boxes), 7, 7, 12).astype(np.float32)

    pooled = torch_multilevel_roi_align(torch_fpn(tparams, xs)[:4], torch.from_numpy(boxes), 7, strides)
    (pooled * torch.from_numpy(weight).permute(0, 3, 1, 2)).sum().backward()

    def loss(params, inputs):
        levels = fpn.apply({"params": params}, inputs)
        return jnp.sum(multilevel_roi_align([lv[0] for lv in levels[:4]], jnp.asarray(boxes), 7, strides) * weight)

    grads, input_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], [nhwc(x.detach()) for x in xs])
    assert len(set(np.asarray(box_ops.roi_levels(boxes, 4)).tolist())) == 4
    for (path, g), t in zip(jax.tree.flatten_with_path(grads)[0], jax.tree.leaves(tparams)):
        scale = np.abs(t.grad.numpy()).max()
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
    for g, x in zip(input_grads, xs):
        np.testing.assert_allclose(g, nhwc(x.grad), rtol=1e-4, atol=1e-5 * np.abs(x.grad.numpy()).max())
