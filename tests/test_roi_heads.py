"""The RoI heads against mmdet 2.11's, written out in PyTorch: Shared2FCBBoxHead and the Cascade 4conv1fc
head (BatchNorm with random running statistics), FCNMaskHead, their gradients against torch autograd;
get_bboxes + multiclass_nms (torchvision's batched_nms) and _do_paste_mask (F.grid_sample)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from swin_jax.models.detection import roi_heads
from test_detection_ops import mmdet_delta2bbox, nhwc, random_boxes


def randomised(module, *inputs, seed=0, scale=0.05):
    """Variables of `module` with every tensor random (BatchNorm statistics too, variances positive)."""
    return randomise(jax.jit(module.init)(jax.random.key(0), *inputs), seed, scale)


def randomise(variables, seed=0, scale=0.05):
    """Every tensor of `variables` random: BatchNorm variances in 0.5..1.5, scales around 1, the rest
    `scale` * N(0, 1)."""
    leaves, tree = jax.tree.flatten_with_path(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for (path, leaf), key in zip(leaves, keys):
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            out.append(0.5 + jax.random.uniform(key, leaf.shape))
        elif "'scale'" in name:
            out.append(1.0 + 0.2 * jax.random.normal(key, leaf.shape))
        else:
            out.append(scale * jax.random.normal(key, leaf.shape))
    return jax.tree.unflatten(jax.tree.structure(variables), out)


def torch_tree(variables):
    """The variables as torch tensors, the parameters requiring gradients."""
    out = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), variables)
    out["params"] = jax.tree.map(lambda t: t.requires_grad_(True), out["params"])
    return out


def torch_bbox_head(v, x, num_convs, num_fcs):
    """mmdet's ConvFCBBoxHead.forward (eval: BatchNorm on running statistics)."""
    p, s = v["params"], v.get("batch_stats", {})
    for i in range(num_convs):
        c = p[f"shared_convs_{i}"]
        x = F.conv2d(x, c["conv"]["kernel"].permute(3, 2, 0, 1), padding=1)
        stats = s[f"shared_convs_{i}"]["bn"]
        x = F.relu(F.batch_norm(x, stats["mean"], stats["var"], c["bn"]["scale"], c["bn"]["bias"], False, 0.1, 1e-5))
    x = x.flatten(1)
    for i in range(num_fcs):
        x = F.relu(F.linear(x, p[f"shared_fcs_{i}"]["kernel"].T, p[f"shared_fcs_{i}"]["bias"]))
    return (F.linear(x, p["fc_cls"]["kernel"].T, p["fc_cls"]["bias"]),
            F.linear(x, p["fc_reg"]["kernel"].T, p["fc_reg"]["bias"]))


@pytest.mark.parametrize("num_convs, num_fcs, agnostic", [(0, 2, False), (4, 1, False), (0, 2, True)])
def test_bbox_heads_and_their_gradients_match_mmdet(num_convs, num_fcs, agnostic):
    head = roi_heads.BBoxHead(num_classes=5, num_shared_convs=num_convs, num_shared_fcs=num_fcs, conv_channels=8,
                              fc_channels=32, class_agnostic=agnostic)
    x = torch.randn(6, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    variables = randomised(head, nhwc(x))
    tv = torch_tree(variables)
    want = torch_bbox_head(tv, x, num_convs, num_fcs)
    assert want[0].shape == (6, 6) and want[1].shape == (6, 4 if agnostic else 20)
    got = jax.jit(head.apply)(variables, nhwc(x))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-5, atol=1e-6)

    weights = [np.random.RandomState(i).randn(*w.shape).astype(np.float32) for i, w in enumerate(want)]
    sum(torch.sum(w * torch.from_numpy(r)) for w, r in zip(want, weights)).backward()
    grads = jax.grad(lambda params: sum(jnp.sum(o * r) for o, r in zip(
        head.apply({**variables, "params": params}, nhwc(x)), weights)))(variables["params"])
    for (path, g), t in zip(jax.tree.flatten_with_path(grads)[0], jax.tree.leaves(tv["params"])):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def torch_mask_head(p, x):
    """mmdet's FCNMaskHead.forward from our parameters."""
    for i in range(4):
        x = F.relu(F.conv2d(x, p[f"convs_{i}"]["conv"]["kernel"].permute(3, 2, 0, 1), p[f"convs_{i}"]["conv"]["bias"],
                            padding=1))
    x = F.relu(F.conv_transpose2d(x, p["upsample"]["kernel"].permute(2, 3, 0, 1), p["upsample"]["bias"], stride=2))
    return F.conv2d(x, p["conv_logits"]["kernel"].permute(3, 2, 0, 1), p["conv_logits"]["bias"])


def test_mask_head_and_its_gradient_match_mmdet():
    head = roi_heads.MaskHead(num_classes=3, channels=8)
    x = torch.randn(5, 6, 14, 14, generator=torch.Generator().manual_seed(1))
    variables = randomised(head, nhwc(x), scale=0.2)
    p = torch_tree(variables)["params"]
    want = torch_mask_head(p, x)
    got = jax.jit(head.apply)(variables, nhwc(x))
    assert got.shape == (5, 28, 28, 3)
    np.testing.assert_allclose(got, nhwc(want.detach()), rtol=1e-5, atol=1e-5)

    weight = np.random.RandomState(0).randn(*got.shape).astype(np.float32)
    torch.sum(want * torch.from_numpy(weight).permute(0, 3, 1, 2)).backward()
    grads = jax.grad(lambda params: jnp.sum(head.apply({"params": params}, nhwc(x)) * weight))(variables["params"])
    for (path, g), t in zip(jax.tree.flatten_with_path(grads)[0], jax.tree.leaves(p)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=jax.tree_util.keystr(path))


def mmdet_detect(rois, logits, deltas, img_shape, stds, score_thr, iou, max_num):
    """mmdet 2.11 BBoxHead.get_bboxes (rescale off) + multiclass_nms, written out in torch."""
    scores = F.softmax(logits, dim=-1)
    bboxes = mmdet_delta2bbox(rois, deltas, (0, 0, 0, 0), stds, img_shape)
    num_classes = scores.size(1) - 1
    if bboxes.shape[1] > 4:
        bboxes = bboxes.view(scores.size(0), -1, 4)
    else:
        bboxes = bboxes[:, None].expand(scores.size(0), num_classes, 4)
    scores = scores[:, :-1]
    labels = torch.arange(num_classes).view(1, -1).expand_as(scores)
    bboxes, scores, labels = bboxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    inds = (scores > score_thr).nonzero(as_tuple=False).squeeze(1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]
    keep = torchvision.ops.batched_nms(bboxes, scores, labels, iou)[:max_num]
    return bboxes[keep].numpy(), scores[keep].numpy(), labels[keep].numpy()


@pytest.mark.parametrize("agnostic", [False, True])
def test_detect_matches_get_bboxes_and_multiclass_nms(agnostic):
    rng = np.random.RandomState(1)
    rois = random_boxes(rng, 200, (90, 120), min_size=5, max_size=60)
    logits = (rng.randn(200, 8) * 1.5).astype(np.float32)  # 7 classes: many scores above 0.05
    deltas = (rng.randn(200, 4 if agnostic else 28) * 0.5).astype(np.float32)
    valid = np.ones(200, bool)
    valid[180:] = False  # padding proposals
    want = mmdet_detect(torch.from_numpy(rois[:180]), torch.from_numpy(logits[:180]), torch.from_numpy(deltas[:180]),
                        (90, 120), (0.1, 0.1, 0.2, 0.2), 0.05, 0.5, 100)
    got = jax.jit(lambda r, v, lg, d: roi_heads.detect(r, v, lg, d, (90, 120)))(rois, valid, logits, deltas)
    count = len(want[1])
    assert count == 100 and bool(got["valid"].all())
    np.testing.assert_allclose(got["scores"], want[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got["labels"], want[2])
    np.testing.assert_allclose(got["boxes"], want[0], rtol=1e-5, atol=1e-4)
    few = roi_heads.detect(rois, valid, logits - 6.0 * (np.arange(8) < 7), deltas, (90, 120))  # most below 0.05
    assert 0 < int(few["valid"].sum()) < 100 and not bool(few["valid"][int(few["valid"].sum()):].any())


def test_paste_masks_matches_grid_sample():
    rng = np.random.RandomState(2)
    boxes = np.concatenate([random_boxes(rng, 12, (45, 61), min_size=2, max_size=40),
                            np.array([[-5.5, 3.2, 20.7, 50.1], [10, 10, 10, 30]], np.float32)])
    masks = rng.rand(len(boxes), 28, 28).astype(np.float32)
    x0, y0, x1, y1 = torch.split(torch.from_numpy(boxes), 1, dim=1)
    img_y = (torch.arange(0, 45, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    img_x = (torch.arange(0, 61, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    img_x[torch.isinf(img_x)] = 0
    img_y[torch.isinf(img_y)] = 0
    grid = torch.stack([img_x[:, None, :].expand(len(boxes), 45, 61), img_y[:, :, None].expand(len(boxes), 45, 61)], 3)
    want = F.grid_sample(torch.from_numpy(masks)[:, None], grid, align_corners=False)[:, 0]
    got = roi_heads.paste_masks(masks, boxes, (45, 61), threshold=None)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    binary = roi_heads.paste_masks(masks, boxes, (45, 61))
    assert binary.dtype == jnp.bool_
    # Pixels whose probability is within float noise of the threshold may fall either way.
    decided = np.abs(want.numpy() - 0.5) > 1e-5
    np.testing.assert_array_equal(np.asarray(binary)[decided], (want.numpy() >= 0.5)[decided])
