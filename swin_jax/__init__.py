"""Swin Transformer in JAX/Flax."""

from swin_jax.models import SwinTransformer, create_model, list_models

__all__ = ["SwinTransformer", "create_model", "list_models"]
__version__ = "0.1.0"
