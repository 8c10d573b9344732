"""Classify images with a converted or PyTorch Swin checkpoint; prints the top-5 ImageNet classes.

  python -m swin_jax.predict --checkpoint DIR_OR_FILE [--model NAME] IMAGE...
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
from PIL import Image

from swin_jax import checkpoint
from swin_jax.convert import ConversionError, convert_state_dict, layouts, read_state_dict
from swin_jax.models import MODELS, create_model

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_PCT = 0.875


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """The official evaluation transform: for 224 models resize the shorter side to
    int(size / 0.875) (bicubic) and centre-crop; for larger models a plain resize to size x size."""
    image = image.convert("RGB")
    if size > 224:
        image = image.resize((size, size), Image.BICUBIC)
    else:
        short = int(size / CROP_PCT)
        w, h = image.size
        # torchvision's Resize(short): the long side is truncated, not rounded.
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        image = image.resize(new, Image.BICUBIC)
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, np.float32) / 255.0
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def class_names(num_classes: int) -> list[str]:
    """ImageNet-1K class names shipped with timm (no network); indices for other heads."""
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def guess_model(state: dict) -> str:
    """The registry name whose shapes a timm-layout state dict has."""
    found = layouts.describe(state)
    for name, cfg in MODELS.items():
        if all(found.get(k) == (tuple(v) if isinstance(v, (list, tuple)) else v)
               for k, v in cfg.items() if k in ("embed_dim", "depths", "num_heads", "window_size")):
            return name
    raise ConversionError(f"cannot tell which model this checkpoint is ({found}); pass --model")


def load(path: str, model_name: str | None):
    if checkpoint.is_pretrained_dir(path):
        model, variables, _ = checkpoint.load_pretrained(path)
        return model, variables
    state = read_state_dict(path)
    timm_state = layouts.to_timm_layout(state)[1]
    model_name = model_name or guess_model(timm_state)
    model = create_model(model_name, num_classes=layouts.describe(timm_state).get("num_classes", 1000))
    return model, convert_state_dict(state, model, source=path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swin_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="converted directory, or a PyTorch checkpoint file")
    parser.add_argument("--model", help="model name for a PyTorch file (guessed from its shapes if left out)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        model, variables = load(args.checkpoint, args.model)
        size = model.input_hw[0]
        batch = []
        for path in args.images:
            try:
                with Image.open(path) as image:
                    batch.append(preprocess(image, size))
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: not a readable image ({e})") from None
    except (ConversionError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    logits = jax.jit(model.apply)(variables, np.stack(batch))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    names = class_names(probs.shape[-1])
    for path, p in zip(args.images, probs):
        print(os.fspath(path))
        for i in np.argsort(-p)[:args.top]:
            print(f"  {p[i]:7.2%}  {names[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
