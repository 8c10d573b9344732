"""timm's model names -> hyper-parameters, and the factory (Swin V1 and V2)."""

from __future__ import annotations

import difflib

from swin_jax.models.swin import SwinTransformer, config_fields
from swin_jax.models.swin_v2 import SwinTransformerV2

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


def model_config(name: str, **overrides) -> dict:
    """The keyword arguments `create_model(name, **overrides)` builds the model with."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name {name!r}.{hint} Known models: {', '.join(sorted(MODELS))}")
    fields = config_fields(model_class(name))
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name}; options are {sorted(fields)}")
    return {**MODELS[name], **overrides}


def create_model(name: str, **overrides) -> SwinTransformer:
    """A Swin model by timm name, e.g. create_model("swin_tiny_patch4_window7_224", num_classes=10);
    the V2 names (swinv2_*) give a SwinTransformerV2."""
    return model_class(name)(**model_config(name, **overrides))


def list_models() -> list[str]:
    return sorted(MODELS)
