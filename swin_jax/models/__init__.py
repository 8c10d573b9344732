from swin_jax.models.registry import MODELS, V2_MODELS, create_model, list_models, model_config
from swin_jax.models.simmim import SimMIM
from swin_jax.models.swin import Swin, SwinTransformer
from swin_jax.models.swin_v2 import SwinTransformerV2

__all__ = ["MODELS", "SimMIM", "Swin", "SwinTransformer", "SwinTransformerV2", "V2_MODELS", "create_model",
           "list_models", "model_config"]
