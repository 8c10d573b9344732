"""python -m swin_jax.predict: official evaluation preprocessing and top-5 output."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform

from swin_jax.convert.__main__ import main as convert_main
from swin_jax.predict import main as predict_main
from swin_jax.predict import preprocess


def photo(path, size=(300, 257), mode="RGB"):
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), np.uint8)).convert(mode).save(path)
    return path


@pytest.mark.parametrize("size, crop_pct", [(224, 0.875), (384, 1.0)])
def test_preprocessing_is_the_official_eval_transform(tmp_path, size, crop_pct):
    image = Image.open(photo(tmp_path / "a.png"))
    if size == 224:
        want = create_transform(size, interpolation="bicubic", crop_pct=crop_pct)(image)
    else:  # the official 384 evaluation: a plain resize to size x size
        import torchvision.transforms as T

        want = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(image)
    got = preprocess(image, size)
    assert got.shape == (size, size, 3)
    np.testing.assert_allclose(got, want.permute(1, 2, 0).numpy(), atol=1e-5)


def test_predict_prints_the_top5_classes_of_the_pytorch_model(tmp_path, capsys):
    tm = timm.create_model("swin_tiny_patch4_window7_224").eval()
    ckpt = tmp_path / "tiny.pth"
    torch.save(tm.state_dict(), ckpt)
    image = photo(tmp_path / "cat.jpg")
    x = torch.from_numpy(preprocess(Image.open(image), 224)).permute(2, 0, 1)[None]
    with torch.no_grad():
        top = torch.softmax(tm(x), -1)[0].topk(5)
    names = [timm.data.ImageNetInfo().index_to_description(i) for i in top.indices.tolist()]

    assert predict_main(["--checkpoint", str(ckpt), str(image)]) == 0  # a PyTorch file, model guessed
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 6
    assert [line.split("%  ", 1)[1] for line in lines[1:]] == names
    np.testing.assert_allclose([float(line.split("%")[0]) for line in lines[1:]], top.values.numpy() * 100, atol=0.01)

    converted = tmp_path / "converted"
    assert convert_main(["--model", "swin_tiny_patch4_window7_224", "--checkpoint", str(ckpt), "--output",
                         str(converted)]) == 0
    capsys.readouterr()
    assert predict_main(["--checkpoint", str(converted), str(image)]) == 0  # a converted directory
    assert capsys.readouterr().out.splitlines()[1:] == lines[1:]


def test_predict_names_a_bad_image(tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    tm = timm.create_model("swin_tiny_patch4_window7_224")
    ckpt = tmp_path / "tiny.pth"
    torch.save(tm.state_dict(), ckpt)
    assert predict_main(["--checkpoint", str(ckpt), str(bad)]) == 1
    assert f"{bad}: not a readable image" in capsys.readouterr().err
