"""Mask R-CNN and Cascade Mask R-CNN end to end against mmdet 2.11's test path written out in PyTorch:
Hugging Face's SwinBackbone (the official detection backbone's function: padding before the shift, every
window kept, a LayerNorm per stage map), then mmdet's FPN, RPN and proposals, RoI extractor, box heads
(Cascade: refined between stages, scores averaged), get_bboxes + multiclass_nms and mask heads, each from
the reference functions of the part tests. Every tensor random, BatchNorm statistics too; two padded
image sizes that are not multiples of 32, with detections clipped to each image's own size."""

import json
import logging

import jax
import numpy as np
import pytest
import timm
import torch
from transformers import SwinBackbone, SwinConfig

import swin_jax
from swin_jax.convert import ConversionError, convert_state_dict, export_state_dict, fitting, load_pytorch_checkpoint
from swin_jax.models.detection.detectors import CASCADE_STDS, MASK_RCNN_STDS
from references import numpy_state, randomize
from test_detection_ops import mmdet_delta2bbox, nhwc, torch_fpn, torch_multilevel_roi_align
from test_roi_heads import mmdet_detect, randomise, torch_bbox_head, torch_mask_head, torch_tree
from test_rpn import mmdet_proposals, torch_head

ARCH = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
HEADS = dict(num_classes=5, channels=16, fc_channels=32, mask_channels=16, rpn_nms_pre=300, rpn_max_per_img=200,
             max_per_img=30)


def hf_backbone():
    torch.manual_seed(0)  # the weights `randomize` leaves to PyTorch's initialisation
    config = SwinConfig(image_size=64, **{k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()},
                        out_features=["stage1", "stage2", "stage3", "stage4"], hidden_act="gelu", layer_norm_eps=1e-5)
    return randomize(SwinBackbone(config)).eval()


def torch_detector(backbone, variables, pixels, image_hw, cascade, heads=HEADS):
    """mmdet's simple_test of one image, rescale off: (proposals, boxes, scores, labels, masks 28x28); `heads`
    holds the test configuration (rpn_nms_pre, rpn_max_per_img, max_per_img)."""
    p, stats = torch_tree(variables)["params"], torch_tree(variables).get("batch_stats", {})
    stds = CASCADE_STDS if cascade else MASK_RCNN_STDS
    suffix = (lambda k: f"_{k}") if cascade else (lambda k: "")
    with torch.no_grad():
        levels = torch_fpn(p["neck"], list(backbone(pixels).feature_maps))
        outs = torch_head(p["rpn_head"], levels)
        proposals, _ = mmdet_proposals(outs, [tuple(x.shape[2:]) for x in levels], image_hw, heads["rpn_nms_pre"],
                                       heads["rpn_max_per_img"], 0.7)
        rois, scores = torch.from_numpy(proposals), []
        for k, stage_stds in enumerate(stds):
            head = {"params": p[f"bbox_head{suffix(k)}"], "batch_stats": stats.get(f"bbox_head{suffix(k)}", {})}
            cls, reg = torch_bbox_head(head, torch_multilevel_roi_align(levels[:4], rois, 7), 4 if cascade else 0,
                                       1 if cascade else 2)
            scores.append(cls)
            if k < len(stds) - 1:  # regress_by_class
                label = cls[:, :-1].argmax(dim=1) * 4
                reg = torch.gather(reg, 1, torch.stack([label, label + 1, label + 2, label + 3], 1))
                rois = mmdet_delta2bbox(rois, reg, (0, 0, 0, 0), stage_stds, image_hw)
        boxes, det_scores, labels = mmdet_detect(rois, sum(scores) / len(scores), reg, image_hw, stds[-1], 0.05, 0.5,
                                                 heads["max_per_img"])
        features = torch_multilevel_roi_align(levels[:4], torch.from_numpy(boxes), 14)
        probabilities = sum(torch.sigmoid(torch_mask_head(p[f"mask_head{suffix(k)}"], features))
                            for k in range(len(stds))) / len(stds)
        masks = probabilities[torch.arange(len(labels)), torch.from_numpy(labels)]
    return proposals, boxes, det_scores, labels, masks.numpy()


@pytest.mark.parametrize("kind", ["mask_rcnn", "cascade_mask_rcnn"])
def test_detector_matches_mmdet_end_to_end(kind):
    backbone = hf_backbone()
    model = swin_jax.create_model(f"{kind}_swin_tiny_patch4_window7_224", img_size=64, **ARCH, **HEADS)
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 96, 3), np.float32))
    variables = randomise(shapes, scale=0.05)  # every tensor random: no initial values needed
    state = {k: v for k, v in numpy_state(backbone).items() if not k.startswith("swin.layernorm.")}  # built, never used
    variables["params"]["backbone"] = fitting.swin_params(state, model.backbone)["params"]
    assert jax.tree.structure(variables) == jax.tree.structure(shapes)
    forward = jax.jit(model.apply)
    for (h, w), padded in (((150, 217), (160, 224)), ((203, 164), (224, 192))):
        image = np.zeros((1, *padded, 3), np.float32)
        image[0, :h, :w] = np.random.RandomState(h).randn(h, w, 3)
        proposals, boxes, scores, labels, masks = torch_detector(backbone, variables,
                                                                 torch.from_numpy(image).permute(0, 3, 1, 2),
                                                                 (h, w), kind == "cascade_mask_rcnn")
        got = forward(variables, image, np.array([[h, w]], np.int32))
        count = len(scores)
        assert count == HEADS["max_per_img"] and bool(got["valid"].all()), count
        np.testing.assert_array_equal(got["labels"][0], labels)
        np.testing.assert_allclose(got["scores"][0], scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["boxes"][0], boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(got["masks"][0], masks, rtol=1e-5, atol=1e-5)
        assert float(np.asarray(got["boxes"])[..., 2].max()) <= w and float(np.asarray(got["boxes"])[..., 3].max()) <= h


def test_official_checkpoints_in_and_out(tmp_path):
    """Our variables exported as the official checkpoint (mmdet names, the official backbone layout with its
    buffers, BatchNorm counters) and read back bit for bit from a `meta` / `state_dict` / `optimizer`
    file; a Cascade file refused by a Mask R-CNN and the reverse, by name."""
    cascade = swin_jax.create_model("cascade_mask_rcnn_swin_tiny_patch4_window7_224", img_size=64, **ARCH, **HEADS)
    variables = randomise(jax.eval_shape(cascade.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32)))
    state = export_state_dict(variables, cascade)[0]
    assert state["roi_head.bbox_head.2.shared_convs.3.conv.weight"].shape == (16, 16, 3, 3)
    assert state["roi_head.bbox_head.0.shared_convs.0.bn.running_var"].shape == (16,)
    assert state["roi_head.bbox_head.1.shared_fcs.0.weight"].shape == (32, 16 * 49)
    assert state["roi_head.mask_head.0.upsample.weight"].shape == (16, 16, 2, 2)
    assert state["neck.lateral_convs.3.conv.weight"].shape == (16, 128, 1, 1)
    assert state["rpn_head.rpn_reg.weight"].shape == (12, 16, 1, 1)
    assert state["backbone.layers.0.downsample.reduction.weight"].shape == (32, 64)  # merging ends stage 0
    assert state["backbone.norm3.weight"].shape == (128,) and "backbone.norm.weight" not in state
    path = tmp_path / "cascade.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": {k: torch.from_numpy(v) for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    loaded = load_pytorch_checkpoint(path, cascade)
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(variables))

    mask_rcnn = swin_jax.create_model("mask_rcnn_swin_tiny_patch4_window7_224", img_size=64, **ARCH, **HEADS)
    with pytest.raises(ConversionError, match=r"holds a Cascade Mask R-CNN .*'cascade_mask_rcnn_'"):
        load_pytorch_checkpoint(path, mask_rcnn)
    small = randomise(jax.eval_shape(mask_rcnn.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32)))
    plain = export_state_dict(small, mask_rcnn)[0]
    with pytest.raises(ConversionError, match=r"holds a Mask R-CNN .*'mask_rcnn_'"):
        convert_state_dict(plain, cascade)
    plain["roi_head.bbox_head.fc_cls.weight"] = plain["roi_head.bbox_head.fc_cls.weight"][:4]
    del plain["neck.fpn_convs.0.conv.bias"]
    with pytest.raises(ConversionError, match=r"(?s)missing in the checkpoint \(1\):\n    neck.fpn_convs.0.conv.bias"
                                              r".*shape mismatch \(1\):\n    roi_head.bbox_head.fc_cls.weight"):
        convert_state_dict(plain, mask_rcnn)


def test_a_classifier_gives_the_backbone_of_a_fresh_detector(caplog):
    model = swin_jax.create_model("mask_rcnn_swin_tiny_patch4_window7_224", img_size=64, **ARCH, **HEADS)
    tm = randomize(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, **ARCH))
    with caplog.at_level(logging.WARNING):
        variables = convert_state_dict(numpy_state(tm), model)
    assert "classification checkpoint: the backbone comes from it" in caplog.text
    classifier = swin_jax.create_model("swin_tiny_patch4_window7_224", img_size=64, **ARCH)
    want = convert_state_dict(numpy_state(tm), classifier)["params"]
    for stage in ("patch_embed", "layers_0", "layers_2"):  # windows as large as the maps: the same tables
        jax.tree.map(np.testing.assert_array_equal, variables["params"]["backbone"][stage], want[stage])
    np.testing.assert_array_equal(variables["params"]["backbone"]["norm1"]["scale"], np.ones(32))
    with pytest.raises(ConversionError, match="holds no detector"):
        convert_state_dict(numpy_state(tm), model, require_heads=True)


def test_predict_draws_detections_and_writes_coco_results(tmp_path, capsys):
    """A converted detector directory: the test transform (120x90 at scale 400x240 -> 320x240, padded to
    320x256; the official 1333x800 gives 1067x800), boxes and masks back in the image's pixels, a PNG and
    COCO-format JSON; a bad image is named and nothing is written."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    from swin_jax import checkpoint
    from swin_jax.data import coco
    from swin_jax.predict import main as predict_main

    name, overrides = "mask_rcnn_swin_tiny_patch4_window7_224", dict(img_size=64, **ARCH, **HEADS)
    model = swin_jax.create_model(name, **overrides)
    variables = randomise(jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32)))
    checkpoint.save_pretrained(tmp_path / "det", variables, name, overrides)
    pixels = np.random.RandomState(0).randint(0, 256, (90, 120, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "7.png")
    out, results = tmp_path / "out.png", tmp_path / "results.json"
    assert predict_main(["--checkpoint", str(tmp_path / "det"), str(tmp_path / "7.png"), "--output", str(out),
                         "--json", str(results), "--score", "0", "--scale", "400", "240"]) == 0
    assert Image.open(out).size == (120, 90)
    rows = json.loads(results.read_text())
    assert len(rows) == HEADS["max_per_img"] and {r["image_id"] for r in rows} == {7}
    assert {r["category_id"] for r in rows} <= set(range(1, 6))

    assert coco.test_image(pixels)[1] == (800, 1067)
    x, hw, (sx, sy) = coco.test_image(pixels, (400, 240))
    assert x.shape == (256, 320, 3) and hw == (240, 320)
    want = jax.device_get(jax.jit(model.apply)(variables, x[None], np.array([hw], np.int32)))
    boxes = np.array([r["bbox"] for r in rows])
    np.testing.assert_allclose(boxes[:, :2], want["boxes"][0][:, :2] / [sx, sy], atol=0.01)
    np.testing.assert_allclose(boxes[:, 2:], (want["boxes"][0][:, 2:] - want["boxes"][0][:, :2]) / [sx, sy], atol=0.02)
    np.testing.assert_allclose([r["score"] for r in rows], want["scores"][0], atol=1e-5)
    masks = mask_utils.decode([r["segmentation"] for r in rows])
    assert masks.shape == (90, 120, len(rows)) and masks.any()

    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert predict_main(["--checkpoint", str(tmp_path / "det"), str(tmp_path / "broken.png"), "--json",
                         str(tmp_path / "none.json")]) == 1
    assert "broken.png: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "none.json").exists()


def test_names_and_parameter_counts():
    """The official configs' detectors, with the parameter counts of the official table (48M, 69M, 86M,
    107M, 145M); the exact figures are the sum of the official modules' tensors."""
    counts = {"mask_rcnn_swin_tiny_patch4_window7": 47_794_602, "mask_rcnn_swin_small_patch4_window7": 69_112_506,
              "cascade_mask_rcnn_swin_tiny_patch4_window7": 85_629_804,
              "cascade_mask_rcnn_swin_small_patch4_window7": 106_947_708,
              "cascade_mask_rcnn_swin_base_patch4_window7": 144_977_002}
    for name, count in counts.items():
        model = swin_jax.create_model(name)
        shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
        assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == count, name
    model = swin_jax.create_model("cascade_mask_rcnn_swin_base_patch4_window7")
    assert model.backbone.drop_path_rate == 0.3 and model.backbone.partition == "always" and model.cascade
    with pytest.raises(ValueError, match="unknown detector 'mask_rcnn_swin_tinny'"):
        swin_jax.create_model("mask_rcnn_swin_tinny")


def test_bad_checkpoints_are_named_and_nothing_is_written(tmp_path, capsys):
    from swin_jax.convert.__main__ import main as convert_main

    model = swin_jax.create_model("mask_rcnn_swin_tiny_patch4_window7_224", img_size=64, **ARCH, **HEADS)
    state = export_state_dict(randomise(jax.eval_shape(model.init, jax.random.key(0),
                                                       np.zeros((1, 64, 64, 3), np.float32))), model)[0]
    wider = swin_jax.create_model("mask_rcnn_swin_tiny_patch4_window7_224", img_size=64, **{**ARCH, "embed_dim": 32},
                                  **HEADS)
    with pytest.raises(ConversionError, match=r"(?s)\(backbone\).*does not fit.*embed_dim=16"):
        convert_state_dict(state, wider)
    with pytest.raises(ConversionError, match="holds a UPerNet segmenter"):
        convert_state_dict({"backbone.patch_embed.proj.weight": np.zeros((16, 3, 4, 4), np.float32),
                            "decode_head.conv_seg.weight": np.zeros((5, 8, 1, 1), np.float32)}, model)
    path = tmp_path / "det.pth"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(ConversionError, match="truncated.pth: not a readable PyTorch checkpoint"):
        load_pytorch_checkpoint(truncated, model)
    assert convert_main(["--model", "mask_rcnn_swin_tiny_patch4_window7", "--checkpoint", str(truncated), "--output",
                         str(tmp_path / "out")]) == 1
    assert "truncated.pth" in capsys.readouterr().err and not (tmp_path / "out").exists()
