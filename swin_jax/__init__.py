"""Swin Transformer in JAX/Flax."""

from swin_jax.convert import load_pytorch_checkpoint
from swin_jax.models import SwinTransformer, SwinTransformerV2, create_model, list_models

__all__ = ["SwinTransformer", "SwinTransformerV2", "create_model", "list_models", "load_pytorch_checkpoint"]
__version__ = "0.1.0"
