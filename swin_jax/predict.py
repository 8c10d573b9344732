"""Classify, segment or detect in images with a converted directory, a PyTorch checkpoint or a training
workdir.

  python -m swin_jax.predict --checkpoint DIR_OR_FILE [--model NAME] [--crop-pct P] IMAGE...
  python -m swin_jax.predict --checkpoint SEGMENTER image.jpg --output mask.png [--mode slide] [--flip]
  python -m swin_jax.predict --checkpoint SIMMIM image.jpg --output reconstruction.png [--mask-seed 0]
  python -m swin_jax.predict --checkpoint DETECTOR image.jpg --output boxes.png [--json results.json]

A classifier prints the top-5 classes. A segmenter (UPerNet) writes the colour-coded mask (ADE20K's
palette) to --output and an overlay on the image beside it (NAME_overlay.png), and prints the share of
the image each class covers. A SimMIM model masks the image (the training config's mask cells and
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
from PIL import Image

from swin_jax import data, workdir
from swin_jax.convert import ConversionError, convert_state_dict, layouts, read_state_dict
from swin_jax.data import ade20k, coco, segmentation, transforms
from swin_jax.data.host import tf
from swin_jax.data.on_device import simmim_masks
from swin_jax.data.scenes import SCENE_CLASSES
from swin_jax.models import create_model, registry
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


def load(path: str, model_name: str | None):
    """(model, variables) of a converted directory, a workdir, or a PyTorch file (the model guessed from
    its shapes unless `model_name` is given)."""
    saved = workdir.load_saved(path)
    if saved is not None:
        return saved
    state = read_state_dict(path)
    if any(k.startswith("rpn_head.") for k in state):  # an official detection checkpoint
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        cascade = any(k.startswith("roi_head.bbox_head.0.") for k in state)
        if not model_name:
            matches = registry.matching_models(layouts.describe(layouts.to_timm_layout(backbone)[1]))
            if not matches:
                raise ConversionError(f"{path}: no registered model has its backbone's shapes; pass --model")
            model_name = ("cascade_mask_rcnn_" if cascade else "mask_rcnn_") + matches[0]
        classes = next(v.shape[0] - 1 for k, v in state.items() if k.endswith("fc_cls.weight"))
        model = create_model(model_name, num_classes=classes)
        return model, convert_state_dict(state, model, source=path, require_heads=True)
    if layouts.is_mim_state(state):
        found = layouts.describe(layouts.to_timm_layout(layouts.split_mim_state(state, path)[0])[1])
        if not model_name:
            matches = registry.matching_models(found)
            if not matches:
                raise ConversionError(f"{path}: no registered model has its encoder's shapes; pass --model")
            model_name = registry.MIM_PREFIX + matches[0]
        model = create_model(model_name)
        return model, convert_state_dict(state, model, source=path)
    found = layouts.describe(layouts.to_timm_layout(state)[1])
    if not model_name:
        matches = registry.matching_models(found)
        if not matches:
            raise ConversionError(f"{path}: no registered model has its shapes "
                                  f"({', '.join(f'{k}={v}' for k, v in found.items())}); pass --model")
        model_name = matches[0]
    if model_name.startswith(registry.SEGMENTER_PREFIX):
        classes = next((v.shape[0] for k, v in state.items() if k.endswith(("decode_head.conv_seg.weight",
                                                                               "decode_head.classifier.weight"))), 150)
        model = create_model(model_name, num_classes=classes)
        return model, convert_state_dict(state, model, source=path, require_heads=True)
    model = create_model(model_name, num_classes=found.get("num_classes", 1000))
    return model, convert_state_dict(state, model, source=path)


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


def write_segmentation(image: np.ndarray, classes: np.ndarray, output: str, num_classes: int) -> str:
    """The colour-coded mask at `output` and the image blended with it at NAME_overlay.png; returns the
    overlay's path."""
    colours = ade20k.palette(num_classes)[classes]
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    Image.fromarray(colours).save(output)
    stem, ext = os.path.splitext(output)
    overlay = f"{stem}_overlay{ext or '.png'}"
    Image.fromarray((0.5 * image + 0.5 * colours).round().astype(np.uint8)).save(overlay)
    return overlay


def segmentation_class_names(num_classes: int, config=None) -> list[str]:
    if config is not None and config.get("task") == "segmentation":
        return list(class_names_for(config.input, num_classes,
                                    SCENE_CLASSES if config.input.dataset == "demo_scenes" else None))
    if num_classes == 150:
        return list(ade20k.CLASSES)
    return [f"class {i}" for i in range(num_classes)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swin_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="converted directory, or a PyTorch checkpoint file")
    parser.add_argument("--model", help="model name for a PyTorch file (guessed from its shapes if left out)")
    parser.add_argument("--crop-pct", type=float, default=0.0,
                        help="evaluation crop (config.input.crop_pct); 0: the official one for the model's size")
    parser.add_argument("--top", type=int, default=5)
    segmenting = parser.add_argument_group("segmenters")
    segmenting.add_argument("--output", help="the colour-coded mask (PNG); NAME_overlay.png goes beside it. "
                            "With several images, a folder for IMAGE_mask.png and IMAGE_overlay.png. "
                            "SimMIM: the original | masked | reconstruction PNG")
    segmenting.add_argument("--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                            help="evaluation resize keeping the ratio (default: the training config's, else 2048 512; "
                            "detectors: 1333 800)")
    segmenting.add_argument("--mode", choices=("whole", "slide"), default="whole")
    segmenting.add_argument("--crop", type=int, default=512, help="slide: window size")
    segmenting.add_argument("--stride", type=int, default=341, help="slide: window stride")
    segmenting.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    detecting = parser.add_argument_group("detectors")
    detecting.add_argument("--json", help="COCO-format results (a list of detections) for every image")
    detecting.add_argument("--score", type=float, default=0.3, help="draw detections scoring at least this")
    masking = parser.add_argument_group("SimMIM models")
    masking.add_argument("--mask-seed", type=int, default=0, help="the random mask's seed")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        config = None
        if workdir.is_training_workdir(args.checkpoint):
            model, variables, config = workdir.load_workdir(args.checkpoint)
        else:
            model, variables = load(args.checkpoint, args.model)
        if isinstance(model, TwoStageDetector):
            return _detect_main(args, model, variables)
        if hasattr(model, "backbone"):
            return _segment_main(args, model, variables, config)
        if hasattr(model, "encoder"):
            return _reconstruct_main(args, model, variables, config)
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


def _segment_main(args, model, variables, config) -> int:
    if not args.output:
        print("error: a segmenter needs --output (where the mask PNG goes)", file=sys.stderr)
        return 1
    scale = args.scale or (tuple(config.input.eval_scale) if config is not None else (2048, 512))
    names = segmentation_class_names(model.num_classes, config)
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
        overlay = write_segmentation(image, classes, output, model.num_classes)
        print(f"{path}: mask {output}, overlay {overlay}")
        counts = np.bincount(classes.ravel(), minlength=model.num_classes)
        for i in np.argsort(-counts)[:args.top]:
            if counts[i]:
                print(f"  {counts[i] / classes.size:7.2%}  {names[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
