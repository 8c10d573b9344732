"""Classify images with a converted or PyTorch Swin checkpoint; prints the top-5 ImageNet classes.

  python -m swin_jax.predict --checkpoint DIR_OR_FILE [--model NAME] [--crop-pct P] IMAGE...

Images go through the evaluation transform of the training pipeline (swin_jax.data.transforms), so a
prediction here and an evaluation in train.py see the same pixels.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from swin_jax import checkpoint, data
from swin_jax.convert import ConversionError, convert_state_dict, layouts, read_state_dict
from swin_jax.data import transforms
from swin_jax.models import create_model, registry

CLASS_NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")


def preprocess(path: str | os.PathLike, size: int, crop_pct: float = 0.0) -> np.ndarray:
    """An image file -> the normalised (size, size, 3) float32 array the evaluation pipeline makes of it."""
    from swin_jax.data.host import tf

    with open(path, "rb") as f:
        encoded = f.read()
    try:
        image = transforms.eval_transform(tf.constant(encoded), size=size, crop_pct=crop_pct)
    except tf.errors.InvalidArgumentError as e:
        raise ValueError(f"{path}: not a readable image ({str(e).splitlines()[0][:200]})") from None
    return np.array(data.normalize(image.numpy()))


def class_names(num_classes: int) -> list[str]:
    """The ImageNet-1K class names (shipped with the package); indices for other heads."""
    if num_classes == 1000:
        with open(CLASS_NAMES) as f:
            return [line.rstrip("\n") for line in f]
    return [f"class {i}" for i in range(num_classes)]


def load(path: str, model_name: str | None):
    if checkpoint.is_pretrained_dir(path):
        model, variables, _ = checkpoint.load_pretrained(path)
        return model, variables
    state = read_state_dict(path)
    found = layouts.describe(layouts.to_timm_layout(state)[1])
    if not model_name:
        matches = registry.matching_models(found)
        if not matches:
            raise ConversionError(f"{path}: no registered model has its shapes "
                                  f"({', '.join(f'{k}={v}' for k, v in found.items())}); pass --model")
        model_name = matches[0]
    model = create_model(model_name, num_classes=found.get("num_classes", 1000))
    return model, convert_state_dict(state, model, source=path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swin_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="converted directory, or a PyTorch checkpoint file")
    parser.add_argument("--model", help="model name for a PyTorch file (guessed from its shapes if left out)")
    parser.add_argument("--crop-pct", type=float, default=0.0,
                        help="evaluation crop (config.input.crop_pct); 0: the official one for the model's size")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        model, variables = load(args.checkpoint, args.model)
        size = model.input_hw[0]
        batch = []
        for path in args.images:
            if not os.path.isfile(path):
                raise ValueError(f"{path}: no such image file")
            batch.append(preprocess(path, size, args.crop_pct))
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
