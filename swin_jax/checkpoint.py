"""Saving and restoring model variables with orbax. The only module that imports orbax."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp

from swin_jax.models import create_model
from swin_jax.models.swin import Swin

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_pretrained(directory: str | os.PathLike, variables: dict, model_name: str, model_overrides: dict,
                    class_names: list[str] | None = None) -> None:
    """Write `directory/params` (orbax), `directory/batch_stats` for a segmenter, and
    `directory/config.json` (how to build the model, and the class names when known).

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
            json.dump({"model": model_name, "overrides": model_overrides,
                       **({"class_names": list(class_names)} if class_names else {})}, f, indent=2, sort_keys=True)
        with ocp.StandardCheckpointer() as checkpointer:
            for collection, tree in variables.items():  # params, and a segmenter's batch_stats
                checkpointer.save(os.path.join(staging, _collection_dir(collection)), tree)
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def load_pretrained(directory: str | os.PathLike, **overrides) -> tuple[Swin, dict, dict]:
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
        variables = {c: checkpointer.restore(os.path.join(directory, _collection_dir(c)), tree)
                     for c, tree in target.items()}
    return model, variables, config


def _collection_dir(collection: str) -> str:
    return PARAMS_DIR if collection == "params" else collection


def _path_name(path) -> str:
    """'params/layers_0/...' for a key path, whether its entries are dict keys, attributes or indices
    (saved metadata turns dataclass and named-tuple fields into dict keys)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


class CheckpointError(ValueError):
    """A training checkpoint that cannot be restored into the configured model, or cannot be written."""


def _reason(error: BaseException) -> str:
    """The first line of an error's message (orbax's run to pages), at most 400 characters, led by the
    operating system's words where tensorstore gives only the error number (their place in its message
    varies with the length of the path)."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    short = line if len(line) <= 400 else f"{line[:150]} ... {line[-240:]}"  # the cause is at the end
    code = re.search(r"os_error_code='(\d+)'", line)
    return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)}): {short}" if code else short


class _ExpectedOrbaxWarnings(logging.Filter):
    """Orbax warns at every save without metrics once it tracks the best (only evaluated steps have
    them), and when its array handler is replaced (`_one_transfer_per_array_on_cpu`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "did not provide metrics" not in message and "Type handler registry type" not in message


logging.getLogger("absl").addFilter(_ExpectedOrbaxWarnings())


def _one_transfer_per_array_on_cpu() -> None:
    """Orbax splits a replicated array's copy to the host among its replicas (on TPU, each chip copies a
    share). CPU devices share the host's memory, so the split buys nothing there, and it compiles one
    slice program per array shape: about 20 s at the first save of a Swin-T segmenter's state. Orbax
    turns it off for GPUs already; this does the same for CPUs (asked once the backend is up, which
    multi-process runs need to start first)."""
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if jax.default_backend() == "cpu" and getattr(handler, "_use_replica_parallel", False):
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class TrainCheckpoints:
    """Training checkpoints in `directory` (orbax CheckpointManager): the whole train state per step,
    saved in the background. Keeps the last `keep` steps and the best by `best_metric` (the task's:
    eval top-1, eval mIoU). Orbax writes each
    step beside its final name and renames it when complete, so a half-written step is never listed;
    a listed step that still fails to restore is skipped with a warning."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, best_metric: str = "eval_top1"):
        from orbax.checkpoint import checkpoint_managers as policies

        _one_transfer_per_array_on_cpu()
        keep = [policies.LatestN(n=keep)]
        if best_metric:  # a task without one (SimMIM pre-training) keeps the latest steps only
            keep.append(policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=True, n=1,
                                       keep_checkpoints_without_metrics=False))
        # best_fn makes orbax write each step's metrics beside it, so the best step is known after a restart.
        best = dict(best_fn=lambda m: m[best_metric], best_mode="max") if best_metric else {}
        self.directory = os.path.abspath(os.fspath(directory))

        def manager(**options):
            # Naming the handler lets a fresh process read a step's metadata before restoring it.
            return ocp.CheckpointManager(self.directory, item_handlers=ocp.StandardCheckpointHandler(),
                                         options=ocp.CheckpointManagerOptions(
                                             create=True, enable_async_checkpointing=True, **options))

        try:
            self.manager = manager(preservation_policy=policies.AnyPreservationPolicy(keep), **best)
        except Exception as e:  # noqa: BLE001  orbax reads every step's metrics here; one may be damaged
            logging.getLogger(__name__).warning(
                "the saved metrics in %s do not read (%s): this run keeps every checkpoint and does not track "
                "the best", self.directory, _reason(e))
            self.manager = manager(lightweight_initialize=True)  # step names only, no metrics read
        self._writing = None  # the step being written in the background
        self._failed = False

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state, *, metrics: dict | None = None, force: bool = False) -> None:
        """Start writing `step` in the background, once the previous write is complete. A write that fails
        (a full disk, a directory made read-only) is a CheckpointError naming the step and the directory."""
        self.wait()
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=force)
        except Exception as e:  # noqa: BLE001  file systems fail in many ways
            raise self._write_error(step, e) from e
        self._writing = step

    def check(self) -> None:
        """Raise the error of a background write that failed, if any; cheap enough for every step."""
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(self._writing, e) from e

    def _write_error(self, step, error: BaseException) -> CheckpointError:
        self._failed = True
        try:
            kept = ocp.utils.checkpoint_steps(self.directory)
        except Exception:  # noqa: BLE001  the same disk may refuse a listing
            kept = []
        resume = (f"the complete checkpoints (step{'s' * (len(kept) > 1)} {', '.join(map(str, sorted(kept)))}) are kept; "
                  f"fix the disk and run the same command to resume from step {max(kept)}") if kept else \
            "no checkpoint was completed"
        return CheckpointError(f"could not write the checkpoint of step {step} in {self.directory}: "
                               f"{_reason(error)}\nThe run stops: {resume}.")

    @staticmethod
    def any_on_disk(directory: str) -> bool:
        """Whether `directory` holds a complete step."""
        return os.path.isdir(directory) and bool(ocp.utils.checkpoint_steps(directory))

    def describe_latest(self) -> str:
        """A sentence naming the newest complete step on disk (read afresh: safe while a save is in flight)."""
        steps = ocp.utils.checkpoint_steps(self.directory)
        if not steps:
            return f"No checkpoint is complete in {self.directory}."
        return f"The last complete checkpoint is step {max(steps)} in {self.directory}."

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once any of them was told to stop (multi-process
        jobs, through JAX's preemption sync point)."""
        return self.manager.reached_preemption(step)

    def _check_fits(self, step: int, target) -> None:
        """Compare the saved tree with the target before restoring, so another model variant gives an
        error naming the parameters instead of a shape error from deep inside the restore."""
        saved = self.manager.item_metadata(step)
        saved = getattr(saved, "tree", saved)
        flat_saved = {_path_name(k): getattr(v, "shape", None) for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
        flat_target = {_path_name(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(target)[0]}
        unexpected = sorted(set(flat_saved) - set(flat_target))
        params_first = lambda k: (not k.startswith("params/"), k)  # noqa: E731  the optimiser state mirrors them
        unexpected.sort(key=params_first)
        mismatched = [f"{k}: saved {tuple(flat_saved[k])}, model {flat_target[k]}"
                      for k in sorted(set(flat_saved) & set(flat_target), key=params_first)
                      if flat_saved[k] is not None and tuple(flat_saved[k]) != flat_target[k]]
        # Leaves only missing could be damage; shapes that differ or leaves the model lacks cannot be.
        if unexpected or mismatched:
            lines = [f"checkpoint step {step} in {self.directory} was written by another model or optimiser:"]
            for title, rows in (("shape mismatch", mismatched), ("not in the model", unexpected)):
                if rows:
                    lines.append(f"  {title} ({len(rows)}): " + "; ".join(rows[:8]) +
                                 (f"; ... and {len(rows) - 8} more" if len(rows) > 8 else ""))
            raise CheckpointError("\n".join(lines))

    def _restore(self, step: int, target):
        """Restore a step into `target`, a dataclass of arrays. Fields the saved step lacks and that are empty
        in the target (the model_state of a classifier, added after its checkpoint was written) are left
        as the target has them, so older checkpoints still restore."""
        saved = self.manager.item_metadata(step)
        saved = getattr(saved, "tree", saved)
        fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
        absent = {k: v for k, v in fields.items() if k not in saved and not jax.tree.leaves(v)}
        item = {k: v for k, v in fields.items() if k not in absent}
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(item))
        return dataclasses.replace(target, **restored)

    def saved_arrays(self, step: int | None = None, fields=("params", "model_state")) -> dict:
        """`fields` of a step's train state as saved (NumPy arrays, no target needed), its "step" and the
        "metrics" saved with it: for inference from a training workdir. The best step by the task's metric
        when there is one, else the latest."""
        step = step if step is not None else (self.best_step() or self.latest_step())
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        saved = self.manager.item_metadata(step)
        saved = getattr(saved, "tree", saved)
        item = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=jax.sharding.SingleDeviceSharding(
            jax.devices()[0])), saved[k]) for k in fields if k in saved}
        missing = {k: {} for k in fields if k not in saved}
        rest = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=jax.sharding.SingleDeviceSharding(
            jax.devices()[0])), v) for k, v in saved.items() if k not in item}
        restored = self.manager.restore(step, args=ocp.args.StandardRestore({**item, **rest}))
        return {**{k: restored[k] for k in item}, **missing, "step": step, "metrics": self.manager.metrics(step) or {}}

    def restore_latest(self, target) -> tuple[int | None, object]:
        """(step, state) of the newest step that restores, laid out as `target` (ShapeDtypeStructs with
        shardings: any device count or sharding works); (None, None) if there is none. Damaged steps
        are skipped with a warning; a step from another model, or no step that restores, is an error."""
        failures = []
        for step in reversed(self.steps()):
            try:
                self._check_fits(step, target)
                return step, self._restore(step, target)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001  damaged files raise many kinds of error
                reason = _reason(e)
                logging.getLogger(__name__).warning("skipping checkpoint step %d in %s, it does not restore: %s",
                                                    step, self.directory, reason)
                failures.append(f"step {step}: {reason}")
        if failures:  # never start over silently on top of checkpoints that exist
            raise CheckpointError(f"no checkpoint in {self.directory} restores into this run:\n  " +
                                  "\n  ".join(failures))
        return None, None

    def wait(self) -> None:
        """Wait for the write in flight; its failure is a CheckpointError naming its step."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(self._writing, e) from e
        self._writing = None

    def close(self) -> None:
        """Wait for the write in flight (an error if it fails, unless one was raised already) and close."""
        if not self._failed:
            self.wait()
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001  the failed write, raised before
            if not self._failed:
                raise
