"""PyTorch Swin checkpoints (official, timm, Hugging Face; UPerNet segmenters from Hugging Face and
mmsegmentation) -> swin_jax, and back to timm / Hugging Face."""

from swin_jax.convert.loader import (convert_state_dict, export_timm_state_dict, load_pytorch_checkpoint,
                                     read_class_map)
from swin_jax.convert.reader import ConversionError, read_state_dict
from swin_jax.convert.segmentation import (convert_segmenter_state_dict, export_huggingface_upernet,
                                           load_segmenter_checkpoint)

__all__ = ["ConversionError", "convert_segmenter_state_dict", "convert_state_dict", "export_huggingface_upernet",
           "export_timm_state_dict", "load_pytorch_checkpoint", "load_segmenter_checkpoint", "read_class_map",
           "read_state_dict"]
