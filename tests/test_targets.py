"""Detection training targets against a NumPy transcription of mmdet 2.x's MaxIoUAssigner and
RandomSampler (variable-length, loop by loop), on padded inputs: random boxes, ties, a ground-truth box
no candidate reaches the positive threshold for, no objects, every candidate padded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax.models.detection import targets

RPN = dict(pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3, match_low_quality=True)
RCNN = dict(pos_iou=0.5, neg_iou=0.5, min_pos_iou=0.5, match_low_quality=True)  # Mask R-CNN's
CASCADE_2 = dict(pos_iou=0.6, neg_iou=0.6, min_pos_iou=0.6, match_low_quality=False)  # the second stage's


def iou(a, b):
    """(len(a), len(b)) IoU of x1y1x2y2 boxes, float64."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, np.finfo(np.float32).eps)


def mmdet_assign(candidates, gts, pos_iou, neg_iou, min_pos_iou, match_low_quality):
    """MaxIoUAssigner.assign_wrt_overlaps on the valid boxes only, as mmdet writes it."""
    num_gts, num_boxes = len(gts), len(candidates)
    assigned = np.full(num_boxes, -1, np.int64)
    if num_gts == 0 or num_boxes == 0:
        if num_gts == 0:
            assigned[:] = 0
        return assigned, np.zeros(num_boxes)
    overlaps = iou(gts, candidates)
    max_overlaps, argmax_overlaps = overlaps.max(0), overlaps.argmax(0)
    gt_max_overlaps = overlaps.max(1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou)] = 0
    pos = max_overlaps >= pos_iou
    assigned[pos] = argmax_overlaps[pos] + 1
    if match_low_quality:
        for i in range(num_gts):
            if gt_max_overlaps[i] >= min_pos_iou:
                assigned[overlaps[i, :] == gt_max_overlaps[i]] = i + 1
    return assigned, max_overlaps


def mmdet_sample(assigned, priorities, num, pos_fraction):
    """RandomSampler with its random choice replayed as 'the highest priorities'."""
    def choose(inds, count):
        return inds if len(inds) <= count else inds[np.argsort(-priorities[inds], kind="stable")[:count]]
    pos = choose(np.nonzero(assigned > 0)[0], int(num * pos_fraction))
    neg = choose(np.nonzero(assigned == 0)[0], num - len(pos))
    return pos, neg


def random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(4, size * 0.4, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def check(candidates, cand_valid, gts, gt_valid, rules):
    got_codes, got_max = jax.jit(lambda *a: targets.max_iou_assign(*a, **rules))(candidates, cand_valid, gts, gt_valid)
    got_codes, got_max = np.asarray(got_codes), np.asarray(got_max)
    valid_gt_index = np.nonzero(gt_valid)[0]
    want_codes, want_max = mmdet_assign(candidates[cand_valid], gts[gt_valid], **rules)
    # mmdet numbers the valid boxes 1..G; ours numbers the padded slots
    if len(valid_gt_index):
        want_codes = np.where(want_codes > 0, valid_gt_index[np.maximum(want_codes - 1, 0)] + 1, want_codes)
    np.testing.assert_array_equal(got_codes[cand_valid], want_codes)
    assert np.all(got_codes[~cand_valid] == targets.IGNORED)
    np.testing.assert_allclose(got_max[cand_valid], want_max, rtol=1e-6, atol=1e-7)
    return got_codes


@pytest.mark.parametrize("rules", [RPN, RCNN], ids=["rpn", "rcnn"])
def test_random_boxes_with_padding(rules):
    rng = np.random.RandomState(0)
    for trial in range(5):
        gts = random_boxes(rng, 8)
        near = gts[rng.randint(0, 8, 60)] + rng.normal(0, 3, (60, 4)).astype(np.float32)  # some overlap well
        candidates = np.concatenate([random_boxes(rng, 240), near])
        cand_valid = rng.uniform(size=300) < 0.9
        gt_valid = np.arange(8) < rng.randint(1, 9)
        gt_valid = rng.permutation(gt_valid)  # padding anywhere, not only at the end
        codes = check(candidates, cand_valid, gts, gt_valid, rules)
        assert (codes > 0).any() and (codes == 0).any()


def test_ties_and_a_box_no_candidate_reaches():
    """Two identical ground-truth boxes: the positive goes to the first (argmax), a low-quality match to
    the later one (mmdet's loop overwrites); a small box whose best IoU is below 0.7 but above 0.3 takes
    every candidate attaining that best IoU."""
    gts = np.array([[10, 10, 50, 50], [10, 10, 50, 50], [70, 70, 78, 78], [0, 0, 1, 1]], np.float32)
    candidates = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [68, 68, 80, 80], [66, 66, 82, 82],
                           [68, 68, 80, 80], [90, 0, 99, 9], [0, 0, 0, 0]], np.float32)
    gt_valid = np.array([True, True, True, False])
    cand_valid = np.array([True] * 6 + [False])
    codes = check(candidates, cand_valid, gts, gt_valid, RPN)
    assert codes[0] == 2  # the exact match: positive for box 1 (argmax), then low quality for box 2
    assert codes[2] == codes[4] == 3 and 0.3 <= 64 / 144 < 0.7  # both attain box 3's best IoU
    no_low_quality = check(candidates, cand_valid, gts, gt_valid, dict(RCNN, match_low_quality=False))
    assert no_low_quality[0] == 1 and no_low_quality[2] == 0


def test_no_objects_and_all_padded():
    rng = np.random.RandomState(1)
    candidates, gts = random_boxes(rng, 20), random_boxes(rng, 4)
    valid = np.arange(20) < 15
    codes = check(candidates, valid, gts, np.zeros(4, bool), RPN)  # no objects: every valid one negative
    assert np.all(codes[:15] == 0) and np.all(codes[15:] == -1)
    codes = check(candidates, np.zeros(20, bool), gts, np.ones(4, bool), RPN)  # every candidate padded
    assert np.all(codes == -1)


@pytest.mark.parametrize("num,pos_fraction", [(256, 0.5), (512, 0.25), (16, 0.25)])
def test_sampling_replays_mmdet_choices(num, pos_fraction):
    rng = np.random.RandomState(num)
    for n_pos, n_neg in ((3, 1000), (400, 1000), (400, 20), (0, 50), (0, 0)):
        codes = rng.permutation(np.concatenate([rng.randint(1, 5, n_pos), np.zeros(n_neg, int),
                                                np.full(1600 - n_pos - n_neg, -1)])).astype(np.int32)
        priorities = jax.random.uniform(jax.random.key(n_pos + n_neg), (1600,))
        pos, neg = jax.jit(lambda c, p: targets.random_sample(c, p, num=num, pos_fraction=pos_fraction))(codes, priorities)
        want_pos, want_neg = mmdet_sample(codes, np.asarray(priorities), num, pos_fraction)
        np.testing.assert_array_equal(np.nonzero(np.asarray(pos))[0], np.sort(want_pos))
        np.testing.assert_array_equal(np.nonzero(np.asarray(neg))[0], np.sort(want_neg))
        assert int(pos.sum()) + int(neg.sum()) == min(num, len(want_pos) + len(want_neg))


def torch_bbox2delta(anchors, gts):
    """mmdet's bbox2delta (means 0, stds 1), float64."""
    import torch
    p, g = torch.as_tensor(anchors, dtype=torch.float64), torch.as_tensor(gts, dtype=torch.float64)
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    return torch.stack([((g[:, 0] + g[:, 2]) - (p[:, 0] + p[:, 2])) * 0.5 / pw,
                        ((g[:, 1] + g[:, 3]) - (p[:, 1] + p[:, 3])) * 0.5 / ph,
                        torch.log(gw / pw), torch.log(gh / ph)], 1)


def torch_delta2bbox(rois, deltas):
    """mmdet's delta2bbox (means 0, deltas already multiplied by the stds, no max_shape), float64."""
    import torch
    r, d = torch.as_tensor(rois, dtype=torch.float64), deltas
    clip = abs(np.log(16 / 1000))
    px, py, pw, ph = (r[:, 0] + r[:, 2]) * 0.5, (r[:, 1] + r[:, 3]) * 0.5, r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]
    gw, gh = pw * d[:, 2].clamp(-clip, clip).exp(), ph * d[:, 3].clamp(-clip, clip).exp()
    gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
    return torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], 1)


def torch_giou(a, b, eps=1e-6):
    """mmdet's bbox_overlaps(mode="giou", is_aligned=True), float64."""
    import torch
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    union = torch.clamp(area(a) + area(b) - overlap, min=eps)
    ewh = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    enclose = torch.clamp(ewh[:, 0] * ewh[:, 1], min=eps)
    return overlap / union - (enclose - union) / enclose


def test_rpn_targets_and_loss_match_mmdet():
    """Two images (one with three objects among five padded slots, one without objects) over two anchor
    levels: targets vmapped over the batch and the loss, against mmdet's _get_targets_single and
    loss_single written in PyTorch on the same sampled anchors."""
    import torch
    import torch.nn.functional as F
    from swin_jax.models.detection import boxes

    anchors = np.concatenate([boxes.grid_anchors((16, 16), 4, boxes.base_anchors(4)),
                              boxes.grid_anchors((8, 8), 8, boxes.base_anchors(8))]).astype(np.float32)
    count = len(anchors)
    gts = np.zeros((2, 5, 4), np.float32)
    gts[0, :3] = [[4, 6, 30, 40], [30, 30, 60, 50], [40, 2, 48, 12]]
    gt_valid = np.zeros((2, 5), bool)
    gt_valid[0, :3] = True
    rng = np.random.RandomState(0)
    logits = rng.randn(2, count).astype(np.float32)
    deltas = (0.3 * rng.randn(2, count, 4)).astype(np.float32)
    priorities = jax.random.uniform(jax.random.key(3), (2, count))
    got = jax.jit(jax.vmap(lambda g, v, p: targets.rpn_targets(jnp.asarray(anchors), g, v, p)))(gts, gt_valid, priorities)
    loss_cls, loss_box = targets.rpn_loss(jnp.asarray(logits), jnp.asarray(deltas), got)

    totals, cls_sum, box_sum = [0, 0], 0.0, 0.0
    for i in range(2):
        assigned, _ = mmdet_assign(anchors, gts[i][gt_valid[i]], **RPN)
        pos, neg = mmdet_sample(assigned, np.asarray(priorities[i]), 256, 0.5)
        assert int(got["num_pos"][i]) == len(pos) and int(got["num_neg"][i]) == len(neg)
        totals[0] += max(len(pos), 1)
        totals[1] += max(len(neg), 1)
        labels = torch.zeros(count, dtype=torch.float64)  # mmdet: label 0 (foreground) -> target 1
        labels[pos] = 1.0
        label_weights = torch.zeros(count, dtype=torch.float64)
        label_weights[np.concatenate([pos, neg])] = 1.0
        targets_ = torch.zeros(count, 4, dtype=torch.float64)
        weights = torch.zeros(count, 4, dtype=torch.float64)
        if len(pos):
            targets_[pos] = torch_bbox2delta(anchors[pos], gts[i][gt_valid[i]][assigned[pos] - 1])
            weights[pos] = 1.0
        np.testing.assert_allclose(np.asarray(got["deltas"][i]), targets_.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(got["weight"][i]), label_weights.numpy())
        cls_sum += (F.binary_cross_entropy_with_logits(torch.as_tensor(logits[i], dtype=torch.float64), labels,
                                                       reduction="none") * label_weights).sum()
        box_sum += ((torch.as_tensor(deltas[i], dtype=torch.float64) - targets_).abs() * weights).sum()
    assert totals[0] >= 2 and int(got["num_pos"][0]) > 3  # low-quality matches give every box an anchor
    average = totals[0] + totals[1]
    np.testing.assert_allclose(float(loss_cls), float(cls_sum / average), rtol=1e-5)
    np.testing.assert_allclose(float(loss_box), float(box_sum / average), rtol=1e-5)


@pytest.mark.parametrize("num,rules", [(512, RCNN), (64, RCNN), (512, CASCADE_2)], ids=["512", "64", "cascade"])
def test_rcnn_targets_and_loss_match_mmdet(num, rules):
    """Proposals with padding, assigned among themselves (Mask R-CNN's low-quality matches; a Cascade
    stage's 0.6 without), the ground truth added as proposals (assigned to itself), sampled 512 at 0.25
    positive (and 64: more candidates than slots), targets with stds (0.1, 0.1, 0.2, 0.2), and the
    losses: softmax cross entropy over the sampled RoIs and class-specific L1 over the positives (the
    Cascade: GIoU x 10 on the decoded boxes), against mmdet's rules in PyTorch."""
    import torch
    import torch.nn.functional as F

    rng = np.random.RandomState(num)
    classes, g, p = 7, 6, 300
    gts = random_boxes(rng, g)
    gt_valid = np.array([True, False, True, True, False, True])
    gt_labels = rng.randint(0, classes, g).astype(np.int32)
    near = gts[rng.choice(np.nonzero(gt_valid)[0], 120)] + rng.normal(0, 4, (120, 4)).astype(np.float32)
    proposals = np.concatenate([random_boxes(rng, p - 120), near]).astype(np.float32)
    proposals[:, 2:] = np.maximum(proposals[:, 2:], proposals[:, :2] + 1)
    proposal_valid = rng.uniform(size=p) < 0.95
    priorities = jax.random.uniform(jax.random.key(num), (g + p,))
    got = jax.jit(lambda *a: targets.rcnn_targets(*a, classes, num=num, assign=rules))(
        proposals, proposal_valid, gts, gt_labels, gt_valid, priorities)

    gi, pi = np.nonzero(gt_valid)[0], np.nonzero(proposal_valid)[0]
    candidates = np.concatenate([gts[gi], proposals[pi]])
    prio = np.concatenate([np.asarray(priorities)[gi], np.asarray(priorities)[g + pi]])
    assigned_props, _ = mmdet_assign(proposals[pi], gts[gi], **rules)
    assigned = np.concatenate([np.arange(1, len(gi) + 1), assigned_props])  # add_gt_as_proposals
    pos, neg = mmdet_sample(assigned, prio, num, 0.25)
    pos, neg = (s[np.argsort(-prio[s], kind="stable")] for s in (pos, neg))  # our slots' order; losses ignore it
    n_pos, n_neg = len(pos), len(neg)
    assert n_pos > 10 and n_neg > 10
    np.testing.assert_array_equal(np.asarray(got["positive"]), np.arange(num) < n_pos)
    np.testing.assert_array_equal(np.asarray(got["sampled"]), np.arange(num) < n_pos + n_neg)
    sampled = np.concatenate([pos, neg])
    np.testing.assert_array_equal(np.asarray(got["rois"])[:n_pos + n_neg], candidates[sampled])
    labels = np.full(n_pos + n_neg, classes)
    labels[:n_pos] = gt_labels[gi][assigned[pos] - 1]
    np.testing.assert_array_equal(np.asarray(got["labels"])[:n_pos + n_neg], labels)
    sampled_gt = np.concatenate([gi, g + pi])[sampled]  # candidate index in [ground truth; proposals]
    np.testing.assert_array_equal(np.asarray(got["index"])[:n_pos + n_neg], sampled_gt)
    np.testing.assert_array_equal(np.asarray(got["from_gt"]), np.isin(np.arange(num), np.nonzero(sampled[:n_pos] < len(gi))[0]))
    want_deltas = (torch_bbox2delta(candidates[pos], gts[gi][assigned[pos] - 1])
                   / torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64))
    np.testing.assert_allclose(np.asarray(got["deltas"])[:n_pos], want_deltas.numpy(), rtol=1e-5, atol=1e-5)

    logits = rng.randn(num, classes + 1).astype(np.float32)
    deltas = (0.5 * rng.randn(num, 4 * classes)).astype(np.float32)
    batched = jax.tree.map(lambda t: t[None], got)
    giou = 10.0 if rules is CASCADE_2 else 0.0
    loss_cls, loss_box = targets.rcnn_loss(jnp.asarray(logits)[None], jnp.asarray(deltas)[None], batched,
                                           giou_weight=giou)
    k = n_pos + n_neg
    t_labels = torch.as_tensor(labels)
    want_cls = F.cross_entropy(torch.as_tensor(logits[:k], dtype=torch.float64), t_labels, reduction="sum") / k
    pred = torch.as_tensor(deltas[:n_pos], dtype=torch.float64).view(n_pos, classes, 4)[torch.arange(n_pos), t_labels[:n_pos]]
    if giou:  # reg_decoded_bbox: the deltas decoded (no clipping), GIoULoss(loss_weight=10) with avg_factor k
        decoded = torch_delta2bbox(candidates[pos], pred * torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64))
        want_box = giou * (1 - torch_giou(decoded, torch.as_tensor(gts[gi][assigned[pos] - 1], dtype=torch.float64))).sum() / k
    else:
        want_box = (pred - want_deltas).abs().sum() / k
    np.testing.assert_allclose(float(loss_cls), float(want_cls), rtol=1e-5)
    np.testing.assert_allclose(float(loss_box), float(want_box), rtol=1e-5)


def test_mask_targets_and_loss_match_mmdet():
    """Each positive RoI's 28x28 target cut from its own instance mask by torchvision's RoIAlign (aligned,
    sampling_ratio 0, as mmdet's BitmapMasks.crop_and_resize) and binarised at 0.5; the loss of each RoI's
    class map against it, averaged over the positives' pixels; padded slots count nothing."""
    import torch
    import torch.nn.functional as F
    from torchvision.ops import roi_align as tv_roi_align
    from swin_jax.models.detection.roi_align import crop_and_resize

    rng = np.random.RandomState(0)
    masks = np.zeros((3, 40, 56), np.float32)
    masks[0, 5:30, 4:20] = 1
    masks[1, 10:38, 25:54] = rng.uniform(size=(28, 29)) > 0.3
    masks[2, 0:12, 40:56] = 1
    rois = np.array([[3, 4, 21, 31], [24.5, 9.2, 55, 39], [38, 0, 56, 13.7], [2, 2, 50, 35], [0, 0, 1, 1]], np.float32)
    gt_index = np.array([0, 1, 2, 1, 0], np.int32)
    positive = np.array([1, 1, 1, 1, 0], np.float32)
    labels = np.array([2, 0, 4, 4, 1], np.int32)
    got = np.asarray(jax.jit(targets.mask_targets)(masks, rois, gt_index))
    boxes = torch.cat([torch.arange(5, dtype=torch.float32)[:, None], torch.from_numpy(rois)], 1)
    cut = tv_roi_align(torch.from_numpy(masks[gt_index])[:, None], boxes, (28, 28), 1.0, 0, True)[:, 0]
    np.testing.assert_allclose(crop_and_resize(masks, gt_index, rois, 28), cut.numpy(), rtol=0, atol=1e-6)
    want = cut >= 0.5
    decided = np.abs(cut.numpy() - 0.5) > 1e-5  # a bin averaging to exactly one half may round either way
    np.testing.assert_array_equal(got[decided], want.numpy()[decided].astype(np.float32))
    assert 0 < got[:4].mean() < 1

    logits = rng.randn(5, 28, 28, 5).astype(np.float32)
    loss = targets.mask_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(got), jnp.asarray(positive))
    pred = torch.from_numpy(logits).permute(0, 3, 1, 2)[torch.arange(4), torch.from_numpy(labels[:4]).long()]
    want_loss = F.binary_cross_entropy_with_logits(pred.double(), torch.from_numpy(got[:4]).double(), reduction="mean")
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
