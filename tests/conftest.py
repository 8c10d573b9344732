import atexit
import os
import shutil
import tempfile

# Eight fake CPU devices for the sharding tests; this must happen before JAX initialises.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as swin_jax.data.host sets it for users
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the fake devices are CPU devices
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow and the torch references off any GPU
# Many tests compile the same programs again (a run and its resume, train.py in fresh processes): one
# persistent compilation cache for the session, which the subprocesses inherit, compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="swin_jax_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# torchvision's native libraries crash the process when loaded after TensorFlow's (the reverse order is
# fine), and the parity tests need both: load the PyTorch side first.
import torchvision  # noqa: E402,F401

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_torch():
    """The PyTorch references draw their initial weights from torch's global generator: seeded per test,
    a test's reference is the same whichever tests ran before it in the process."""
    torch.manual_seed(0)
