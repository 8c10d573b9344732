"""Classify, segment, reconstruct or detect in images with a model from a PyTorch checkpoint file, a
save_pretrained folder of Hugging Face or timm, a converted directory or a train.py workdir. The model is
guessed from the tensors of a PyTorch file or folder (--model names another); which checkpoint and model
were loaded is printed first.

  python -m swin_jax.predict --checkpoint PATH [--model NAME] [--crop-pct P] IMAGE...
  python -m swin_jax.predict --checkpoint SEGMENTER image.jpg --output mask.png [--mode slide] [--flip]
  python -m swin_jax.predict --checkpoint SIMMIM image.jpg --output reconstruction.png [--mask-seed 0]
  python -m swin_jax.predict --checkpoint DETECTOR image.jpg --output boxes.png [--json results.json]

A classifier prints the top-5 classes. A segmenter (UPerNet) writes the colour-coded mask (ADE20K's
palette; a class named "background" black) to --output and an overlay on the image beside it
(NAME_overlay.png: background left transparent, a legend of the classes shown), and prints the share of
the image each class covers, with the class names of the training config or the folder's config.json. A SimMIM model masks the image (the training config's mask cells and
ratio, drawn from --mask-seed) and writes original | masked | reconstruction to --output, printing the
reconstruction loss. A detector (Mask R-CNN, Cascade Mask R-CNN; an official Swin detection checkpoint
is recognised) applies the official test transform (keep-ratio resize to 1333x800, pad to 32), draws
boxes, class names, scores and masks to --output and writes COCO-format results (bbox [x, y, w, h] in
the image's pixels, score, category_id, RLE segmentation) to --json. Images go through the evaluation transforms of the training pipeline
(swin_jax.data.transforms, swin_jax.data.segmentation), so a prediction here and an evaluation in
train.py see the same pixels.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from swin_jax import checkpoint, data, workdir
from swin_jax.convert import ConversionError, model_from_pytorch
from swin_jax.convert.recognise import ACCEPTED, WORKDIR, recognise
from swin_jax.convert.recognise import class_names as class_names_of
from swin_jax.data import ade20k, coco, segmentation, transforms
from swin_jax.data.host import tf
from swin_jax.data.on_device import simmim_masks
from swin_jax.data.scenes import SCENE_CLASSES
from swin_jax.models import registry
from swin_jax.models.detection.detectors import TwoStageDetector
from swin_jax.models.layers import resize_bilinear
from swin_jax.models.upernet import segment_probabilities
from swin_jax.tasks import detection
from swin_jax.tasks.segmentation import class_names_for
from swin_jax.tasks.simmim import triptych

CLASS_NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")


def preprocess(path: str | os.PathLike, size: int, crop_pct: float = 0.0) -> np.ndarray:
    """An image file -> the normalised (size, size, 3) float32 array the evaluation pipeline makes of it."""
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


def load(path: str, model_name: str | None = None):
    """(model, variables, the training config or None, class names or None, a line saying what was
    loaded) from any path `recognise` takes; a PyTorch file's model guessed from its tensors unless
    `model_name` is given."""
    source = recognise(path)
    if not source.holds_pytorch:
        if model_name:
            raise ValueError(f"--model names the model of a PyTorch file; {path} is a {source.what}, which "
                             "knows its model")
        if source.what == WORKDIR:
            model, variables, config, which = workdir.load_workdir(path)
            return model, variables, config, None, f"{path} ({source.what}, {which}): {registry.describe(model)}"
        model, variables, saved = checkpoint.load_pretrained(path)
        return model, variables, None, saved.get("class_names"), f"{path} ({source.what}): {registry.describe(model)}"
    name, _, model, variables = model_from_pytorch(source, model_name)
    how = "named by --model" if model_name else "guessed from its tensors; --model names another"
    return model, variables, None, class_names_of(source), f"{source.weights} ({source.what}): {name}, {how}"


def segment(model, variables, path: str, *, scale=(2048, 512), mode: str = "whole", crop: int = 512,
            stride: int = 341, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(the image as read, uint8 HxWx3; class per pixel at its size): the evaluation resize keeping the
    ratio to `scale`, `whole` or `slide` inference (with `flip`, averaged with the mirrored image), class
    probabilities resized back to the image."""
    with open(path, "rb") as f:
        encoded = f.read()
    try:
        image = transforms.decode(tf.constant(encoded))
        resized = segmentation.eval_resize(image, tuple(scale))
    except tf.errors.InvalidArgumentError as e:
        raise ValueError(f"{path}: not a readable image ({str(e).splitlines()[0][:200]})") from None
    x = np.asarray(data.normalize(resized.numpy()[None]))
    apply_fn = jax.jit(functools.partial(model.apply, variables))
    probs = segment_probabilities(apply_fn, x, mode=mode, crop=crop, stride=stride, flip=flip)
    original = image.numpy()
    probs = resize_bilinear(probs, original.shape[:2])
    return original, np.asarray(jnp.argmax(probs[0], axis=-1))


def write_segmentation(image: np.ndarray, classes: np.ndarray, output: str, names: list[str]) -> str:
    """The colour-coded mask at `output` (a class named "background" black) and the image blended with it
    at NAME_overlay.png, background left as the image is, with a legend of the classes it shows; returns
    the overlay's path."""
    palette = ade20k.palette(len(names))
    background = np.array([name.lower() == "background" for name in names])
    colours = np.where(background[classes][..., None], 0, palette[classes]).astype(np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    Image.fromarray(colours).save(output)
    blended = np.where(background[classes][..., None], image, 0.5 * image + 0.5 * colours)
    shown = [c for c in np.argsort(-np.bincount(classes.ravel(), minlength=len(names))) if
             (classes == c).any() and not background[c]]
    overlay = Image.fromarray(blended.round().astype(np.uint8))
    if shown:  # the legend: one swatch and name per class, below the image
        rows, height = shown[:20], 14
        legend = Image.new("RGB", (overlay.width, height * len(rows)), (255, 255, 255))
        draw = ImageDraw.Draw(legend)
        for r, c in enumerate(rows):
            draw.rectangle((2, r * height + 2, 12, r * height + 12), fill=tuple(int(v) for v in palette[c]))
            draw.text((16, r * height + 1), names[c], fill=(0, 0, 0))
        framed = Image.new("RGB", (overlay.width, overlay.height + legend.height), (255, 255, 255))
        framed.paste(overlay, (0, 0))
        framed.paste(legend, (0, overlay.height))
        overlay = framed
    stem, ext = os.path.splitext(output)
    path = f"{stem}_overlay{ext or '.png'}"
    overlay.save(path)
    return path


def segmentation_class_names(num_classes: int, config=None) -> list[str]:
    if config is not None and config.get("task") == "segmentation":
        return list(class_names_for(config.input, num_classes,
                                    SCENE_CLASSES if config.input.dataset == "demo_scenes" else None))
    if num_classes == 150:
        return list(ade20k.CLASSES)
    return [f"class {i}" for i in range(num_classes)]


# Which options each kind of model uses: anything else given is refused, so no flag is silently ignored.
USES = {
    "classifier": {"crop_pct", "top"},
    "segmenter": {"output", "scale", "mode", "crop", "stride", "flip", "top"},
    "SimMIM model": {"output", "crop_pct", "mask_seed"},
    "detector": {"output", "scale", "json", "score", "top"},
}
DEFAULTS = dict(crop_pct=0.0, top=5, mode="whole", crop=512, stride=341, flip=False, score=0.3, mask_seed=0)


def kind_name(model) -> str:
    if isinstance(model, TwoStageDetector):
        return "detector"
    return "segmenter" if hasattr(model, "backbone") else "SimMIM model" if hasattr(model, "encoder") else "classifier"


def refuse_unused(args, kind: str) -> None:
    given = [k for k in DEFAULTS.keys() | {"output", "scale", "json"} if getattr(args, k) not in (None, False)]
    unused = sorted(k for k in given if k not in USES[kind])
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        takers = {k: [w for w, uses in USES.items() if k in uses] for k in unused}
        where = "; ".join(f"--{k.replace('_', '-')} is for {' and '.join(w + 's' for w in takers[k])}" for k in unused)
        raise ValueError(f"{flags} does nothing for a {kind} ({where})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swin_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help=ACCEPTED)
    parser.add_argument("--model", help="registered model name for a PyTorch file or folder (guessed from its tensors "
                        "if left out)")
    parser.add_argument("--crop-pct", type=float, help="classifiers, SimMIM: evaluation crop (config.input.crop_pct); "
                        "0 (default): the official one for the model's size")
    parser.add_argument("--top", type=int, help="classes printed (default 5)")
    parser.add_argument("--output", help="segmenters: the colour-coded mask (PNG), NAME_overlay.png beside it (with "
                        "several images, a folder for IMAGE_mask.png and IMAGE_overlay.png); SimMIM: the original | "
                        "masked | reconstruction PNG; detectors: the image with boxes and masks")
    parser.add_argument("--scale", type=int, nargs=2, metavar=("LONG", "SHORT"),
                        help="segmenters, detectors: evaluation resize keeping the ratio (default: the training "
                        "config's, else 2048 512; detectors: 1333 800)")
    segmenting = parser.add_argument_group("segmenters")
    segmenting.add_argument("--mode", choices=("whole", "slide"), help="whole-image (default) or sliding-window")
    segmenting.add_argument("--crop", type=int, help="slide: window size (default 512)")
    segmenting.add_argument("--stride", type=int, help="slide: window stride (default 341)")
    segmenting.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    detecting = parser.add_argument_group("detectors")
    detecting.add_argument("--json", help="COCO-format results (a list of detections) for every image")
    detecting.add_argument("--score", type=float, help="draw detections scoring at least this (default 0.3)")
    masking = parser.add_argument_group("SimMIM models")
    masking.add_argument("--mask-seed", type=int, help="the random mask's seed (default 0)")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        model, variables, config, names, loaded = load(args.checkpoint, args.model)
        refuse_unused(args, kind_name(model))
    except (ConversionError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    print(f"checkpoint: {loaded}")
    if isinstance(model, TwoStageDetector):
        return _detect_main(args, model, variables)
    if hasattr(model, "backbone"):
        return _segment_main(args, model, variables, config, names)
    if hasattr(model, "encoder"):
        return _reconstruct_main(args, model, variables, config)
    try:
        size = model.input_hw[0]
        batch = []
        for path in args.images:
            if not os.path.isfile(path):
                raise ValueError(f"{path}: no such image file")
            batch.append(preprocess(path, size, args.crop_pct))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    logits = jax.jit(model.apply)(variables, np.stack(batch))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    names = names or class_names(probs.shape[-1])
    for path, p in zip(args.images, probs):
        print(os.fspath(path))
        for i in np.argsort(-p)[:args.top]:
            print(f"  {p[i]:7.2%}  {names[i]}")
    return 0


def _reconstruct_main(args, model, variables, config) -> int:
    if not args.output:
        print("error: a SimMIM model needs --output (where original | masked | reconstruction goes)",
              file=sys.stderr)
        return 1
    cells = (config.input.mask_patch_size, config.input.mask_ratio) if config is not None else (32, 0.6)
    size = model.input_hw[0]
    rows, apply_fn = [], jax.jit(model.apply)
    for i, path in enumerate(args.images):
        if not os.path.isfile(path):
            print(f"error: {path}: no such image file", file=sys.stderr)
            return 1
        try:
            x = preprocess(path, size, args.crop_pct)[None]
            mask = simmim_masks(jax.random.fold_in(jax.random.key(args.mask_seed), i), 1, size,
                                mask_patch_size=cells[0], model_patch_size=model.patch_size, ratio=cells[1])
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        out = apply_fn(variables, x, mask)
        reconstruction = np.asarray(out["reconstruction"])
        if model.norm_target_window:  # normalised targets: back with the image's own statistics, roughly
            reconstruction = reconstruction * x.std(axis=(1, 2), keepdims=True) + x.mean(axis=(1, 2), keepdims=True)
        rows.append(triptych(x, np.asarray(mask), reconstruction, model.patch_size)[0])
        print(f"{path}: reconstruction loss (masked L1) {float(out['loss']):.4f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.output)
    print(f"original | masked | reconstruction: {args.output}")
    return 0


def detect(model, apply_fn, variables, path: str, scale=coco.TEST_SCALE):
    """(the image as read, and its detections in its own pixels: boxes (N, 4), scores, labels, masks
    (N, H, W) bool) after the official test transform (keep-ratio resize to `scale`)."""
    with open(path, "rb") as f:
        encoded = f.read()
    try:
        image = transforms.decode(tf.constant(encoded)).numpy()
    except tf.errors.InvalidArgumentError as e:
        raise ValueError(f"{path}: not a readable image ({str(e).splitlines()[0][:200]})") from None
    if min(image.shape[:2]) == 0:
        raise ValueError(f"{path}: the image has no pixels ({image.shape[0]}x{image.shape[1]})")
    x, hw, _ = coco.test_image(image, scale)
    out = jax.device_get(apply_fn(variables, x[None], np.array([hw], np.int32)))
    keep = out["valid"][0]
    boxes, masks = detection.in_original_pixels(out["boxes"][0][keep], out["masks"][0][keep], hw, image.shape[:2])
    return image, boxes, out["scores"][0][keep], out["labels"][0][keep], masks


def _detect_main(args, model, variables) -> int:
    names = list(coco.CLASSES) if model.num_classes == 80 else [f"class {i}" for i in range(model.num_classes)]
    apply_fn, results = jax.jit(model.apply), []
    for i, path in enumerate(args.images):
        if not os.path.isfile(path):
            print(f"error: {path}: no such image file", file=sys.stderr)
            return 1
        try:
            image, boxes, scores, labels, masks = detect(model, apply_fn, variables, path,
                                                         tuple(args.scale or coco.TEST_SCALE))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        stem = os.path.splitext(os.path.basename(path))[0]
        category_ids = coco.CATEGORY_IDS if model.num_classes == 80 else range(1, model.num_classes + 1)
        results += detection.coco_results(int(stem) if stem.isdigit() else stem, boxes, scores, labels, masks,
                                          category_ids)
        print(f"{path}: {len(scores)} detections, {int((scores >= args.score).sum())} scoring >= {args.score}")
        for score, label in list(zip(scores, labels))[:args.top]:
            print(f"  {score:6.3f}  {names[label]}")
        if args.output:
            output = args.output if len(args.images) == 1 else os.path.join(args.output, f"{stem}_detections.png")
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
            detection.draw_detections(image, boxes, scores, labels, masks, names, args.score).save(output)
            print(f"  drawn: {output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
        print(f"{len(results)} detections in COCO's results format: {args.json}")
    return 0


def _segment_main(args, model, variables, config, names=None) -> int:
    if not args.output:
        print("error: a segmenter needs --output (where the mask PNG goes)", file=sys.stderr)
        return 1
    scale = args.scale or (tuple(config.input.eval_scale) if config is not None else (2048, 512))
    names = names or segmentation_class_names(model.num_classes, config)
    for path in args.images:
        if not os.path.isfile(path):
            print(f"error: {path}: no such image file", file=sys.stderr)
            return 1
        output = args.output
        if len(args.images) > 1:
            output = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + "_mask.png")
        try:
            image, classes = segment(model, variables, path, scale=scale, mode=args.mode, crop=args.crop,
                                     stride=args.stride, flip=args.flip)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        overlay = write_segmentation(image, classes, output, names)
        print(f"{path}: mask {output}, overlay {overlay}")
        counts = np.bincount(classes.ravel(), minlength=model.num_classes)
        for i in np.argsort(-counts)[:args.top]:
            if counts[i]:
                print(f"  {counts[i] / classes.size:7.2%}  {names[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
