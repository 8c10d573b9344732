"""Convert PyTorch Swin checkpoints to swin_jax, and swin_jax models back to timm (classifiers),
Hugging Face's UperNetForSemanticSegmentation (segmenters, "upernet_" names),
Swin(v2)ForMaskedImageModeling (SimMIM, "simmim_" names) or the official detection layout
("mask_rcnn_" / "cascade_mask_rcnn_" names).

  python -m swin_jax.convert --model swin_tiny_patch4_window7_224 --checkpoint swin_tiny.pth --output DIR
  python -m swin_jax.convert --model swin_base_patch4_window12_384 --checkpoint swin_base_22k.pth \
      --output DIR --map-22k-to-1k map22kto1k.txt
  python -m swin_jax.convert --model upernet_swin_tiny --checkpoint upernet_swin_tiny_ade20k.pth --output DIR
  python -m swin_jax.convert --model simmim_swin_base_img192_window6 --checkpoint simmim_pretrain.pth --output DIR
  python -m swin_jax.convert --model mask_rcnn_swin_tiny_patch4_window7 --checkpoint mask_rcnn_swin_tiny.pth --output DIR
  python -m swin_jax.convert --to-pytorch --checkpoint DIR --output model.safetensors
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

from safetensors.numpy import save_file

from swin_jax import checkpoint
from swin_jax.convert import ConversionError, export_state_dict, load_pytorch_checkpoint, read_class_map
from swin_jax.models import create_model
from swin_jax.models.detection.detectors import TwoStageDetector
from swin_jax.models.upernet import UPerNet


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m swin_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="timm model name the checkpoint is loaded into (PyTorch -> JAX)")
    parser.add_argument("--checkpoint", required=True,
                        help="PyTorch file (.pth/.pt/.bin/.safetensors), or with --to-pytorch a converted directory")
    parser.add_argument("--output", required=True, help="directory to create, or with --to-pytorch a .safetensors file")
    parser.add_argument("--num-classes", type=int, help="classes of the new head (a different count drops the head)")
    parser.add_argument("--img-size", type=int, help="input resolution the model is built for")
    parser.add_argument("--window-size", type=int, help="attention window (bias tables are resampled to it)")
    parser.add_argument("--map-22k-to-1k", metavar="FILE",
                        help="official map22kto1k.txt: narrow an ImageNet-22K head to the 1000 ImageNet-1K classes")
    parser.add_argument("--backbone-only", action="store_true",
                        help="for a segmenter: take only the backbone of a file with other parts (e.g. mmdet's)")
    parser.add_argument("--to-pytorch", action="store_true",
                        help="export a converted directory to timm's layout (segmenters: Hugging Face's UperNet; "
                             "SimMIM: Hugging Face's Swin(v2)ForMaskedImageModeling)")
    return parser.parse_args(argv)


def to_jax(args) -> None:
    if not args.model:
        raise ValueError("--model is required to convert a PyTorch checkpoint (e.g. swin_tiny_patch4_window7_224)")
    overrides = {k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size),
                                   ("window_size", args.window_size)) if v is not None}
    class_map = None
    if args.map_22k_to_1k:
        class_map = read_class_map(args.map_22k_to_1k)
        overrides.setdefault("num_classes", len(class_map))
    model = create_model(args.model, **overrides)
    options = dict(class_map=class_map) if class_map is not None else {}
    if isinstance(model, UPerNet):
        options = dict(backbone_only=args.backbone_only, require_heads=not args.backbone_only)
    elif isinstance(model, TwoStageDetector):  # converting a file means converting a whole detector
        options = dict(require_heads=True)
    variables = load_pytorch_checkpoint(args.checkpoint, model, **options)
    checkpoint.save_pretrained(args.output, variables, args.model, overrides)
    print(f"wrote {args.output} ({args.model}, {overrides or 'default config'})")


def to_pytorch(args) -> None:
    if not args.output.endswith(".safetensors"):
        raise ValueError(f"--output {args.output}: exports are written as .safetensors")
    if os.path.exists(args.output):
        raise FileExistsError(f"output file already exists: {args.output}")
    model, variables, config = checkpoint.load_pretrained(args.checkpoint)
    state, layout = export_state_dict(variables, model)
    directory = os.path.dirname(os.path.abspath(args.output))
    fd, staging = tempfile.mkstemp(suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(state, staging, metadata={"format": "pt", "model": config["model"]})
        os.replace(staging, args.output)
    except BaseException:
        os.unlink(staging)
        raise
    print(f"wrote {args.output} ({layout} layout, {config['model']}, {len(state)} tensors)")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        (to_pytorch if args.to_pytorch else to_jax)(args)
    except (ConversionError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
