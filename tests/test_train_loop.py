import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from configs import demo
from swin_jax import data
from swin_jax.train import TrainingError, train_and_evaluate
from swin_jax.train.loop import build_model
from references import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = dict(img_size=32, patch_size=2, embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12), window_size=4)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _short_demo(**overrides):
    config = demo.get_config()
    config.update(dict(total_steps=6, log_every_steps=1, eval_every_steps=3, checkpoint_every_steps=3), **overrides)
    return config


def test_demo_run_writes_metrics_tensorboard_config_and_checkpoints(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    results = train_and_evaluate(_short_demo(), workdir)
    out = capsys.readouterr().out.splitlines()
    # What is really run: the overrides and the resulting architecture, not only the registry name.
    assert out[0].startswith("model: swin_tiny_patch4_window7_224 with depths=(2, 2, 2), drop_path_rate=0.1, "
                             "embed_dim=48, num_heads=(3, 6, 12), patch_size=2, window_size=4, i.e. ")
    assert "i.e. a Swin V1 model (embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12), window_size=4, patch_size=2, " \
           "img_size=32, num_classes=10)" in out[0] and out[0].endswith("parameters, 10 classes")
    assert out.index("compiling the train step ...") < min(i for i, line in enumerate(out) if line.startswith("step "))
    rows = _rows(workdir)
    train_rows = [r for r in rows if "train_loss" in r]
    eval_rows = [r for r in rows if "eval_top1" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    for row in train_rows:
        assert {"train_loss", "lr", "grad_norm", "images_per_sec"} <= set(row) and np.isfinite(row["train_loss"])
    assert [r["step"] for r in eval_rows] == [3, 6] and eval_rows[-1]["eval_examples"] == 360
    assert {"eval_top1", "eval_top5", "eval_loss"} <= set(eval_rows[-1]) and results == {
        k: v for k, v in eval_rows[-1].items() if k != "step"}
    lrs = [r["lr"] for r in train_rows]  # 6 steps: warm-up rounds to none, cosine from the peak
    assert lrs[0] == pytest.approx(8e-3 * 64 / 512) and lrs == sorted(lrs, reverse=True)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["input"]["dataset"] == "demo" and saved["input"]["num_classes"] == 10
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]

    # The workdir as a model: predict names the checkpoint it takes, convert exports it, the Python API loads it.
    from PIL import Image
    from swin_jax.convert import load_pytorch_checkpoint
    from swin_jax.convert.__main__ import main as convert_main
    from swin_jax.predict import main as predict_main

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "digit.png")
    assert predict_main(["--checkpoint", workdir, str(tmp_path / "digit.png")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(rf"checkpoint: {re.escape(workdir)} \(train.py workdir, step [36], the best by eval_top1 "
                        r"\(0\.\d{4}\)\): a Swin V1 model .*", first), first
    assert convert_main(["--checkpoint", workdir, "--output", str(tmp_path / "demo.safetensors")]) == 0
    assert "timm layout" in capsys.readouterr().out
    model = build_model(_short_demo(), 10)
    loaded = load_pytorch_checkpoint(workdir, model)
    exported = load_pytorch_checkpoint(tmp_path / "demo.safetensors", model)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(exported)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_loss_stops_with_the_step_and_keeps_earlier_checkpoints(tmp_path):
    workdir = str(tmp_path / "nan")
    config = _short_demo(base_lr=1e35, clip_grad=0.0, checkpoint_every_steps=1)
    with pytest.raises(TrainingError, match=r"the training loss is (nan|inf) at step (\d+)") as e:
        train_and_evaluate(config, workdir)
    bad = int(str(e.value).split("at step ")[1].split(";")[0])
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert saved and max(saved) == bad - 1  # everything before the bad step is kept, nothing after
    assert all(np.isfinite(r["train_loss"]) for r in _rows(workdir) if "train_loss" in r)


def test_eval_only_gives_timm_accuracy_and_loss_for_a_pytorch_checkpoint(tmp_path):
    """--config.eval_only with init_from a PyTorch file (every tensor randomised): the top-1 and the mean
    loss timm gives on the same images."""
    import timm

    reference = randomize(timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, **DEMO_MODEL))
    path = str(tmp_path / "weights.pth")
    torch.save(reference.state_dict(), path)
    config = _short_demo(eval_only=True, init_from=path)
    results = train_and_evaluate(config, str(tmp_path / "eval"))

    hits = total = 0
    loss = 0.0
    for batch in data.eval_input(config.input):
        images = torch.from_numpy(np.array(data.normalize(batch["image"]))).permute(0, 3, 1, 2)
        with torch.no_grad():
            logits = reference(images)
        mask = torch.from_numpy(batch["mask"])
        labels = torch.from_numpy(batch["label"]).long()
        loss += float((torch.nn.functional.cross_entropy(logits, labels, reduction="none") * mask).sum())
        hits += int(((logits.argmax(-1).numpy() == batch["label"]) & batch["mask"]).sum())
        total += int(batch["mask"].sum())
    assert total == results["eval_examples"] == 360
    assert results["eval_top1"] == pytest.approx(hits / total, abs=1.5 / total)  # at most one near-tie apart
    assert results["eval_loss"] == pytest.approx(loss / total, rel=1e-5)


def _train_py(*args, timeout=900):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_config_errors_are_one_line_naming_the_field_or_file(tmp_path):
    result = _train_py("--config", "configs/demo.py", "--workdir", str(tmp_path), "--config.batchsize=8")
    assert result.returncode != 0
    assert result.stderr.strip() == ('error: unknown config field \'batchsize\' Did you mean "batch_size" instead of '
                                     '"batchsize"?')
    result = _train_py("--config", "configs/no_such_config.py", "--workdir", str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip() == "error: --config configs/no_such_config.py: no such config file"
    result = _train_py("--config", "configs/no_such_config.py:arg", "--workdir", str(tmp_path))
    assert result.stderr.strip() == "error: --config configs/no_such_config.py: no such config file"
    # FILE.py:ARG goes to get_config(ARG): the run gets as far as the data
    result = _train_py("--config", "configs/demo.py:scene", "--workdir", str(tmp_path / "refused"),
                       "--config.dataset=imagenet2013")
    assert result.returncode == 1 and "unknown dataset 'imagenet2013'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "refused")  # a run refused before its first step leaves no folder


@pytest.mark.slow
def test_swin_b_config_runs_end_to_end_on_synthetic_data(tmp_path):
    workdir = str(tmp_path / "swin_b")
    result = _train_py("--config", "configs/swin_b.py", "--workdir", workdir, "--config.dataset=synthetic",
                       "--config.batch_size=8", "--config.total_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(workdir)
    assert [r["step"] for r in rows if "train_loss" in r] == [2] and any("eval_top1" in r for r in rows)
    assert "87,768,224 parameters" in result.stdout
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["model_overrides"]["drop_path_rate"] == 0.5 and saved["input"]["rand_augment"] == "rand-m9-mstd0.5-inc1"
