"""Mask R-CNN and Cascade Mask R-CNN training losses, and the gradient of their sum with respect to every
parameter, against mmdet 2.11's TwoStageDetector.forward_train written out in PyTorch (float32, autograd)
with the official Swin train_cfg: the same weights (a random Hugging Face SwinBackbone, every other tensor
random), the same batch, and the same random draws.

The PyTorch side is mmdet's, step by step: AnchorHead.get_targets (valid_flags of each image's padded
size, anchor_inside_flags with allowed_border, MaxIoUAssigner) and RPNHead.loss; the proposals of
RPNHead.get_bboxes on the detached outputs (train_cfg.rpn_proposal); per box stage MaxIoUAssigner on the
proposals, add_gt_as_proposals, BBoxHead.get_targets and loss (Cascade: reg_decoded_bbox, GIoULoss x 10,
the 4conv1fc head's BatchNorm on the sampled RoIs' batch statistics), FCNMaskHead.get_targets (each image's
masks at its padded size, BitmapMasks.crop_and_resize) and loss, CascadeRoIHead's refine_bboxes and stage
loss weights. RandomSampler's draws are ours: every image's sampled anchors and RoIs are read from the
model's `intermediates` and checked to be a legal draw of mmdet's own assignment (positives among its
positives, min(#positive, cap) of them; negatives among its negatives, as many as RandomSampler takes),
then PyTorch uses them.
"""

import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import swin_jax
from swin_jax.convert import fitting
from swin_jax.models.detection.detectors import CASCADE_STDS, MASK_RCNN_STDS
from references import numpy_state
from test_detection_ops import mmdet_anchors, mmdet_delta2bbox, torch_fpn, torch_multilevel_roi_align
from test_detectors import ARCH, HEADS, hf_backbone
from test_roi_heads import torch_tree
from test_rpn import mmdet_proposals, torch_head
from test_targets import mmdet_assign, torch_bbox2delta, torch_giou

# train_cfg, shrunk to the test's size: rpn_proposal nms_pre / max_per_img, rcnn sampler num (256 RPN samples
# as the configs); pos_fraction 0.5 (RPN) and 0.25 (RCNN) as the configs.
TRAIN = dict(rpn_train_nms_pre=300, rpn_train_max_per_img=100, rcnn_samples=64)
RPN_ASSIGNER = dict(pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3, match_low_quality=True)
RPN_SAMPLER = dict(num=256, pos_fraction=0.5)
ANCHOR_STRIDES = (4, 8, 16, 32, 64)  # anchor_generator.strides
# The Cascade samples 128 RoIs per image, more than there are candidates for: slots left unsampled, which
# its heads' BatchNorm must leave out of its batch statistics as mmdet's batch of sampled RoIs does.
CASCADE_SAMPLES = 128
# the official configs' roi_head (configs/_base_/models/mask_rcnn_swin_fpn.py, cascade_mask_rcnn_swin_fpn.py,
# configs/swin/cascade_*giou_4conv1f*: reg_decoded_bbox with GIoULoss(loss_weight=10), SyncBN 4conv1fc heads)
MMDET = {
    "mask_rcnn": dict(allowed_border=-1, stds=MASK_RCNN_STDS, loss_weights=(1.0,), giou=0.0, convs=0, fcs=2,
                      assigners=[dict(pos_iou=0.5, neg_iou=0.5, min_pos_iou=0.5, match_low_quality=True)]),
    "cascade_mask_rcnn": dict(allowed_border=0, stds=CASCADE_STDS, loss_weights=(1.0, 0.5, 0.25), giou=10.0,
                              convs=4, fcs=1, assigners=[dict(pos_iou=t, neg_iou=t, min_pos_iou=t,
                                                              match_low_quality=False) for t in (0.5, 0.6, 0.7)]),
}


def batch():
    """Two images of different sizes (90x121 and 61x90; padded to 96x128 and 64x96 each, as mmdet's Pad
    with size_divisor 32, and to 96x128 together); several generous boxes per image, one padded slot;
    elliptic instance masks inside the boxes, at the batch's padded size."""
    height, width = 96, 128
    image_hw = np.array([[90, 121], [61, 90]], np.int32)
    images = np.random.RandomState(0).randn(2, height, width, 3).astype(np.float32)
    for i, (h, w) in enumerate(image_hw):
        images[i, h:], images[i, :, w:] = 0.0, 0.0
    gt_boxes = np.array([[[5, 8, 60, 70], [40, 20, 118, 85], [10, 50, 50, 88], [2, 1, 119, 89]],
                         [[3, 4, 50, 55], [30, 10, 85, 58], [1, 2, 89, 60], [0, 0, 0, 0]]], np.float32)
    gt_valid = np.array([[True, True, True, True], [True, True, True, False]])
    gt_labels = np.array([[0, 3, 1, 4], [2, 2, 0, 0]], np.int32)
    masks = np.zeros((2, 4, height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width] + 0.5
    for i, g in zip(*np.nonzero(gt_valid)):
        x1, y1, x2, y2 = gt_boxes[i, g]
        masks[i, g] = ((xx - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2 + ((yy - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 <= 1
    return images, image_hw, dict(gt_boxes=gt_boxes, gt_labels=gt_labels, gt_valid=gt_valid, gt_masks=masks)


def randomised(shapes, seed=0, scale=0.05):
    """`test_roi_heads.randomise`'s rules (BatchNorm variances in 0.5..1.5, scales around 1, the rest `scale`
    * N(0, 1)) drawn by NumPy: eager jax.random compiles a program per tensor shape, half a minute here."""
    rng = np.random.RandomState(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            return (0.5 + rng.uniform(size=leaf.shape)).astype(np.float32)
        if "'scale'" in name:
            return (1.0 + 0.2 * rng.randn(*leaf.shape)).astype(np.float32)
        return (scale * rng.randn(*leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def padded_hw(hw):
    """mmdet's Pad(size_divisor=32): an image's own pad_shape."""
    return tuple(int(math.ceil(s / 32) * 32) for s in hw)


def anchor_inside_flags(level_hw, pad_hw, img_hw, allowed_border):
    """AnchorGenerator.valid_flags of an image's pad_shape on every level (each cell's flag for its 3 base
    anchors), then anchor_inside_flags against its img_shape."""
    flags = []
    for (h, w), stride in zip(level_hw, ANCHOR_STRIDES):
        valid_h, valid_w = min(math.ceil(pad_hw[0] / stride), h), min(math.ceil(pad_hw[1] / stride), w)
        cells = (np.arange(h)[:, None] < valid_h) & (np.arange(w)[None, :] < valid_w)
        flags.append(np.repeat(cells.reshape(-1), 3))
    anchors = np.concatenate([mmdet_anchors(hw, s) for hw, s in zip(level_hw, ANCHOR_STRIDES)])
    flags = np.concatenate(flags)
    if allowed_border >= 0:
        b = allowed_border
        flags &= ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < img_hw[1] + b)
                  & (anchors[:, 3] < img_hw[0] + b))
    return anchors, flags


def legal_sample(what, pos, neg, assigned, num, pos_fraction):
    """Whether our draw (candidate positions in mmdet's numbering) is one RandomSampler could make from
    mmdet's assignment `assigned`: returns them sorted, as SamplingResult keeps them (torch.unique)."""
    pos, neg = np.asarray(pos, np.int64), np.asarray(neg, np.int64)
    positives, negatives = np.nonzero(assigned > 0)[0], np.nonzero(assigned == 0)[0]
    assert len(np.unique(pos)) == len(pos) and len(np.unique(neg)) == len(neg), what
    assert np.isin(pos, positives).all(), f"{what}: a sampled positive is not positive in mmdet's assignment"
    assert np.isin(neg, negatives).all(), f"{what}: a sampled negative is not negative in mmdet's assignment"
    assert len(pos) == min(len(positives), int(num * pos_fraction)), (what, len(pos), len(positives))
    assert len(neg) == min(len(negatives), num - len(pos)), (what, len(neg), len(negatives))
    return np.sort(pos), np.sort(neg)


def mmdet_rpn_loss(outs, level_hw, image_hw, gt_boxes, gt_valid, allowed_border, ours):
    """RPNHead.forward_train's losses (AnchorHead.get_targets + loss) on our sampled anchors; returns
    (loss_rpn_cls, loss_rpn_bbox, positives per image)."""
    num = len(image_hw)
    cls = torch.cat([c.permute(0, 2, 3, 1).reshape(num, -1) for c, _ in outs], 1)
    reg = torch.cat([r.permute(0, 2, 3, 1).reshape(num, -1, 4) for _, r in outs], 1)
    loss_cls, loss_bbox, avg_factor, positives = 0.0, 0.0, 0, []
    for i in range(num):
        anchors, inside = anchor_inside_flags(level_hw, padded_hw(image_hw[i]), image_hw[i], allowed_border)
        gts = gt_boxes[i][gt_valid[i]]
        assigned, _ = mmdet_assign(anchors[inside], gts, **RPN_ASSIGNER)
        ours_pos = np.nonzero(ours["objectness"][i] > 0)[0]
        ours_neg = np.nonzero((ours["weight"][i] > 0) & (ours["objectness"][i] == 0))[0]
        assert inside[ours_pos].all() and inside[ours_neg].all(), "an anchor outside the image was sampled"
        position = np.cumsum(inside) - 1  # an inside anchor's place among the inside ones
        pos, neg = legal_sample(f"rpn image {i}", position[ours_pos], position[ours_neg], assigned, **RPN_SAMPLER)
        pos_anchors, neg_anchors = np.nonzero(inside)[0][pos], np.nonzero(inside)[0][neg]
        labels = torch.zeros(len(anchors))
        labels[pos_anchors] = 1.0  # label 0 (foreground) -> sigmoid target 1
        label_weights = torch.zeros(len(anchors))
        label_weights[np.concatenate([pos_anchors, neg_anchors])] = 1.0
        targets = torch_bbox2delta(anchors[pos_anchors], gts[assigned[pos] - 1]).float()
        loss_cls = loss_cls + (F.binary_cross_entropy_with_logits(cls[i], labels, reduction="none")
                               * label_weights).sum()
        loss_bbox = loss_bbox + (reg[i, pos_anchors] - targets).abs().sum()
        avg_factor += max(len(pos), 1) + max(len(neg), 1)
        positives.append(len(pos))
    return loss_cls / avg_factor, loss_bbox / avg_factor, positives


def torch_bbox_head_train(v, x, num_convs, num_fcs):
    """ConvFCBBoxHead.forward in training: (Sync)BatchNorm on the batch statistics of these RoIs, its
    running statistics updated (momentum 0.1, unbiased variance); returns (cls, reg, running statistics)."""
    p, s = v["params"], v.get("batch_stats", {})
    running = {}
    for i in range(num_convs):
        c, name = p[f"shared_convs_{i}"], f"shared_convs_{i}"
        x = F.conv2d(x, c["conv"]["kernel"].permute(3, 2, 0, 1), padding=1)
        mean, var = s[name]["bn"]["mean"].clone(), s[name]["bn"]["var"].clone()
        x = F.relu(F.batch_norm(x, mean, var, c["bn"]["scale"], c["bn"]["bias"], True, 0.1, 1e-5))
        running[name] = {"bn": {"mean": mean, "var": var}}
    x = x.flatten(1)
    for i in range(num_fcs):
        x = F.relu(F.linear(x, p[f"shared_fcs_{i}"]["kernel"].T, p[f"shared_fcs_{i}"]["bias"]))
    return (F.linear(x, p["fc_cls"]["kernel"].T, p["fc_cls"]["bias"]),
            F.linear(x, p["fc_reg"]["kernel"].T, p["fc_reg"]["bias"]), running)


def torch_mask_head(p, x):
    """FCNMaskHead.forward (test_roi_heads' reference) with the upsampling's bias added after the transposed
    convolution: the same function, but autograd sums that bias's gradient (about 2e4 terms per channel here)
    with torch's pairwise reduction. conv_transpose2d's own float32 accumulation of it strays by 5e-5 of the
    largest gradient from the float64 sum of the very same terms (ours: 7e-8)."""
    for i in range(4):
        x = F.relu(F.conv2d(x, p[f"convs_{i}"]["conv"]["kernel"].permute(3, 2, 0, 1), p[f"convs_{i}"]["conv"]["bias"],
                            padding=1))
    x = F.conv_transpose2d(x, p["upsample"]["kernel"].permute(2, 3, 0, 1), stride=2)
    x = F.relu(x + p["upsample"]["bias"][None, :, None, None])
    return F.conv2d(x, p["conv_logits"]["kernel"].permute(3, 2, 0, 1), p["conv_logits"]["bias"])


def mmdet_decode(rois, deltas, stds):
    """DeltaXYWHBBoxCoder.decode without max_shape (reg_decoded_bbox's loss input), float32."""
    d = deltas * deltas.new_tensor(stds)
    clip = abs(np.log(16 / 1000))
    px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
    pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    gw, gh = pw * d[:, 2].clamp(-clip, clip).exp(), ph * d[:, 3].clamp(-clip, clip).exp()
    gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
    return torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], 1)


def mmdet_roi_losses(levels, variables, proposal_list, image_hw, targets, cfg, ours, num_classes):
    """StandardRoIHead / CascadeRoIHead.forward_train on our draws: per stage the losses (weighted), the
    heads' updated running statistics, and how many sampled positives came from proposals per image."""
    p, stats = variables["params"], variables.get("batch_stats", {})
    cascade = len(cfg["stds"]) > 1
    gt_boxes, gt_labels, gt_valid, gt_masks = (targets[k] for k in ("gt_boxes", "gt_labels", "gt_valid", "gt_masks"))
    num_gt_slots = gt_boxes.shape[1]
    # our candidates after the ground truth: the proposal slots (stage 0), the previous stage's RoI slots
    # (later stages), then any padding; each one's place in mmdet's proposal_list of the image, -1 where none
    slots = np.arange(TRAIN["rpn_train_max_per_img"])
    slot_place = [np.where(slots < len(x), slots, -1) for x in proposal_list]
    losses, running, from_proposals = {}, {}, []
    for k, (stds, assigner, weight) in enumerate(zip(cfg["stds"], cfg["assigners"], cfg["loss_weights"])):
        suffix = f"_{k}" if cascade else ""
        t = ours[f"rcnn_targets{suffix}"]
        rois, labels, pos_rows, targets_, is_gt, mask_rois, mask_labels, mask_targets, next_place = \
            [], [], [], [], [], [], [], [], []
        from_proposals.append([])
        for i in range(len(image_hw)):
            gi = np.nonzero(gt_valid[i])[0]
            gts = gt_boxes[i][gi]
            candidates = np.concatenate([gts, proposal_list[i]])
            assigned_proposals, _ = mmdet_assign(proposal_list[i], gts, **assigner)
            assigned = np.concatenate([np.arange(1, len(gi) + 1), assigned_proposals])  # add_gt_as_proposals
            gt_place = np.full(num_gt_slots, -1)
            gt_place[gi] = np.arange(len(gi))
            index = t["index"][i]  # 0..G-1 a ground-truth slot, then our candidate slots
            other = np.pad(slot_place[i], (0, len(index)), constant_values=-1)[np.maximum(index - num_gt_slots, 0)]
            place = np.where(index < num_gt_slots, gt_place[np.minimum(index, num_gt_slots - 1)],
                             np.where(other >= 0, len(gi) + other, -1))  # in mmdet's [gt_bboxes; proposals]
            sampled, positive = t["sampled"][i], t["positive"][i]
            assert (place[sampled] >= 0).all(), f"stage {k} image {i}: a padded candidate was sampled"

            pos, neg = legal_sample(f"stage {k} image {i}", place[positive], place[sampled & ~positive], assigned,
                                    len(t["sampled"][i]), 0.25)
            np.testing.assert_allclose(t["rois"][i][sampled], candidates[place[sampled]], rtol=1e-5, atol=1e-4)
            from_proposals[-1].append(int((pos >= len(gi)).sum()))
            rows = np.concatenate([pos, neg])  # SamplingResult.bboxes: positives, then negatives
            pos_gt = assigned[pos] - 1
            rois.append(torch.from_numpy(candidates[rows]))
            labels.append(torch.from_numpy(np.concatenate([gt_labels[i][gi][pos_gt], np.full(len(neg), num_classes)])))
            pos_rows.append(np.arange(len(rows)) < len(pos))
            if cfg["giou"]:
                targets_.append(torch.from_numpy(gts[pos_gt]))
            else:
                deltas = torch_bbox2delta(candidates[pos], gts[pos_gt]) / torch.tensor(stds, dtype=torch.float64)
                targets_.append(deltas.float())
            is_gt.append(np.concatenate([pos < len(gi), np.zeros(len(neg), bool)]))  # pos_is_gt
            # FCNMaskHead.get_targets: the masks at the image's pad_shape, boxes clipped to it, RoIAlign 28x28
            ph, pw = padded_hw(image_hw[i])
            masks = torch.from_numpy(gt_masks[i][gi][pos_gt][:, :ph, :pw]).float()[:, None]
            boxes = np.clip(candidates[pos], 0, [pw, ph, pw, ph]).astype(np.float32)
            cut = torchvision.ops.roi_align(masks, torch.cat([torch.arange(len(pos))[:, None].float(),
                                                              torch.from_numpy(boxes)], 1), 28, 1.0, 0, True)[:, 0]
            # the two RoIAligns agree to 1e-6 (test_targets): no pixel so close to the threshold that they could split
            assert float((cut - 0.5).abs().min()) > 1e-5, f"stage {k} image {i}: a mask target pixel at 0.5"
            mask_rois.append(rois[-1][:len(pos)])
            mask_labels.append(labels[-1][:len(pos)])
            mask_targets.append((cut >= 0.5).float())
            # refine_bboxes keeps the rows that are not ground truth, in order: our slots' places in the next list
            row_of = np.full(len(candidates), -1)
            row_of[rows] = np.arange(len(rows))
            kept = np.cumsum(~is_gt[-1]) - 1
            slot_rows = np.where(sampled, row_of[np.maximum(place, 0)], -1)
            row = np.maximum(slot_rows, 0)
            next_place.append(np.where((slot_rows >= 0) & ~is_gt[-1][row], kept[row], -1))

        head = {"params": p[f"bbox_head{suffix}"], "batch_stats": stats.get(f"bbox_head{suffix}", {})}
        features = torch.cat([torch_multilevel_roi_align([x[i:i + 1] for x in levels[:4]], r, 7)
                              for i, r in enumerate(rois)])
        cls, reg, running[f"bbox_head{suffix}"] = torch_bbox_head_train(head, features, cfg["convs"], cfg["fcs"])
        all_labels, all_pos = torch.cat(labels), torch.from_numpy(np.concatenate(pos_rows))
        avg_factor = len(all_labels)  # label_weights > 0: every sampled RoI; bbox_targets.size(0) the same
        loss_cls = F.cross_entropy(cls, all_labels, reduction="sum") / avg_factor
        pred = reg.view(avg_factor, -1, 4)[all_pos, all_labels[all_pos]]
        if cfg["giou"]:
            decoded = mmdet_decode(torch.cat(rois)[all_pos], pred, stds)
            loss_bbox = cfg["giou"] * (1 - torch_giou(decoded, torch.cat(targets_))).sum() / avg_factor
        else:
            loss_bbox = (pred - torch.cat(targets_)).abs().sum() / avg_factor
        mask_features = torch.cat([torch_multilevel_roi_align([x[i:i + 1] for x in levels[:4]], r, 14)
                                   for i, r in enumerate(mask_rois)])
        mask_logits = torch_mask_head(p[f"mask_head{suffix}"], mask_features)
        mask_pred = mask_logits[torch.arange(len(mask_features)), torch.cat(mask_labels)]
        loss_mask = F.binary_cross_entropy_with_logits(mask_pred, torch.cat(mask_targets), reduction="mean")
        prefix = f"s{k}." if cascade else ""
        losses.update({f"{prefix}loss_cls": weight * loss_cls, f"{prefix}loss_bbox": weight * loss_bbox,
                       f"{prefix}loss_mask": weight * loss_mask})
        if k < len(cfg["stds"]) - 1:  # refine_bboxes: regress_by_class with the label, negatives their argmax
            with torch.no_grad():
                roi_labels = torch.where(all_labels == num_classes, cls[:, :-1].argmax(1), all_labels)
                start, refined = 0, []
                for i, r in enumerate(rois):
                    label = roi_labels[start:start + len(r)] * 4
                    deltas = torch.gather(reg[start:start + len(r)], 1,
                                          torch.stack([label, label + 1, label + 2, label + 3], 1))
                    boxes = mmdet_delta2bbox(r, deltas, (0, 0, 0, 0), stds, tuple(image_hw[i]))
                    refined.append(boxes[torch.from_numpy(~is_gt[i])].numpy())
                    start += len(r)
            proposal_list, slot_place = refined, next_place
    return losses, {k: v for k, v in running.items() if v}, from_proposals


def mmdet_forward_train(backbone, variables, images, image_hw, targets, cfg, ours, num_classes):
    """TwoStageDetector.forward_train: the losses by mmdet's names, the heads' running statistics, the
    positives per image (RPN, and from proposals per stage)."""
    p = variables["params"]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    levels = torch_fpn(p["neck"], list(backbone(pixels).feature_maps))
    outs = torch_head(p["rpn_head"], levels)
    level_hw = [tuple(x.shape[2:]) for x in levels]
    loss_rpn_cls, loss_rpn_bbox, rpn_positives = mmdet_rpn_loss(
        outs, level_hw, image_hw, targets["gt_boxes"], targets["gt_valid"], cfg["allowed_border"], ours["rpn_targets"])
    proposal_list = [mmdet_proposals([(c[i:i + 1].detach(), r[i:i + 1].detach()) for c, r in outs], level_hw,
                                      tuple(image_hw[i]), TRAIN["rpn_train_nms_pre"], TRAIN["rpn_train_max_per_img"],
                                      0.7)[0] for i in range(len(images))]
    losses, running, from_proposals = mmdet_roi_losses(levels, variables, proposal_list, image_hw, targets, cfg, ours,
                                                       num_classes)
    losses = dict(loss_rpn_cls=loss_rpn_cls, loss_rpn_bbox=loss_rpn_bbox, **losses)
    return losses, running, rpn_positives, from_proposals


@pytest.mark.parametrize("kind", ["mask_rcnn", "cascade_mask_rcnn"])
def test_training_losses_and_gradients_match_mmdet(kind):
    """Every loss of forward_train to 1e-5, the gradient of their sum with respect to every parameter
    (backbone, neck, RPN, box and mask heads) to 1e-4 of each tensor's largest gradient, and the Cascade
    heads' BatchNorm running statistics after the step. Positives are drawn from the proposals at every
    stage, so each loss has terms that depend on the sampled RoIs."""
    cfg = MMDET[kind]
    backbone = hf_backbone()
    model = swin_jax.create_model(f"{kind}_swin_tiny_patch4_window7_224", img_size=64, **ARCH, **HEADS,
                                  **dict(TRAIN, rcnn_samples=CASCADE_SAMPLES if kind != "mask_rcnn" else 64),
                                  drop_path_rate=0.0)  # HF's eval backbone: no stochastic depth
    assert model.rpn_allowed_border == cfg["allowed_border"] and model.giou_weight == cfg["giou"]
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 96, 3), np.float32))
    variables = randomised(shapes, scale=0.05)
    state = {k: v for k, v in numpy_state(backbone).items() if not k.startswith("swin.layernorm.")}  # built, never used
    variables["params"]["backbone"] = fitting.swin_params(state, model.backbone)["params"]
    images, image_hw, targets = batch()

    def total(params, images):
        losses, state = model.apply({**variables, "params": params}, images, image_hw, train=True, targets=targets,
                                    rngs={"sampling": jax.random.key(1), "dropout": jax.random.key(2)},
                                    mutable=["intermediates", "batch_stats"])
        return sum(losses.values()), (losses, state)

    step = jax.jit(jax.value_and_grad(total, has_aux=True))
    (_, (losses, new_state)), grads = step(variables["params"], images)
    # Our gradient again with the pixels moved by 1e-6: what float32 rounding alone can move it by. A box
    # discrete choice on a float32 knife edge (an argmax, a max / min inside the GIoU) flips with it.
    _, nudged = step(variables["params"], images + 1e-6 * np.random.RandomState(5).randn(*images.shape).astype(np.float32))
    ours = {k: jax.tree.map(np.asarray, v[0]) for k, v in new_state["intermediates"].items()  # sown: 1-tuples
            if k.startswith(("rpn_", "rcnn_"))}

    torch_variables = torch_tree(variables)
    want, running, rpn_positives, from_proposals = mmdet_forward_train(
        backbone, torch_variables, images, image_hw, targets, cfg, ours, HEADS["num_classes"])
    print(f"positive anchors per image {rpn_positives}, positive RoIs from proposals per stage and image "
          f"{from_proposals}")
    assert min(rpn_positives) > 0 and all(min(n) > 0 for n in from_proposals), (rpn_positives, from_proposals)
    unsampled = [int((~t["sampled"]).sum()) for name, t in ours.items() if name.startswith("rcnn_")]
    assert kind == "mask_rcnn" or min(unsampled) > 0, unsampled  # slots the heads' BatchNorm statistics leave out
    assert sorted(losses) == sorted(want)
    for name, value in want.items():
        got, value = float(losses[name]), float(value.detach())
        print(f"{name}: ours {got:.7g}, mmdet {value:.7g}, error {abs(got - value):.1e} "
              f"(relative {abs(got - value) / value:.1e})")
        np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=name)
    running = jax.tree.map(lambda t: t.numpy(), running)  # the Cascade's BatchNorm: statistics of the same RoIs
    batch_stats = dict(new_state.get("batch_stats", {}))
    assert jax.tree.structure(running) == jax.tree.structure(batch_stats) and bool(running) == (kind != "mask_rcnn")
    for (path, got), w in zip(jax.tree.flatten_with_path(batch_stats)[0], jax.tree.leaves(running)):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))

    sum(want.values()).backward()
    # the backbone's gradient through the same renaming as its weights (a rearrangement of elements)
    grad_state = {k: (t.grad if t.grad is not None else torch.zeros_like(t)).numpy()
                  for k, t in backbone.named_parameters() if not k.startswith("swin.layernorm.")}
    want_grads = dict(torch_variables["params"], backbone=fitting.swin_params({**state, **grad_state},
                                                                               model.backbone)["params"])
    want_grads = {k: jax.tree.map(lambda t: t.grad.numpy() if isinstance(t, torch.Tensor) else t, v)
                  for k, v in want_grads.items()}
    assert jax.tree.structure(want_grads) == jax.tree.structure(grads)
    # Each tensor to 1e-4 of its largest gradient: float32 backpropagation through some thirty layers and
    # sums over thousands of RoI pixels, summed in other orders on each side (the largest error seen is
    # 7e-6 of a tensor's largest gradient); a path lost, doubled or misweighted moves whole tensors. Where
    # our own gradient moves under the 1e-6 nudge, twice that movement is allowed on top: in the Cascade
    # here the last stage sits on such an edge (its head's gradient moves by 4.7e-3, the other heads' by
    # 5e-7, the mmdet difference is the same 4.7e-3), and what flows from it into the neck and backbone
    # moves by up to 9e-4.
    worst, unused, sensitive = {}, [], {}
    for (path, got), w, moved in zip(jax.tree.flatten_with_path(grads)[0], jax.tree.leaves(want_grads),
                                     jax.tree.leaves(nudged)):
        name, scale = jax.tree_util.keystr(path), float(np.abs(w).max())
        if scale == 0:  # no gradient in mmdet either: see `unused` below
            np.testing.assert_array_equal(got, 0.0, err_msg=name)
            unused.append(name)
            continue
        worst[name] = float(np.abs(np.asarray(got) - w).max()) / scale
        noise = float(np.abs(np.asarray(got) - np.asarray(moved)).max()) / scale
        if noise > 1e-4:
            sensitive[name] = noise
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=(1e-4 + 2 * noise) * scale, err_msg=name)
    largest = sorted(worst, key=worst.get)[-4:][::-1]
    print(f"gradients: {len(worst)} tensors; largest errors relative to the tensor's largest gradient: "
          + ", ".join(f"{name} {worst[name]:.1e}" for name in largest) + f"; zero on both sides: {unused}; "
          f"{len(sensitive)} tensors moved beyond 1e-4 by the 1e-6 nudge, at most "
          f"{max(sensitive.values(), default=0.0):.1e}")
    assert max(sensitive.values(), default=0.0) < 1e-2  # a tie's flip, not a tolerance that passes anything
    # The Cascade's anchors of strides 16 to 64 (90 pixels and up, allowed_border 0) never lie inside these
    # images, and no RoI is large enough for the stride-16 or -32 level: those FPN outputs have no loss.
    assert unused == ([] if kind == "mask_rcnn" else
                      [f"['neck']['fpn_convs_{i}']['conv']['{p}']" for i in (2, 3) for p in ("bias", "kernel")])
