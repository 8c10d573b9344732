"""Train or evaluate a Swin Transformer.

  python train.py --config configs/swin_b.py --workdir DIR [--config.batch_size=4096 ...]

Each config's docstring holds the command that runs it. A run started on a workdir that holds
checkpoints continues from the latest one.
"""

import glob
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/swin_t.py", lock_config=True)
flags.DEFINE_string("workdir", None, "where metrics, TensorBoard events and checkpoints go")
flags.mark_flags_as_required(["config", "workdir"])


TCMALLOC = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
            "/usr/lib/libtcmalloc_minimal.so.4")


def preload_tcmalloc() -> None:
    """Restart this process with tcmalloc when it is installed and not loaded yet: glibc's malloc returns
    XLA:CPU's large buffers to the system and page-faults them back every step, which costs 10-60% on
    CPU hosts (input pipeline included). SWIN_JAX_TCMALLOC=0 turns this off."""
    if os.environ.get("SWIN_JAX_TCMALLOC", "1") == "0" or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    found = sorted(path for pattern in TCMALLOC for path in glob.glob(pattern))
    if found:
        preload = " ".join(filter(None, [found[0], os.environ.get("LD_PRELOAD", "")]))
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "LD_PRELOAD": preload})


def _message(error: BaseException) -> str:
    """The innermost message of a (wrapped) error, on one line."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    if isinstance(error, KeyError) and error.args:  # a misspelt field: ml_collections suggests the right one
        return "unknown config field " + " ".join(str(error.args[0]).split())
    return " ".join(str(error).split())


def parse_flags(argv):
    """absl's flag parsing, where a bad --config or --config.field is one line on stderr and exit status 2."""
    try:
        args = FLAGS(argv)
    except Exception as e:  # noqa: BLE001  config overrides fail with several kinds of error
        sys.exit(f"error: {_message(e)}")
    config_file = config_flags.get_config_filename(FLAGS["config"])
    config_file = config_file.split(".py:", 1)[0] + ".py" if ".py:" in config_file else config_file  # FILE.py:ARG
    if not os.path.isfile(config_file):
        sys.exit(f"error: --config {config_file}: no such config file")
    return args


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and JAX report every step at INFO
    from swin_jax.checkpoint import CheckpointError
    from swin_jax.convert import ConversionError
    from swin_jax.data import DataError
    from swin_jax.train import TrainingError, train_and_evaluate

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (DataError, TrainingError, ConversionError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    preload_tcmalloc()
    app.run(main, flags_parser=parse_flags)
