"""The recogniser behind convert, predict and load_pytorch_checkpoint: folders as Hugging Face and timm
save them, models guessed from the tensors with the guess printed, ambiguity named, flags that do
nothing refused."""

import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import SwinConfig, Swinv2Config, Swinv2ForImageClassification, UperNetConfig, UperNetForSemanticSegmentation

import swin_jax
from references import randomize
from swin_jax.convert import ConversionError, recognise
from swin_jax.convert.__main__ import main as convert_main
from swin_jax.predict import main as predict_main


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    from timm.models._hub import save_for_hf

    root = tmp_path_factory.mktemp("timm")
    model = randomize(timm.create_model("swin_tiny_patch4_window7_224", num_classes=5))
    save_for_hf(model, str(root / "folder"), safe_serialization=True)
    return root / "folder", model


@pytest.fixture(scope="module")
def hf_upernet_folder(tmp_path_factory):
    backbone = SwinConfig(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"], hidden_act="gelu", layer_norm_eps=1e-5)
    labels = {0: "background", 1: "cat", 2: "dog"}
    hf = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=3, id2label=labels,
                                                      label2id={v: k for k, v in labels.items()}, hidden_size=32,
                                                      auxiliary_channels=16))
    randomize(hf)
    folder = tmp_path_factory.mktemp("hf") / "upernet"
    hf.save_pretrained(folder)
    return folder


def _image(path, seed=0):
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 255, (48, 64, 3)).astype(np.uint8)).save(path)
    return path


def test_a_timm_folder_converts_predicts_and_loads_without_a_model_name(timm_folder, tmp_path, capsys):
    folder, tm = timm_folder
    assert recognise.recognise(folder).what == recognise.PRETRAINED_FOLDER
    assert convert_main(["--checkpoint", str(folder), "--output", str(tmp_path / "converted")]) == 0
    out = capsys.readouterr().out
    assert f"guessed model: swin_tiny_patch4_window7_224 (from the tensors of {folder / 'model.safetensors'})" in out

    model = swin_jax.create_model("swin_tiny_patch4_window7_224", num_classes=5)
    variables = swin_jax.load_pytorch_checkpoint(folder, model)  # the Python API takes the folder
    x = np.random.RandomState(0).randn(1, 224, 224, 3).astype(np.float32)
    with torch.no_grad():
        expected = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), expected, rtol=1e-4, atol=1e-4)
    name, arguments, guessed, same = swin_jax.convert.model_from_pytorch(recognise.recognise(folder))  # the model too
    assert (name, arguments.get("num_classes")) == ("swin_tiny_patch4_window7_224", 5)
    np.testing.assert_array_equal(np.asarray(guessed.apply(same, x)), np.asarray(model.apply(variables, x)))
    converted = swin_jax.load_pytorch_checkpoint(tmp_path / "converted", model)  # and a converted directory
    np.testing.assert_array_equal(np.asarray(model.apply(converted, x)), np.asarray(model.apply(variables, x)))

    image = _image(tmp_path / "cat.png")
    assert predict_main(["--checkpoint", str(folder), str(image)]) == 0
    loaded, *lines = capsys.readouterr().out.splitlines()
    assert loaded.startswith(f"checkpoint: {folder / 'model.safetensors'} (save_pretrained folder): "
                             "swin_tiny_patch4_window7_224, guessed")
    assert lines[0] == str(image) and len(lines) == 6 and all("%  class " in line for line in lines[1:])

    assert predict_main(["--checkpoint", str(folder), str(image), "--output", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert "--output does nothing for a classifier (--output is for segmenters and SimMIM models and detectors)" in err
    assert not os.path.exists(tmp_path / "o.png")
    assert predict_main(["--checkpoint", str(tmp_path / "converted"), "--model", "swin_tiny_patch4_window7_224",
                         str(image)]) == 1
    assert "which knows its model" in capsys.readouterr().err


def test_a_hugging_face_upernet_folder_converts_and_predicts_with_its_class_names(hf_upernet_folder, tmp_path, capsys):
    folder = hf_upernet_folder
    assert convert_main(["--checkpoint", str(folder), "--output", str(tmp_path / "converted")]) == 0
    assert "guessed model: upernet_swin_tiny_patch4_window7_224" in capsys.readouterr().out

    model = swin_jax.create_model("upernet_swin_tiny_patch4_window7_224", num_classes=3, channels=32,
                                  auxiliary_channels=16)
    from_folder = swin_jax.load_pytorch_checkpoint(folder, model)
    from_converted = swin_jax.load_pytorch_checkpoint(tmp_path / "converted", model)
    for a, b in zip(*(jax_leaves(v) for v in (from_folder, from_converted))):
        np.testing.assert_array_equal(a, b)

    image = _image(tmp_path / "street.png", seed=3)
    output = tmp_path / "mask.png"
    assert predict_main(["--checkpoint", str(folder), str(image), "--output", str(output), "--scale", "64", "64"]) == 0
    printed = capsys.readouterr().out
    assert "upernet_swin_tiny_patch4_window7_224, guessed from its tensors" in printed
    shares = [line.split("%  ")[1] for line in printed.splitlines() if "%  " in line]
    assert shares and set(shares) <= {"background", "cat", "dog"}  # the folder's id2label

    # The overlay: background pixels are the image's own, the others blended; a legend below.
    picture = np.asarray(Image.open(image)).astype(np.float64)
    mask = np.asarray(Image.open(output))
    overlay = np.asarray(Image.open(tmp_path / "mask_overlay.png"))
    background = (mask == 0).all(-1)
    top = overlay[:picture.shape[0]]
    np.testing.assert_array_equal(top[background], picture[background])
    np.testing.assert_array_equal(top[~background], np.round(0.5 * picture + 0.5 * mask)[~background])
    assert overlay.shape[0] > picture.shape[0] if (~background).any() else overlay.shape[0] == picture.shape[0]

    assert predict_main(["--checkpoint", str(tmp_path / "converted"), str(image), "--output",
                         str(tmp_path / "again.png"), "--scale", "64", "64"]) == 0
    again = [line.split("%  ")[1] for line in capsys.readouterr().out.splitlines() if "%  " in line]
    assert again == shares  # the converted directory keeps the class names
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), mask)

    assert predict_main(["--checkpoint", str(folder), str(image), "--output", str(output), "--mask-seed", "1"]) == 1
    assert "--mask-seed does nothing for a segmenter (--mask-seed is for SimMIM models)" in capsys.readouterr().err


def jax_leaves(variables):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(variables)]


def test_tensors_that_fit_several_models_are_an_error_naming_them(tmp_path, capsys):
    config = Swinv2Config(image_size=256, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=8,
                          num_labels=4)
    hf = Swinv2ForImageClassification(config)
    path = tmp_path / "swinv2.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    assert convert_main(["--checkpoint", str(path), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert ("fit several models, which differ in what the tensors do not show (input size, window): "
            "swinv2_tiny_window8_256, swinv2_tiny_window16_256; name one with --model") in err
    assert not os.path.exists(tmp_path / "out")
    hf.save_pretrained(tmp_path / "folder")  # its config.json names the window and size: no ambiguity
    assert convert_main(["--checkpoint", str(tmp_path / "folder"), "--output", str(tmp_path / "out")]) == 0
    assert "guessed model: swinv2_tiny_window8_256" in capsys.readouterr().out


def test_a_folder_without_a_model_names_what_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="holds no model; expected a checkpoint file .* save_pretrained folder"):
        recognise.recognise(tmp_path / "empty")
    with pytest.raises(ConversionError, match="checkpoint not found"):
        recognise.recognise(tmp_path / "nope.pth")
