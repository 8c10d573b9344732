"""train_and_evaluate(config, workdir): the whole training run, flat enough to read top to bottom."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from swin_jax import checkpoint, data
from swin_jax.convert import load_weights, read_class_map
from swin_jax.models import registry
from swin_jax.tasks import get_task
from swin_jax.train import optim, peers, sharding
from swin_jax.train.metrics import MetricWriter
from swin_jax.train.steps import TrainState, make_eval_step, make_train_step

log = logging.getLogger(__name__)


STEP_METRICS = {"train_loss", "grad_norm", "updated", "lr"}


class TrainingError(RuntimeError):
    """A run that cannot go on: a non-finite loss, or a configuration that cannot work."""


class SigtermFlag:
    """Notes a SIGTERM (what TPU maintenance and Kubernetes send before killing a job) so the loop can
    save and stop at the next step. Multi-process jobs also get JAX's preemption sync point, which
    makes every process stop at the same step."""

    def __init__(self):
        self.raised = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame):
        self.raised = True

    def restore(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def initialize_distributed(lost_process_timeout_s: float = 0) -> None:
    """Join the other processes of a multi-host job. TPU pods, SLURM and Open MPI are detected by JAX;
    elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. JAX's own heartbeat
    stays as the backstop, later than our PeerWatch, which names the lost process."""
    cluster = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
               "OMPI_COMM_WORLD_SIZE")
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if jax.distributed.is_initialized() or not (slurm or any(k in os.environ for k in cluster)):
        return
    kwargs = dict(heartbeat_timeout_seconds=max(100, int(3 * lost_process_timeout_s)))
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs.update(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def build_model(config, num_classes: int):
    return get_task(config).build_model(config, num_classes)


def load_init(path: str, model, class_map_path: str = "", seed: int = 0):
    """Parameters for `model` from a converted directory or a PyTorch checkpoint file, fitted to it as the
    converter fits them (bias tables resampled, position embedding resized, a head for other classes
    reset, a 22K head narrowed with `class_map_path`); what is fresh is drawn from `seed`."""
    if not os.path.exists(path):
        raise TrainingError(f"config.init_from={path!r} is neither a converted model directory nor a file")
    class_map = read_class_map(class_map_path) if class_map_path else None
    return load_weights(path, model, class_map=class_map, seed=seed)


def _check(config) -> None:
    devices = jax.device_count()
    for field, value in (("batch_size", config.batch_size),
                         ("input.eval_batch_size", config.input.eval_batch_size or config.batch_size)):
        if value % devices:
            raise TrainingError(f"config.{field}={value} must be a multiple of the {devices} devices")
    if config.grad_accum_steps < 1:
        raise TrainingError(f"config.grad_accum_steps={config.grad_accum_steps} must be at least 1")
    try:
        optim.placement(config)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def _depths(model):
    """The stage depths of the Swin inside a classifier, a segmenter (backbone) or SimMIM (encoder)."""
    for part in ("backbone", "encoder"):
        if hasattr(model, part):
            return getattr(model, part).depths
    return model.depths


def _ema_start(params, config):
    """The EMA's first value: a copy of the parameters, never the same arrays (the train step donates the
    whole state, and one buffer cannot be donated twice); None without EMA."""
    return jax.tree.map(jnp.copy, params) if config.ema_decay else None


def build_training(config, model, lr: optim.Schedule, mesh, num_classes: int):
    """The initial train state, created directly in its shardings, and the jitted train step."""
    batch_sharding = sharding.batch_sharding(mesh)
    task = get_task(config)

    def init_state():
        init_rng, run_rng = jax.random.split(jax.random.key(config.seed))
        variables = dict(task.init_variables(model, init_rng))
        params = variables.pop("params")
        opt_state = optim.optimizer(config, params, lr, _depths(model)).init(params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                          ema_params=_ema_start(params, config), rng=jax.random.key_data(run_rng),
                          model_state=variables)

    abstract = jax.eval_shape(init_state)
    state_sharding = sharding.state_shardings(abstract, mesh, config.fsdp)
    state = jax.jit(init_state, out_shardings=state_sharding)()
    tx = optim.optimizer(config, abstract.params, lr, _depths(model))
    train_step = jax.jit(make_train_step(task, model, tx, lr, config, num_classes),
                         in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    return state, state_sharding, train_step


def evaluate(task, eval_step, variables, evaluation, batch_sharding, writer=None) -> dict:
    """One pass over the evaluation input: the task's sums over every batch, then its metrics. A long pass
    shows its progress."""
    totals, started, shapes = None, time.time(), set()
    for i, batch in enumerate(data.to_global(iter(evaluation), batch_sharding), 1):
        shapes.add(tuple((k, v.shape) for k, v in sorted(batch.items())))
        totals = task.accumulate(totals, eval_step(variables, batch), evaluation)
        if writer is not None and time.time() - started > 10 and i % 10 == 0:
            writer.message(f"  evaluating: {i} of {evaluation.steps} batches, "
                           f"{i * evaluation.local_batch_size * jax.process_count() / (time.time() - started):.1f} "
                           "images/s")
    results = task.summarize(totals, evaluation)
    results["eval_batch_shapes"] = float(len(shapes))  # compilations of the eval step this pass needed
    return results


def _variables(params, model_state) -> dict:
    return {"params": params, **(model_state or {})}


def _write_config(config, workdir: str, num_classes: int) -> None:
    """workdir/config.json: the run's config with references resolved and input.num_classes set to the
    classes the data really has."""
    resolved = config.copy_and_resolve_references()
    resolved.input.num_classes = num_classes
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(resolved.to_json_best_effort(indent=2, sort_keys=True))


def _model_line(config, model, n_params: int) -> str:
    overrides = dict(config.model_overrides)
    if not overrides:
        return f"model: {registry.describe(model)}, {n_params:,} parameters"
    shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return f"model: {config.model} with {shown}, i.e. {registry.describe(model)}, {n_params:,} parameters"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (or, with config.eval_only, evaluate) as `config` says; returns the last eval metrics."""
    initialize_distributed(config.lost_process_timeout_s)
    _check(config)
    workdir = os.path.abspath(workdir)
    mesh = sharding.make_mesh()
    batch_sharding = sharding.batch_sharding(mesh)

    task = get_task(config)
    created = not os.path.exists(workdir)
    checkpoints = checkpoint.TrainCheckpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                                              best_metric=task.best_metric)
    try:
        with peers.PeerWatch(config.lost_process_timeout_s, checkpoints.describe_latest) as watch:
            return _run(config, workdir, task, checkpoints, watch, mesh, batch_sharding)
    except BaseException:
        if created and jax.process_index() == 0 and not _has_results(workdir):
            shutil.rmtree(workdir, ignore_errors=True)  # a run refused before its first step leaves no folder
        raise


def _has_results(workdir: str) -> bool:
    """Whether a run wrote anything worth keeping: a checkpoint, or a training or evaluation row."""
    if checkpoint.TrainCheckpoints.any_on_disk(os.path.join(workdir, "checkpoints")):
        return True
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return any('"train_loss"' in line or '"eval_' in line for line in f)
    except FileNotFoundError:
        return False


def _run(config, workdir, task, checkpoints, watch: peers.PeerWatch, mesh, batch_sharding) -> dict:
    training, evaluation = task.inputs(config, train=not config.eval_only)
    num_classes = evaluation.num_classes
    model = build_model(config, num_classes)
    steps_per_epoch = training.steps if training else 1
    total_steps = config.total_steps or int(config.epochs * steps_per_epoch)
    lr = optim.schedule(config, total_steps, steps_per_epoch, training=not config.eval_only)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        _write_config(config, workdir, num_classes)

    with jax.set_mesh(mesh):
        state, state_sharding, train_step = build_training(config, model, lr, mesh, num_classes)
        start_step = 0
        if not config.eval_only:
            target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_sharding)
            restored_step, restored = checkpoints.restore_latest(target)
            if restored_step is not None:
                start_step, state = restored_step, restored
                training = training.starting_at(start_step)  # the data position is a function of the step
        if config.init_from and not start_step:
            loaded = dict(load_init(config.init_from, model, config.init_class_map, config.seed))
            params = jax.device_put(loaded.pop("params"), state_sharding.params)
            model_state = jax.device_put({k: loaded.get(k, v) for k, v in state.model_state.items()},
                                         state_sharding.model_state)
            ema = jax.device_put(_ema_start(params, config), state_sharding.ema_params)
            state = state.replace(params=params, ema_params=ema, model_state=model_state)

        variables_sharding = _variables(state_sharding.params, state_sharding.model_state)
        eval_step = jax.jit(make_eval_step(task, model, config), in_shardings=(variables_sharding, batch_sharding),
                            out_shardings=sharding.replicated(mesh))

        def run_eval(step, params):
            variables = _variables(params, state.model_state)
            results = evaluate(task, eval_step, variables, evaluation, batch_sharding, writer)
            for name, images in task.previews(model, variables, evaluation, config, batch_sharding).items():
                writer.images(step, name, images)
            return results

        writer = MetricWriter(workdir, total_steps, start_step=start_step)
        n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
        writer.message(f"{_model_line(config, model, n_params)}, {num_classes} classes")
        skipped = {f"{name}_skipped_files": part.skipped_files for name, part in (("train", training), ("eval", evaluation))
                   if part is not None and part.skipped_files}
        if skipped:  # each file is named in the log above
            writer.write(start_step, skipped)
            writer.message("files left out, each named above: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
        if config.eval_only:
            results = run_eval(0, state.params)
            writer.write(0, results)
            writer.message(f"{config.input.dataset}: {task.report(results, evaluation.class_names)}")
            writer.close()
            checkpoints.close()
            return results
        if start_step >= total_steps:
            # Nothing left to train: report the final checkpoint's evaluation, and log nothing twice.
            results = evaluate(task, eval_step, _variables(state.params, state.model_state), evaluation,
                               batch_sharding)
            writer.message(f"{workdir} already holds the final checkpoint (step {start_step} of {total_steps}): "
                           f"{task.report(results, evaluation.class_names)}")
            writer.close()
            checkpoints.close()
            return results

        eval_every = config.eval_every_steps or steps_per_epoch
        writer.message(
            f"data: {config.input.dataset}, {training.num_examples:,} training examples, {steps_per_epoch} steps per "
            f"epoch | {total_steps} steps from step {start_step}, global batch {config.batch_size} on "
            f"{jax.device_count()} devices in {jax.process_count()} process(es){' with FSDP' if config.fsdp else ''}")
        if start_step:
            writer.message(f"resumed from the checkpoint of step {start_step} in {checkpoints.directory}")

        batches = data.to_global(iter(training), batch_sharding)
        first = next(batches)
        writer.message("compiling the train step ...")
        started = time.time()
        train_step = train_step.lower(state, first).compile()
        writer.message(f"compiled in {time.time() - started:.0f} s")
        batches = itertools.chain([first], batches)
        writer.restart_clock(start_step)  # speed and ETA are measured from the first compiled step

        pending, results = [], {}
        last_time, last_step = time.time(), start_step
        sigterm = SigtermFlag()
        try:
            for step in range(start_step + 1, total_steps + 1):
                watch.step = step
                checkpoints.check()  # a background write that failed stops the run now, naming its step
                state, metrics = train_step(state, next(batches))
                pending.append(metrics)
                if step % config.log_every_steps == 0 or step == total_steps:
                    values = jax.device_get(pending)
                    losses = np.array([v["train_loss"] for v in values])
                    if not np.isfinite(losses).all():
                        bad = step - len(losses) + 1 + int(np.argmin(np.isfinite(losses)))
                        raise TrainingError(f"the training loss is {losses[~np.isfinite(losses)][0]} at step {bad}; "
                                            f"stopped (checkpoints saved before step {bad} are kept in {workdir})")
                    now = time.time()
                    row = {"train_loss": float(losses.mean()), "lr": float(values[-1]["lr"]),
                           "images_per_sec": (step - last_step) * config.batch_size / (now - last_time),
                           "epoch": step / steps_per_epoch}
                    # The norm of the gradients the optimiser applied (accumulated over micro-batches).
                    norms = [v["grad_norm"] for v in values if v["updated"]]
                    if norms:
                        row["grad_norm"] = float(np.mean(norms))
                    for key in values[-1].keys() - STEP_METRICS:  # the task's own, e.g. the auxiliary loss
                        row[key] = float(np.mean([v[key] for v in values]))
                    writer.write(step, row)
                    writer.progress(step, {"loss": row["train_loss"], "lr": row["lr"], "img/s": row["images_per_sec"]})
                    pending, last_time, last_step = [], now, step
                evaluated = step % eval_every == 0 or step == total_steps
                if evaluated:
                    results = run_eval(step, state.params)
                    if config.ema_decay:
                        ema = evaluate(task, eval_step, _variables(state.ema_params, state.model_state), evaluation,
                                       batch_sharding)
                        results.update({f"ema_{k}": v for k, v in ema.items()})
                    writer.write(step, results)
                    writer.message(f"step {step}: {task.report(results, evaluation.class_names)}")
                # Every process reaches the preemption sync point at the same step, so all save together.
                preempted = sigterm.raised or checkpoints.reached_preemption(step)
                if preempted or step % config.checkpoint_every_steps == 0 or step == total_steps:
                    checkpoints.save(step, state, metrics=results if evaluated else None, force=preempted)
                if preempted:
                    writer.message(f"stopping at step {step} on SIGTERM: state saved in {checkpoints.directory}; "
                                   "run the same command to resume")
                    break
                if evaluated or step % config.checkpoint_every_steps == 0:
                    last_time = time.time()  # evaluating and saving are not training throughput
        finally:
            sigterm.restore()
            checkpoints.close()  # waits for saves in flight: nothing saved is lost, also on errors
            writer.close()
    return results
