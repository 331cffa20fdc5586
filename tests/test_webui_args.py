"""Host-free parts of the webui layer: argument models, image conversions, model identification,
detector-weights lookup and the error report."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lafr_core.base_model import BaseModelError, require_sd2_epsilon
from lafr_core.face import DETECTORS
from lafr_webui.args import AUTOMATIC, FROM_SETTINGS, ArgsError, ExtrasArgs, RestoreArgs
from lafr_webui.images import UnsupportedImage, array_to_pixels, pil_to_pixels, pixels_to_array, pixels_to_pil
from lafr_webui.model_check import loaded_model_info
from lafr_webui.report import image_kept
from lafr_webui.settings import detector_weights, resolve_lafr_file


# ----------------------------------------------------------------------------- args


def test_restore_args_defaults_and_checks():
    assert RestoreArgs.from_dict({"lafr_file": None, "strength": None}) == RestoreArgs()
    assert RestoreArgs.from_dict({"strength": 0}).strength == 0.0
    for bad, message in [({"detector": "yolo"}, "detector must be one of"), ({"strength": True}, "must be a number"),
                         ({"strength": float("nan")}, "must be a number"), ({"colour_correction": "auto"}, "colour_correction"),
                         ({"lafr_file": " "}, "must be a file name"), ({"typo": 1}, "unknown argument"),
                         ({"prompt": 3}, "prompt must be text")]:
        with pytest.raises(ArgsError, match=message):
            RestoreArgs.from_dict(bad)


def test_extras_args_none_means_off_and_over_settings():
    assert not ExtrasArgs.from_dict({"enable": None, "visibility": None, "lafr_file": None}).active
    assert not ExtrasArgs.from_dict({}).active
    assert not ExtrasArgs(enable=True, visibility=0.0).active
    with pytest.raises(ArgsError, match="enable must be true or false"):
        ExtrasArgs.from_dict({"enable": "yes"})

    settings = RestoreArgs(lafr_file="a.safetensors", detector="mtcnn", strength=0.3, colour_correction="lab")
    assert ExtrasArgs(enable=True, visibility=0.6).over(settings) == RestoreArgs("a.safetensors", "mtcnn", 0.6, "lab")
    assert ExtrasArgs(enable=True, lafr_file="b.safetensors").over(settings).lafr_file == "b.safetensors"
    prompted = RestoreArgs(prompt="face, sharp")
    assert ExtrasArgs(enable=True).over(prompted).prompt == "face, sharp"  # empty field: the settings' prompt
    assert ExtrasArgs.from_dict({"enable": True, "prompt": " smile "}).over(prompted).prompt == "smile"
    assert RestoreArgs().colour_for("adain") == "adain" and RestoreArgs(colour_correction="lab").colour_for("adain") == "lab"
    assert ExtrasArgs().lafr_file == FROM_SETTINGS and RestoreArgs().lafr_file == AUTOMATIC


# ----------------------------------------------------------------------------- images


def test_uint8_round_trip_is_exact_and_bad_arrays_are_refused():
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    pixels = array_to_pixels(array)
    assert pixels.shape == (1, 7, 5, 3) and pixels.dtype == torch.float32
    assert np.array_equal(pixels_to_array(pixels), array)
    with pytest.raises(UnsupportedImage, match="uint8"):
        array_to_pixels(array.astype(np.float32))
    with pytest.raises(UnsupportedImage):
        array_to_pixels(array[:, :, :2])


MODES = [("RGB", 3, "RGB"), ("RGBA", 4, "RGBA"), ("L", 1, "L"), ("LA", 4, "LA"), ("P", 3, "RGB")]


@pytest.mark.parametrize("mode, channels, back", MODES)
def test_pil_modes(mode, channels, back):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 4, 3), dtype=np.uint8)).convert(mode)
    pixels, original = pil_to_pixels(image)
    assert pixels.shape == (1, 6, 4, channels) and original == mode
    out = pixels_to_pil(pixels, original)
    assert out.mode == back and out.size == image.size
    assert np.array_equal(np.asarray(out), np.asarray(image.convert(back)))


# ----------------------------------------------------------------------------- model identification


class _Weight(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(shape), requires_grad=False)


def _unet(context: int, in_channels: int = 4) -> torch.nn.Module:
    unet = torch.nn.Module()
    unet.in_channels = in_channels
    unet.add_module("input_blocks", torch.nn.Module())
    node = unet.input_blocks
    for part in ("1", "1", "transformer_blocks", "0", "attn2"):
        node.add_module(part, torch.nn.Module())
        node = getattr(node, part)
    node.add_module("to_k", _Weight((8, context)))
    return unet


def a1111(unet, **flags):
    prediction = flags.pop("parameterization", "eps")
    model = SimpleNamespace(model=SimpleNamespace(diffusion_model=unet), parameterization=prediction)
    model.__dict__.update({"is_sd1": False, "is_sd2": False, "is_sdxl": False, **flags})
    return model


def forge(unet, prediction, **flags):
    kmodel = SimpleNamespace(diffusion_model=unet, predictor=SimpleNamespace(prediction_type=prediction))
    model = SimpleNamespace(forge_objects=SimpleNamespace(unet=SimpleNamespace(model=kmodel)))
    model.__dict__.update({"is_sd1": False, "is_sd2": False, "is_sdxl": False, **flags})
    return model


@pytest.mark.parametrize("model, ok, found", [
    (a1111(_unet(1024), is_sd2=True), True, "epsilon"),
    (a1111(_unet(1024), is_sd2=True, parameterization="v"), False, "predicts v"),
    (a1111(_unet(768), is_sd1=True), False, "sd1.x"),
    (a1111(_unet(2048), is_sdxl=True), False, "sdxl"),
    (a1111(_unet(1024, in_channels=9), is_sd2=True), False, "9 input channels"),
    (a1111(_unet(768), is_sd2=True), False, "it is sd1.x"),  # flagged SD2, but its weights are SD1-wide
    (forge(_unet(1024), "epsilon", is_sd2=True), True, "epsilon"),
    (forge(_unet(1024), "v_prediction", is_sd2=True), False, "predicts v"),
    (SimpleNamespace(), False, "unknown"),
])
def test_loaded_model_identification(model, ok, found):
    info = loaded_model_info(model)
    if ok:
        require_sd2_epsilon(info, "test")
        assert info.prediction == found
    else:
        with pytest.raises(BaseModelError, match=found):
            require_sd2_epsilon(info, "test")


# ----------------------------------------------------------------------------- folders


def test_lafr_file_resolution_and_detector_weights(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no LAFR file in"):
        resolve_lafr_file(AUTOMATIC, tmp_path)
    (tmp_path / "b.safetensors").write_bytes(b"")
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert resolve_lafr_file(AUTOMATIC, tmp_path) == tmp_path / "a.safetensors"
    assert resolve_lafr_file("b.safetensors", tmp_path) == tmp_path / "b.safetensors"
    with pytest.raises(FileNotFoundError, match="found: a.safetensors, b.safetensors"):
        resolve_lafr_file("c.safetensors", tmp_path)

    assert detector_weights("auto", tmp_path) is None
    (tmp_path / "detection_Resnet50_Final.pth").write_bytes(b"")
    assert detector_weights("auto", tmp_path) == tmp_path
    assert detector_weights("retinaface_resnet50", tmp_path) == tmp_path
    others = [d for d in DETECTORS if d.startswith("retinaface_") and d != "retinaface_resnet50"]
    assert others and all(detector_weights(d, tmp_path) is None for d in others)  # their files are not there
    assert detector_weights("mtcnn", tmp_path) is None


def test_a_bug_prints_one_report_naming_the_inputs_and_is_not_raised(capsys):
    with image_kept("a test step", {"image": np.zeros((4, 6, 3), np.uint8), "strength": 0.5}):
        raise RuntimeError("kaputt")
    err = capsys.readouterr().err
    assert "a test step" in err and "shape=(4, 6, 3)" in err and "0.5" in err and "kaputt" in err and "torch" in err
    assert [line for line in err.splitlines() if line == "RuntimeError: kaputt"] == ["RuntimeError: kaputt"]  # one traceback


def test_a_user_error_is_one_line_once_per_cause(capsys, monkeypatch):
    import lafr_webui.messages as messages

    monkeypatch.setattr(messages, "_shown", set())
    for _ in range(2):
        with image_kept("Extras", {}):
            raise FileNotFoundError("LAFR file 'x.safetensors' is not in /m/LAFR")
    with image_kept("Extras", {}):
        raise ArgsError("Extras > LAFR: unknown argument(s) ['strength']")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["[LAFR] Extras: image passed through unchanged: LAFR file 'x.safetensors' is not in /m/LAFR",
                     "[LAFR] Extras: image passed through unchanged: Extras > LAFR: unknown argument(s) ['strength']"]


def test_keyboard_interrupt_is_not_swallowed():
    with pytest.raises(KeyboardInterrupt):
        with image_kept("a test step", {}):
            raise KeyboardInterrupt
