from swin_jax.models.registry import MODELS, create_model, list_models, model_config
from swin_jax.models.swin import SwinTransformer

__all__ = ["MODELS", "SwinTransformer", "create_model", "list_models", "model_config"]
