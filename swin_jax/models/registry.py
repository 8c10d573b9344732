"""timm's model names -> hyper-parameters, and the factory."""

from __future__ import annotations

import difflib

from swin_jax.models.swin import SwinTransformer, config_fields

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


def model_config(name: str, **overrides) -> dict:
    """The keyword arguments `create_model(name, **overrides)` builds the model with."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name {name!r}.{hint} Known models: {', '.join(sorted(MODELS))}")
    unknown = sorted(set(overrides) - config_fields())
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name}; options are {sorted(config_fields())}")
    return {**MODELS[name], **overrides}


def create_model(name: str, **overrides) -> SwinTransformer:
    """A Swin model by timm name, e.g. create_model("swin_tiny_patch4_window7_224", num_classes=10)."""
    return SwinTransformer(**model_config(name, **overrides))


def list_models() -> list[str]:
    return sorted(MODELS)
