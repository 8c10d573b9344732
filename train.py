"""Train or evaluate a Swin Transformer.

  python train.py --config configs/swin_b.py --workdir DIR [--config.batch_size=4096 ...]

Each config's docstring holds the command that runs it. A run started on a workdir that holds
checkpoints continues from the latest one.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/swin_t.py", lock_config=True)
flags.DEFINE_string("workdir", None, "where metrics, TensorBoard events and checkpoints go")
flags.mark_flags_as_required(["config", "workdir"])


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
    app.run(main)
