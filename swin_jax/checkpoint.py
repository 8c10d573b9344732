"""Saving and restoring model variables with orbax. The only module that imports orbax."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp

from swin_jax.models import create_model
from swin_jax.models.swin import SwinTransformer

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_pretrained(directory: str | os.PathLike, variables: dict, model_name: str, model_overrides: dict) -> None:
    """Write `directory/params` (orbax) and `directory/config.json` (how to build the model).

    The directory appears whole or not at all: everything is written beside it first and renamed
    into place, so a failure leaves no half-written output.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise FileExistsError(f"output directory already exists: {directory}")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    try:
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            json.dump({"model": model_name, "overrides": model_overrides}, f, indent=2, sort_keys=True)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(staging, PARAMS_DIR), variables["params"])
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def load_pretrained(directory: str | os.PathLike, **overrides) -> tuple[SwinTransformer, dict, dict]:
    """(model, variables, config) from a directory written by `save_pretrained`.

    `overrides` change how the model is built (e.g. dtype) but not the parameter shapes.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not is_pretrained_dir(directory):
        raise FileNotFoundError(f"{directory} is not a converted model directory (needs {CONFIG_FILE} and {PARAMS_DIR}/)")
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        config = json.load(f)
    model = create_model(config["model"], **{**config["overrides"], **overrides})
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, *model.input_hw, model.in_chans))))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(directory, PARAMS_DIR), target["params"])
    return model, {"params": params}, config
