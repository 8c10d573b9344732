"""The RPN head and its proposals against mmdet 2.11's RPNHead, written out in PyTorch (its convolutions,
then `_get_bboxes`: per-level sort and top nms_pre, delta2bbox clipped to the image, batched NMS by level,
the first max_per_img) with torchvision's batched_nms."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from swin_jax.models.detection import rpn
from test_detection_ops import mmdet_anchors, mmdet_delta2bbox, nhwc

STRIDES = (4, 8, 16, 32, 64)


def torch_head(params, levels):
    """mmdet's RPNHead.forward_single on every level, from our parameters."""
    def conv(x, name, pad):
        return F.conv2d(x, params[name]["kernel"].permute(3, 2, 0, 1), params[name]["bias"], padding=pad)

    outs = []
    for x in levels:
        x = F.relu(conv(x, "rpn_conv", 1))
        outs.append((conv(x, "rpn_cls", 0), conv(x, "rpn_reg", 0)))
    return outs


def mmdet_proposals(outs, level_hw, img_shape, nms_pre, max_per_img, iou):
    scores_all, deltas_all, anchors_all, ids = [], [], [], []
    for idx, ((cls, reg), hw) in enumerate(zip(outs, level_hw)):
        scores = cls[0].permute(1, 2, 0).reshape(-1).sigmoid()
        deltas = reg[0].permute(1, 2, 0).reshape(-1, 4)
        anchors = torch.from_numpy(mmdet_anchors(hw, STRIDES[idx]))
        if scores.shape[0] > nms_pre:
            scores, order = scores.sort(descending=True)
            scores, deltas, anchors = scores[:nms_pre], deltas[order[:nms_pre]], anchors[order[:nms_pre]]
        scores_all.append(scores)
        deltas_all.append(deltas)
        anchors_all.append(anchors)
        ids.append(torch.full((scores.shape[0],), idx, dtype=torch.long))
    proposals = mmdet_delta2bbox(torch.cat(anchors_all), torch.cat(deltas_all), (0, 0, 0, 0), (1, 1, 1, 1), img_shape)
    scores = torch.cat(scores_all)
    keep = torchvision.ops.batched_nms(proposals, scores, torch.cat(ids), iou)[:max_per_img]
    return proposals[keep].numpy(), scores[keep].numpy()


def test_rpn_head_and_proposals_match_mmdet():
    """An image of 250x340 padded to 256x352 (levels 64x88 ... 4x6), proposals clipped to 250x340; nms_pre
    small enough that the finest levels are cut and the coarsest is not."""
    head = rpn.RPNHead(num_anchors=3, channels=16)
    level_hw = [(64, 88), (32, 44), (16, 22), (8, 11), (4, 6)]
    rng = np.random.RandomState(0)
    levels = [torch.from_numpy(rng.randn(1, 8, h, w).astype(np.float32)) for h, w in level_hw]
    variables = head.init(jax.random.key(0), [nhwc(x) for x in levels])
    variables = jax.tree.map(lambda p: 0.06 * jax.random.normal(jax.random.key(1), p.shape), variables)
    params = jax.tree.map(lambda a: torch.from_numpy(np.asarray(a)), variables["params"])

    outs = torch_head(params, levels)
    logits, deltas = jax.jit(head.apply)(variables, [nhwc(x) for x in levels])
    for (cls, reg), got_cls, got_reg in zip(outs, logits, deltas):
        np.testing.assert_allclose(got_cls, nhwc(cls), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_reg, nhwc(reg), rtol=1e-5, atol=1e-5)

    anchors = rpn.level_anchors(level_hw)
    for max_per_img in (500, 1300):  # fewer than NMS keeps, and more (padded)
        want_boxes, want_scores = mmdet_proposals(outs, level_hw, (250, 340), nms_pre=300, max_per_img=max_per_img,
                                                  iou=0.7)
        propose = jax.jit(lambda lg, dl: rpn.proposals([x[0] for x in lg], [x[0] for x in dl], anchors, (250, 340),
                                                       nms_pre=300, max_per_img=max_per_img))
        boxes, scores, valid = propose(logits, deltas)
        count = len(want_scores)
        assert boxes.shape == (max_per_img, 4) and int(valid.sum()) == count and not valid[count:].any()
        assert count == 500 if max_per_img == 500 else 600 < count < 1236
        np.testing.assert_allclose(scores[:count], want_scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(boxes[:count], want_boxes, rtol=1e-5, atol=1e-4)
        assert float(np.asarray(boxes)[:, 2].max()) <= 340 and float(np.asarray(boxes)[:, 3].max()) <= 250


def test_rpn_head_gradients_match_torch_autograd():
    head = rpn.RPNHead(num_anchors=3, channels=16)
    rng = np.random.RandomState(1)
    levels = [torch.from_numpy(rng.randn(1, 8, h, w).astype(np.float32)) for h, w in [(16, 22), (8, 11), (4, 6)]]
    variables = head.init(jax.random.key(0), [nhwc(x) for x in levels])
    variables = jax.tree.map(lambda p: 0.1 * jax.random.normal(jax.random.key(1), p.shape), variables)
    params = jax.tree.map(lambda a: torch.from_numpy(np.array(a)).requires_grad_(True), variables["params"])
    weights = [(rng.randn(*x.shape[2:], 3).astype(np.float32), rng.randn(*x.shape[2:], 12).astype(np.float32))
               for x in levels]
    total = 0
    for (cls, reg), (wc, wr) in zip(torch_head(params, levels), weights):
        total = total + (cls * torch.from_numpy(wc).permute(2, 0, 1)).sum()
        total = total + (reg * torch.from_numpy(wr).permute(2, 0, 1)).sum()
    total.backward()

    def loss(p):
        logits, deltas = head.apply({"params": p}, [nhwc(x) for x in levels])
        return sum(jnp.sum(c * wc) + jnp.sum(d * wr) for c, d, (wc, wr) in zip(logits, deltas, weights))

    grads = jax.grad(loss)(variables["params"])
    for (path, g), t in zip(jax.tree.flatten_with_path(grads)[0], jax.tree.leaves(params)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=jax.tree_util.keystr(path))
