"""Extras tab > LAFR on the fake webui: pp.info, None args (API) = off, strict arguments, the UI."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

import lafr_webui.messages as messages
from face_fixtures import DATA
from webui_fakes import FakeWebui, PostprocessedImage, fake_gradio
from webui_models import FakeLatentDiffusion, lafr_weights, write_lafr_file


@pytest.fixture(scope="module")
def sd2():
    return FakeLatentDiffusion()


@pytest.fixture(scope="module")
def lafr_file(sd2, tmp_path_factory):
    return write_lafr_file(tmp_path_factory.mktemp("lafr") / "faces.safetensors", lafr_weights(sd2))


@pytest.fixture
def webui(tmp_path, monkeypatch, sd2, lafr_file):
    monkeypatch.setattr(messages, "_shown", set())
    webui = FakeWebui(tmp_path / "models").install(monkeypatch)
    (webui.models_path / "LAFR").mkdir(parents=True)
    (webui.models_path / "LAFR" / lafr_file.name).symlink_to(lafr_file)
    webui.shared.sd_model = sd2
    webui.shared.opts.lafr_detector = "mtcnn"
    webui.load_script()
    return webui


@pytest.fixture
def extras(webui):
    from lafr_webui.extras import LafrExtras

    return LafrExtras()


def rgba_photo() -> Image.Image:
    rgb = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB"))
    alpha = np.tile(np.arange(rgb.shape[1], dtype=np.uint8)[None, :], (rgb.shape[0], 1))
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def test_process_restores_and_writes_its_parameters_into_pp_info(extras, sd2):
    source = rgba_photo()
    pp = PostprocessedImage(source)
    sd2.apply_calls = 0

    extras.process(pp, enable=True, visibility=0.75, lafr_file="Use settings")

    assert pp.info == {"LAFR visibility": 0.75, "LAFR model": "faces.safetensors", "LAFR faces": 1}
    assert pp.image is not source and pp.image.mode == "RGBA" and pp.image.size == source.size
    out, before = np.asarray(pp.image), np.asarray(source)
    assert np.array_equal(out[..., 3], before[..., 3])  # alpha untouched
    assert np.abs(out[90:150, 195:255, :3].astype(int) - before[90:150, 195:255, :3]).mean() > 3
    assert np.array_equal(out[:40, :40], before[:40, :40])
    assert sd2.apply_calls == 1


@pytest.mark.parametrize("args", [
    {"enable": None, "visibility": None, "lafr_file": None},  # an API call that leaves LAFR out
    {"enable": False, "visibility": 1.0, "lafr_file": "Use settings"},
    {"enable": True, "visibility": 0.0, "lafr_file": "Use settings"},
])
def test_none_args_and_disabled_mean_off(extras, sd2, args):
    source = rgba_photo()
    pp = PostprocessedImage(source)
    sd2.apply_calls = 0
    extras.process(pp, **args)
    assert pp.image is source and pp.info == {}
    assert sd2.apply_calls == 0


def test_unknown_or_invalid_arguments_are_errors(extras, capsys):
    from lafr_webui.args import ArgsError

    with pytest.raises(ArgsError, match="unknown argument.*'strength'"):
        extras.process(PostprocessedImage(rgba_photo()), enable=True, strength=0.5)
    with pytest.raises(ArgsError, match="visibility must be between 0 and 1"):
        extras.process(PostprocessedImage(rgba_photo()), enable=True, visibility=2.0)
    assert "LAFR error" in capsys.readouterr().err  # the report block for the webui console


def test_a_file_not_in_models_lafr_is_an_error_naming_the_folder(extras, webui):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        extras.process(PostprocessedImage(rgba_photo()), enable=True, visibility=1.0, lafr_file="missing.safetensors")


def test_refused_checkpoint_leaves_the_image_and_info_alone(extras, webui, capsys):
    webui.shared.sd_model = FakeLatentDiffusion(family="sd1", context=768)
    source = rgba_photo()
    pp = PostprocessedImage(source)
    extras.process(pp, enable=True, visibility=1.0, lafr_file="Use settings")
    assert pp.image is source and pp.info == {}
    assert "sd1.x" in capsys.readouterr().err


def test_ui_components_are_the_process_arguments(extras, monkeypatch):
    gradio = fake_gradio()

    class InputAccordion(gradio.Component):
        pass

    monkeypatch.setitem(sys.modules, "gradio", gradio)
    ui_components = types.ModuleType("modules.ui_components")
    ui_components.InputAccordion = InputAccordion
    monkeypatch.setitem(sys.modules, "modules.ui_components", ui_components)
    monkeypatch.setattr(sys.modules["modules"], "ui_components", ui_components, raising=False)

    from lafr_webui.args import ExtrasArgs

    controls = extras.ui()
    assert list(controls) == ["enable", "visibility", "lafr_file"]
    assert set(controls) == set(ExtrasArgs.__dataclass_fields__)
    assert controls["lafr_file"].kwargs["choices"] == ["Use settings", "faces.safetensors"]
    assert isinstance(controls["enable"], InputAccordion) and controls["enable"].args == (False,)
