"""python -m swin_jax.predict: the evaluation pipeline's preprocessing and top-5 output."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from swin_jax import data
from swin_jax.convert.__main__ import main as convert_main
from swin_jax.predict import class_names, main as predict_main, preprocess
from references import randomize


def photo(path, size=(300, 257), mode="RGB"):
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), np.uint8)).convert(mode).save(path)
    return path


@pytest.mark.parametrize("size, crop_pct", [(224, 0.0), (256, 0.0), (384, 0.0), (224, 1.0), (96, 0.9)])
def test_predict_and_the_eval_pipeline_give_the_same_array(tmp_path, size, crop_pct):
    """One evaluation transform: the pixels predict feeds the model are those train.py evaluates on."""
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        photo(tmp_path / split / "cat" / "a.jpg", size=(400, 333))
        photo(tmp_path / split / "cat" / "b.png", size=(211, 250), mode="L")
    config = data.default_config()
    config.update(dict(dataset="folder", data_dir=str(tmp_path), image_size=size, crop_pct=crop_pct, batch_size=2))
    batch = next(iter(data.eval_input(config)))
    pipeline = np.asarray(data.normalize(batch["image"]))
    for i, name in enumerate(("a.jpg", "b.png")):
        np.testing.assert_array_equal(preprocess(tmp_path / "val" / "cat" / name, size, crop_pct), pipeline[i])


def test_class_names_are_timms_imagenet_names():
    info = timm.data.ImageNetInfo()
    assert class_names(1000) == [info.index_to_description(i) for i in range(1000)]
    assert class_names(3) == ["class 0", "class 1", "class 2"]


def test_predict_prints_the_top5_classes_of_the_pytorch_model(tmp_path, capsys):
    tm = randomize(timm.create_model("swin_tiny_patch4_window7_224"))
    ckpt = tmp_path / "tiny.pth"
    torch.save(tm.state_dict(), ckpt)
    image = photo(tmp_path / "cat.jpg")
    x = torch.from_numpy(preprocess(image, 224)).permute(2, 0, 1)[None]
    with torch.no_grad():
        top = torch.softmax(tm(x), -1)[0].topk(5)
    names = class_names(1000)
    # Neighbours in the top 5 apart by far more than float32 rounding (~1e-6 relative): an order it cannot change.
    assert float((top.values[:-1] - top.values[1:]).min()) > 1e-4 * float(top.values[0])

    assert predict_main(["--checkpoint", str(ckpt), str(image)]) == 0  # a PyTorch file, model guessed
    loaded, *lines = capsys.readouterr().out.splitlines()
    assert loaded == (f"checkpoint: {ckpt} (checkpoint file): swin_tiny_patch4_window7_224, guessed from its "
                      "tensors; --model names another")
    assert lines[0] == str(image) and len(lines) == 6
    assert [line.split("%  ", 1)[1] for line in lines[1:]] == [names[i] for i in top.indices.tolist()]
    np.testing.assert_allclose([float(line.split("%")[0]) for line in lines[1:]], top.values.numpy() * 100, atol=0.01)

    converted = tmp_path / "converted"
    assert convert_main(["--model", "swin_tiny_patch4_window7_224", "--checkpoint", str(ckpt), "--output",
                         str(converted)]) == 0
    capsys.readouterr()
    assert predict_main(["--checkpoint", str(converted), str(image)]) == 0  # a converted directory
    loaded, *again = capsys.readouterr().out.splitlines()
    assert loaded.startswith(f"checkpoint: {converted} (converted directory): swin_tiny_patch4_window7_224 (Swin V1")
    assert again[1:] == lines[1:]


def test_predict_names_a_bad_image(tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    tm = timm.create_model("swin_tiny_patch4_window7_224")
    ckpt = tmp_path / "tiny.pth"
    torch.save(tm.state_dict(), ckpt)
    assert predict_main(["--checkpoint", str(ckpt), str(bad)]) == 1
    assert f"{bad}: not a readable image" in capsys.readouterr().err
    assert predict_main(["--checkpoint", str(ckpt), str(tmp_path / "missing.jpg")]) == 1
    assert "missing.jpg: no such image file" in capsys.readouterr().err
