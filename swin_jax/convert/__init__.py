"""PyTorch Swin checkpoints (official, timm, Hugging Face) -> swin_jax, and back to timm."""

from swin_jax.convert.loader import (convert_state_dict, export_timm_state_dict, load_pytorch_checkpoint,
                                     read_class_map)
from swin_jax.convert.reader import ConversionError, read_state_dict

__all__ = ["ConversionError", "convert_state_dict", "export_timm_state_dict", "load_pytorch_checkpoint",
           "read_class_map", "read_state_dict"]
