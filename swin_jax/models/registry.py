"""timm's model names -> hyper-parameters, and the factory (Swin V1 and V2)."""

from __future__ import annotations

import difflib

from swin_jax.models.detection.detectors import CASCADE_STDS, TwoStageDetector
from swin_jax.models.swin import Swin, SwinTransformer, config_fields
from swin_jax.models.simmim import SimMIM
from swin_jax.models.swin_v2 import SwinTransformerV2
from swin_jax.models.upernet import UPerNet

_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))

MODELS: dict[str, dict] = {
    "swin_tiny_patch4_window7_224": dict(img_size=224, window_size=7, drop_path_rate=0.2, **_T),
    "swin_small_patch4_window7_224": dict(img_size=224, window_size=7, drop_path_rate=0.3, **_S),
    "swin_base_patch4_window7_224": dict(img_size=224, window_size=7, drop_path_rate=0.5, **_B),
    "swin_base_patch4_window12_384": dict(img_size=384, window_size=12, drop_path_rate=0.5, **_B),
    "swin_large_patch4_window7_224": dict(img_size=224, window_size=7, drop_path_rate=0.5, **_L),
    "swin_large_patch4_window12_384": dict(img_size=384, window_size=12, drop_path_rate=0.5, **_L),
}

# Swin V2, timm's names and hyper-parameters (drop path 0.1 is timm's default for every V2 model; the
# training configs set the official rates). The 192 models are the ImageNet-22K pre-trained ones (21841
# classes, as timm); the "12toN" models were fine-tuned from them and keep their pre-training window.
_PRETRAINED_12 = dict(pretrained_window_sizes=(12, 12, 12, 6))
V2_MODELS: dict[str, dict] = {
    "swinv2_tiny_window8_256": dict(img_size=256, window_size=8, **_T),
    "swinv2_tiny_window16_256": dict(img_size=256, window_size=16, **_T),
    "swinv2_small_window8_256": dict(img_size=256, window_size=8, **_S),
    "swinv2_small_window16_256": dict(img_size=256, window_size=16, **_S),
    "swinv2_base_window8_256": dict(img_size=256, window_size=8, **_B),
    "swinv2_base_window16_256": dict(img_size=256, window_size=16, **_B),
    "swinv2_base_window12_192": dict(img_size=192, window_size=12, num_classes=21841, **_B),
    "swinv2_base_window12to16_192to256": dict(img_size=256, window_size=16, **_PRETRAINED_12, **_B),
    "swinv2_base_window12to24_192to384": dict(img_size=384, window_size=24, **_PRETRAINED_12, **_B),
    "swinv2_large_window12_192": dict(img_size=192, window_size=12, num_classes=21841, **_L),
    "swinv2_large_window12to16_192to256": dict(img_size=256, window_size=16, **_PRETRAINED_12, **_L),
    "swinv2_large_window12to24_192to384": dict(img_size=384, window_size=24, **_PRETRAINED_12, **_L),
}
for _config in V2_MODELS.values():
    _config["drop_path_rate"] = 0.1
MODELS.update(V2_MODELS)


def model_class(name: str) -> type:
    """SwinTransformerV2 for the V2 names, SwinTransformer for the others."""
    return SwinTransformerV2 if name in V2_MODELS else SwinTransformer


def close_names(name: str, n: int = 3) -> list[str]:
    """Registered names a shortened `name` may mean (those it begins, e.g. 'swin_tiny'), or else the
    ones most similar to a misspelt one."""
    starting = [m for m in sorted(MODELS) if m.startswith(name)]
    return starting[:n] or difflib.get_close_matches(name, MODELS, n=n, cutoff=0.5)


def model_config(name: str, **overrides) -> dict:
    """The keyword arguments `create_model(name, **overrides)` builds the model with."""
    if name not in MODELS:
        close = close_names(name)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name {name!r}.{hint} Known models: {', '.join(sorted(MODELS))}")
    fields = config_fields(model_class(name))
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name}; options are {sorted(fields)}")
    return {**MODELS[name], **overrides}


# UPerNet segmenters: "upernet_" + any backbone name, and the official ADE20K configs of the Swin
# semantic-segmentation code (configs/swin/upernet_swin_*_512x512_160k_ade20k.py: window 7, drop path
# 0.3; Swin-L, which has no config there, as Hugging Face's openmmlab/upernet-swin-large: the 22K window-12
# backbone, drop path 0.3).
SEGMENTER_PREFIX = "upernet_"
SEGMENTERS: dict[str, tuple[str, dict]] = {
    "upernet_swin_tiny": ("swin_tiny_patch4_window7_224", dict(drop_path_rate=0.3)),
    "upernet_swin_small": ("swin_small_patch4_window7_224", dict(drop_path_rate=0.3)),
    "upernet_swin_base": ("swin_base_patch4_window7_224", dict(drop_path_rate=0.3)),
    "upernet_swin_large": ("swin_large_patch4_window12_384", dict(drop_path_rate=0.3)),
}
SEGMENTER_FIELDS = ("num_classes", "channels", "pool_scales", "auxiliary_channels", "auxiliary_in_index",
                    "dropout_rate", "conv_impl")


def composite_backbone(name: str, prefix: str, named: dict[str, tuple[str, dict]], what: str) -> tuple[str, dict]:
    """The backbone name and its hyper-parameter overrides of a model built on a Swin: one of `named` (the
    official configs' short names), or `prefix` + a registered backbone name."""
    if name in named:
        return named[name]
    backbone = name[len(prefix):]
    if backbone not in MODELS:
        close = [prefix + m for m in close_names(backbone)] + [m for m in named if m.startswith(name)]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown {what} {name!r}: {prefix!r} + a backbone name or one of "
                         f"{', '.join(named)}.{hint}")
    return backbone, {}


def head_overrides(overrides: dict, fields: tuple[str, ...]) -> dict:
    """Takes the heads' `fields` out of `overrides`; dtype and param_dtype go to both."""
    heads = {k: overrides.pop(k) for k in fields if k in overrides}
    heads.update({k: overrides[k] for k in ("dtype", "param_dtype") if k in overrides})
    return heads


def dense_backbone(name: str, overrides: dict) -> Swin:
    """The Swin `name` as the dense heads' backbone: its four stage maps, V1 each through its own norm with
    every window kept (the official detection and segmentation backbone, Hugging Face's SwinBackbone), V2 as
    Hugging Face's Swinv2Backbone."""
    config = model_config(name, **overrides)
    v1 = model_class(name) is SwinTransformer
    config.update(num_classes=0, out_indices=tuple(range(len(config["depths"]))), out_norm=v1,
                  partition="always" if v1 else "per_img_size")
    return model_class(name)(**config)


def create_segmenter(name: str, num_classes: int = 150, **overrides) -> UPerNet:
    """UPerNet on a Swin backbone: "upernet_" + a backbone name, or an official config's short name.
    Overrides of UPerNet's fields (SEGMENTER_FIELDS) go to the heads, dtype / param_dtype to both, the rest
    to the backbone (e.g. drop_path_rate, remat, img_size)."""
    backbone_name, backbone_overrides = composite_backbone(name, SEGMENTER_PREFIX, SEGMENTERS, "segmenter")
    heads = head_overrides(overrides, SEGMENTER_FIELDS[1:])
    return UPerNet(dense_backbone(backbone_name, {**backbone_overrides, **overrides}), num_classes=num_classes,
                   **heads)


# SimMIM: "simmim_" + any backbone name; the official pre-training configs (configs/simmim/) as short
# names: Swin-B at 192 with window 6 and drop path 0, SwinV2-B at 192 with window 12 and drop path 0.1.
MIM_PREFIX = "simmim_"
MIM_MODELS: dict[str, tuple[str, dict]] = {
    "simmim_swin_base_img192_window6": ("swin_base_patch4_window7_224",
                                        dict(img_size=192, window_size=6, drop_path_rate=0.0)),
    "simmim_swinv2_base_img192_window12": ("swinv2_base_window12_192", dict(drop_path_rate=0.1)),
}
MIM_FIELDS = ("norm_target_window",)


def create_mim(name: str, **overrides) -> SimMIM:
    """SimMIM on a Swin encoder: "simmim_" + a backbone name, or an official config's short name.
    `norm_target_window` goes to SimMIM, dtype / param_dtype to both, the rest to the encoder."""
    backbone_name, backbone_overrides = composite_backbone(name, MIM_PREFIX, MIM_MODELS, "SimMIM model")
    mim = head_overrides(overrides, MIM_FIELDS)
    config = model_config(backbone_name, **{**backbone_overrides, **overrides})
    config.update(num_classes=0, global_pool=False, use_mask_token=True)
    return SimMIM(model_class(backbone_name)(**config), **mim)


# Detectors: "mask_rcnn_" / "cascade_mask_rcnn_" + any backbone name, and the official COCO configs of
# the Swin detection code (configs/swin/: window 7; drop path 0.2, Cascade Swin-B 0.3; the Cascade box
# heads are 4 conv-BN-ReLU and one fully connected layer, class-specific regression; its training: stages at
# IoU 0.5 / 0.6 / 0.7 weighted 1 / 0.5 / 0.25, GIoU x 10 on decoded boxes, 2000 proposals, RPN anchors
# inside the image).
DETECTOR_PREFIXES = {"mask_rcnn_": {}, "cascade_mask_rcnn_": dict(
    stage_stds=CASCADE_STDS, num_shared_convs=4, num_shared_fcs=1, stage_ious=(0.5, 0.6, 0.7),
    stage_loss_weights=(1.0, 0.5, 0.25), giou_weight=10.0, rpn_train_max_per_img=2000, rpn_allowed_border=0)}
DETECTORS: dict[str, tuple[str, dict]] = {
    "mask_rcnn_swin_tiny_patch4_window7": ("swin_tiny_patch4_window7_224", dict(drop_path_rate=0.2)),
    "mask_rcnn_swin_small_patch4_window7": ("swin_small_patch4_window7_224", dict(drop_path_rate=0.2)),
    "cascade_mask_rcnn_swin_tiny_patch4_window7": ("swin_tiny_patch4_window7_224", dict(drop_path_rate=0.2)),
    "cascade_mask_rcnn_swin_small_patch4_window7": ("swin_small_patch4_window7_224", dict(drop_path_rate=0.2)),
    "cascade_mask_rcnn_swin_base_patch4_window7": ("swin_base_patch4_window7_224", dict(drop_path_rate=0.3)),
}
DETECTOR_FIELDS = ("num_classes", "channels", "fc_channels", "mask_channels", "rpn_nms_pre", "rpn_max_per_img",
                   "rpn_iou", "score_thr", "iou_threshold", "max_per_img", "roi_chunk", "rpn_train_nms_pre",
                   "rpn_train_max_per_img", "rpn_samples", "rcnn_samples")


def detector_kind(name: str) -> str | None:
    """The detector prefix a name starts with ("cascade_mask_rcnn_" before "mask_rcnn_"), or None."""
    return next((p for p in sorted(DETECTOR_PREFIXES, key=len, reverse=True) if name.startswith(p)), None)


def create_detector(name: str, num_classes: int = 80, **overrides) -> TwoStageDetector:
    """Mask R-CNN or Cascade Mask R-CNN on a Swin backbone: "mask_rcnn_" / "cascade_mask_rcnn_" + a backbone
    name, or an official config's name. Overrides of DETECTOR_FIELDS go to the detector, dtype /
    param_dtype to both, the rest to the backbone."""
    prefix = detector_kind(name)
    backbone_name, backbone_overrides = composite_backbone(name, prefix, DETECTORS, "detector")
    heads = head_overrides(overrides, DETECTOR_FIELDS[1:])
    return TwoStageDetector(dense_backbone(backbone_name, {**backbone_overrides, **overrides}), num_classes=num_classes,
                            **{**DETECTOR_PREFIXES[prefix], **heads})


def create_model(name: str, **overrides) -> Swin | UPerNet | SimMIM | TwoStageDetector:
    """A Swin model by timm name, e.g. create_model("swin_tiny_patch4_window7_224", num_classes=10);
    the V2 names (swinv2_*) give a SwinTransformerV2, "upernet_" + a name a segmenter (`create_segmenter`),
    "simmim_" + a name a masked-image model (`create_mim`), "mask_rcnn_" / "cascade_mask_rcnn_" + a name a
    detector (`create_detector`)."""
    if detector_kind(name):
        return create_detector(name, **overrides)
    if name.startswith(SEGMENTER_PREFIX):
        return create_segmenter(name, **overrides)
    if name.startswith(MIM_PREFIX):
        return create_mim(name, **overrides)
    return model_class(name)(**model_config(name, **overrides))


def list_models() -> list[str]:
    return sorted(MODELS)


# What a checkpoint's tensors reveal about the model that made it (layouts.describe) and what
# identifies a registered architecture.
SHAPE_FIELDS = ("embed_dim", "depths", "num_heads", "window_size", "patch_size")


def version(model_or_name) -> str:
    """'Swin V1' or 'Swin V2', of a model or a registered name."""
    if isinstance(model_or_name, str):
        return "Swin V2" if model_or_name in V2_MODELS else "Swin V1"
    return "Swin V2" if isinstance(model_or_name, SwinTransformerV2) else "Swin V1"


def matching_models(found: dict) -> list[str]:
    """Registered names whose architecture has every hyper-parameter in `found` (keys of SHAPE_FIELDS and
    'version'; others are ignored), in registry order."""
    names = []
    for name, config in MODELS.items():
        fields = {f: getattr(model_class(name), f) for f in SHAPE_FIELDS}  # the class defaults
        fields.update((f, config[f]) for f in SHAPE_FIELDS if f in config)
        fields["version"] = version(name)
        if all(_same(fields[k], v) for k, v in found.items() if k in fields):
            names.append(name)
    return names


def _same(a, b) -> bool:
    return (tuple(a) if isinstance(a, (list, tuple)) else a) == (tuple(b) if isinstance(b, (list, tuple)) else b)


def describe(model: Swin | UPerNet | SimMIM | TwoStageDetector) -> str:
    """The model's registered name (when its architecture is one) and its hyper-parameters, for messages:
    'swin_tiny_patch4_window7_224 (Swin V1, embed_dim=96, depths=(2, 2, 6, 2), ...)'; a segmenter's
    'UPerNet (150 classes) on ...', a masked-image model's 'SimMIM on ...'."""
    if isinstance(model, UPerNet):
        return f"UPerNet ({model.num_classes} classes) on {describe(model.backbone)}"
    if isinstance(model, SimMIM):
        return f"SimMIM on {describe(model.encoder)}"
    if isinstance(model, TwoStageDetector):
        kind = "Cascade Mask R-CNN" if model.cascade else "Mask R-CNN"
        return f"{kind} ({model.num_classes} classes) on {describe(model.backbone)}"
    fields = {f: getattr(model, f) for f in SHAPE_FIELDS}
    summary = (f"embed_dim={model.embed_dim}, depths={tuple(model.depths)}, "
               f"num_heads={tuple(model.num_heads)}, window_size={model.window_size}, patch_size={model.patch_size}, "
               f"img_size={model.img_size}, num_classes={model.num_classes}")
    names = matching_models({**fields, "version": version(model)})
    return f"{names[0]} ({version(model)}, {summary})" if names else f"a {version(model)} model ({summary})"
