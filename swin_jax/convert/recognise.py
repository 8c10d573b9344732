"""What a path holds, and which registered model its tensors are: the one answer that convert, predict,
`load_pytorch_checkpoint` and `config.init_from` share.

A path is one of
- a checkpoint file: .pth/.pt/.bin/.ckpt (read without running code) or .safetensors, in any supported
  layout (official, timm, Hugging Face, mmseg, mmdet, SimMIM);
- a folder written by `save_pretrained` of Hugging Face transformers or timm: config.json beside
  model.safetensors or pytorch_model.bin;
- a converted directory (`python -m swin_jax.convert`): config.json and params/;
- a train.py workdir: config.json and checkpoints/ (its best checkpoint, else its latest).
"""

from __future__ import annotations

import dataclasses
import json
import os

from swin_jax import checkpoint, workdir
from swin_jax.convert import layouts
from swin_jax.convert.reader import ConversionError
from swin_jax.convert.segmenter import split_segmenter_state
from swin_jax.models import registry

CHECKPOINT_FILE = "checkpoint file"
PRETRAINED_FOLDER = "save_pretrained folder"
CONVERTED = "converted directory"
WORKDIR = "train.py workdir"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACCEPTED = ("a checkpoint file (.pth, .pt, .bin, .ckpt, .safetensors), a save_pretrained folder of Hugging Face "
            "or timm (config.json with model.safetensors or pytorch_model.bin), a converted directory (config.json "
            "and params/) or a train.py workdir (config.json and checkpoints/)")


@dataclasses.dataclass(frozen=True)
class Source:
    path: str
    what: str  # CHECKPOINT_FILE, PRETRAINED_FOLDER, CONVERTED or WORKDIR
    weights: str = ""  # the file of tensors (checkpoint files and save_pretrained folders)
    config: dict | None = None  # a save_pretrained folder's config.json

    @property
    def holds_pytorch(self) -> bool:
        return bool(self.weights)


def recognise(path: str | os.PathLike) -> Source:
    path = os.fspath(path)
    if checkpoint.is_pretrained_dir(path):
        return Source(path, CONVERTED)
    if workdir.is_training_workdir(path):
        return Source(path, WORKDIR)
    if os.path.isdir(path):
        weights = [os.path.join(path, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]
        if not weights:
            raise ConversionError(f"{path} is a folder that holds no model; expected {ACCEPTED}")
        config = None
        if os.path.isfile(os.path.join(path, "config.json")):
            with open(os.path.join(path, "config.json")) as f:
                config = json.load(f)
        return Source(path, PRETRAINED_FOLDER, weights[0], config)
    if os.path.isfile(path):
        return Source(path, CHECKPOINT_FILE, path)
    raise ConversionError(f"checkpoint not found: {path} (expected {ACCEPTED})")


def _shape_hints(config: dict | None) -> dict:
    """What a save_pretrained config.json says that the tensors cannot: the input size and, for Swin V2,
    the window (Hugging Face keeps a segmenter's in backbone_config)."""
    config = (config or {}).get("backbone_config") or config or {}
    hints = {}
    if isinstance(config.get("image_size"), int):
        hints["img_size"] = config["image_size"]
    if isinstance(config.get("window_size"), int):
        hints["window_size"] = config["window_size"]
    return hints


def _backbone_name(state: dict, source: Source, what: str) -> str:
    """The one registered Swin whose hyper-parameters the tensors (and a folder's config.json) show."""
    found = layouts.describe(layouts.to_timm_layout(state)[1])
    found.pop("num_classes", None)
    names = registry.matching_models(found)
    hints = _shape_hints(source.config)
    names = [n for n in names if all(registry.model_config(n).get(k) == v for k, v in hints.items())] or names
    if not names:
        shown = ", ".join(f"{k}={v}" for k, v in found.items())
        raise ConversionError(f"{source.path}: no registered model has the shapes of {what} ({shown}); "
                              "name one with --model (model_name=)")
    architectures = {tuple(sorted((k, str(v)) for k, v in registry.model_config(n).items()
                                  if k not in ("num_classes", "drop_path_rate"))) for n in names}
    if len(architectures) > 1:
        raise ConversionError(f"{source.path}: {what} fit several models, which differ in what "
                              f"the tensors do not show (input size, window): {', '.join(names)}; name one with "
                              "--model (model_name=)")
    return names[0]


def _kind_of_name(name: str) -> str:
    if registry.detector_kind(name):
        return "detector"
    if name.startswith(registry.MIM_PREFIX):
        return "SimMIM model"
    return "segmenter" if name.startswith(registry.SEGMENTER_PREFIX) else "classifier"


def guess_model(state: dict, source: Source, name: str | None = None) -> tuple[str, dict]:
    """(registered name, create_model arguments) of a PyTorch state dict: a detector, a SimMIM model, a
    segmenter or a classifier, told by its keys; the size by its shapes (a timm folder's config.json names
    it). With `name` given, only the arguments (the classes and head widths its heads show), and none
    when `name` is of another kind than the file (the converter then says what the file holds)."""
    config = source.config or {}
    if name is None and config.get("architecture") in registry.MODELS:  # timm's save_pretrained
        return config["architecture"], {"num_classes": int(config.get("num_classes", 1000))}
    if any(k.startswith("rpn_head.") for k in state):
        kind = "detector"
        classes = next(v.shape[0] - 1 for k, v in state.items() if k.endswith("fc_cls.weight"))
        arguments = {"num_classes": int(classes)}
        if name is None:
            backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
            prefix = "cascade_mask_rcnn_" if any(k.startswith("roi_head.bbox_head.0.") for k in state) else "mask_rcnn_"
            name = prefix + _backbone_name(backbone, source, "its backbone's tensors")
    elif layouts.is_mim_state(state):
        kind, arguments = "SimMIM model", {}
        if name is None:
            encoder = layouts.split_mim_state(state, source.path)[0]
            name = registry.MIM_PREFIX + _backbone_name(encoder, source, "its encoder's tensors")
    elif layouts.is_segmenter_state(state):
        kind = "segmenter"
        backbone, heads, _ = split_segmenter_state(state, source.path)
        # The classifiers (HF: classifier, mmseg: conv_seg) show the classes and each head's width.
        widths = {k.split(".")[0]: v.shape[:2] for k, v in heads.items()
                  if k.endswith((".conv_seg.weight", ".classifier.weight"))}
        arguments = {"num_classes": int(widths["decode_head"][0]), "channels": int(widths["decode_head"][1])}
        if "auxiliary_head" in widths:
            arguments["auxiliary_channels"] = int(widths["auxiliary_head"][1])
        if name is None:
            name = registry.SEGMENTER_PREFIX + _backbone_name(backbone, source, "its backbone's tensors")
    else:
        kind = "classifier"
        found = layouts.describe(layouts.to_timm_layout(state)[1])
        arguments = {"num_classes": int(found["num_classes"])} if "num_classes" in found else {}  # headless: none
        if name is None:
            name = _backbone_name(state, source, "its tensors")
    return name, arguments if _kind_of_name(name) == kind else {}


def class_names(source: Source) -> list[str] | None:
    """A Hugging Face folder's id2label, in class order; None elsewhere."""
    labels = (source.config or {}).get("id2label")
    if not labels:
        return None
    return [labels[str(i)] if str(i) in labels else labels.get(i, f"class {i}") for i in range(len(labels))]
