"""Convert PyTorch Swin checkpoints to swin_jax, and swin_jax models back to timm (classifiers),
Hugging Face's UperNetForSemanticSegmentation (segmenters, "upernet_" names),
Swin(v2)ForMaskedImageModeling (SimMIM, "simmim_" names) or the official detection layout
("mask_rcnn_" / "cascade_mask_rcnn_" names).

--checkpoint takes a PyTorch checkpoint file (.pth/.pt/.bin/.ckpt/.safetensors) or a save_pretrained
folder of Hugging Face or timm (config.json with model.safetensors or pytorch_model.bin): converted to a
swin_jax directory, the model guessed from the tensors (and printed) unless --model names it. A
converted directory or a train.py workdir is exported to PyTorch (a .safetensors --output).

  python -m swin_jax.convert --checkpoint swin_tiny.pth --output DIR
  python -m swin_jax.convert --model swin_base_patch4_window12_384 --checkpoint swin_base_22k.pth \
      --output DIR --map-22k-to-1k map22kto1k.txt
  python -m swin_jax.convert --checkpoint upernet_swin_tiny_ade20k.pth --output DIR
  python -m swin_jax.convert --checkpoint HF_SAVE_PRETRAINED_FOLDER --output DIR
  python -m swin_jax.convert --checkpoint simmim_pretrain.pth --output DIR
  python -m swin_jax.convert --checkpoint mask_rcnn_swin_tiny.pth --output DIR
  python -m swin_jax.convert --checkpoint DIR_OR_WORKDIR --output model.safetensors
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

from safetensors.numpy import save_file

from swin_jax import checkpoint, workdir
from swin_jax.convert import ConversionError, export_state_dict, model_from_pytorch, read_class_map
from swin_jax.convert.recognise import ACCEPTED, class_names, recognise
from swin_jax.models import registry


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m swin_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registered model name the checkpoint is loaded into (PyTorch -> JAX); "
                        "guessed from the tensors when left out")
    parser.add_argument("--checkpoint", required=True, help=ACCEPTED)
    parser.add_argument("--output", required=True,
                        help="directory to create (PyTorch -> JAX), or a .safetensors file (JAX -> PyTorch)")
    parser.add_argument("--num-classes", type=int, help="classes of the new head (a different count drops the head)")
    parser.add_argument("--img-size", type=int, help="input resolution the model is built for")
    parser.add_argument("--window-size", type=int, help="attention window (bias tables are resampled to it)")
    parser.add_argument("--map-22k-to-1k", metavar="FILE",
                        help="official map22kto1k.txt: narrow an ImageNet-22K head to the 1000 ImageNet-1K classes")
    parser.add_argument("--backbone-only", action="store_true",
                        help="for a segmenter: take only the backbone of a file with other parts (e.g. mmdet's)")
    parser.add_argument("--to-pytorch", action="store_true",
                        help="export (implied by a converted directory or workdir): classifiers in timm's layout, "
                             "segmenters as Hugging Face's UperNet, SimMIM as Hugging Face's "
                             "Swin(v2)ForMaskedImageModeling, detectors in the official detection layout")
    return parser.parse_args(argv)


def to_jax(args, source) -> None:
    overrides = {k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size),
                                   ("window_size", args.window_size)) if v is not None}
    class_map = read_class_map(args.map_22k_to_1k) if args.map_22k_to_1k else None
    if class_map is not None:
        overrides["num_classes"] = len(class_map)
    name, arguments, _, variables = model_from_pytorch(source, args.model, overrides=overrides,
                                                       backbone_only=args.backbone_only, class_map=class_map)
    if not args.model:
        print(f"guessed model: {name} (from the tensors of {source.weights}); name another with --model")
    checkpoint.save_pretrained(args.output, variables, name, arguments, class_names(source))
    print(f"wrote {args.output} ({name}, {arguments or 'default config'})")


def to_pytorch(args, source) -> None:
    if not args.output.endswith(".safetensors"):
        raise ValueError(f"--output {args.output}: exports are written as .safetensors")
    if os.path.exists(args.output):
        raise FileExistsError(f"output file already exists: {args.output}")
    model, variables = workdir.load_saved(source.path)
    state, layout = export_state_dict(variables, model)
    described = registry.describe(model)
    directory = os.path.dirname(os.path.abspath(args.output))
    fd, staging = tempfile.mkstemp(suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(state, staging, metadata={"format": "pt", "model": described})
        os.replace(staging, args.output)
    except BaseException:
        os.unlink(staging)
        raise
    print(f"wrote {args.output} ({layout} layout, {described}, {len(state)} tensors; from the {source.what} "
          f"{source.path})")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        source = recognise(args.checkpoint)
        if source.holds_pytorch and args.to_pytorch:
            raise ValueError(f"--to-pytorch: {args.checkpoint} is already PyTorch ({source.what}); it converts to "
                             "a swin_jax directory without the flag")
        (to_jax if source.holds_pytorch else to_pytorch)(args, source)
    except (ConversionError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
