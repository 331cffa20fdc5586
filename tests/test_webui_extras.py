"""Extras tab > LAFR on the fake webui: pp.info, None args (API) = off, strict arguments reported
without ending the Extras run, no face said in the infotext, the UI."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

import lafr_webui.messages as messages
from face_fixtures import DATA
from webui_fakes import FakeWebui, FlippedCopies, PostprocessedImage, fake_gradio, run_extras
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
    return FakeWebui(tmp_path / "models").install(monkeypatch).ready(sd2, lafr_file)


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


@pytest.mark.parametrize("args, message", [
    ({"enable": True, "strength": 0.5},
     "Extras > LAFR: unknown argument(s) ['strength']; expected ['enable', 'lafr_file', 'prompt', 'visibility']"),
    ({"enable": True, "visibility": 2.0}, "Extras > LAFR: visibility must be between 0 and 1, got 2.0"),
])
def test_a_bad_argument_is_one_line_and_the_image_passes_through(extras, sd2, args, message, capsys):
    source = rgba_photo()
    pp = PostprocessedImage(source)
    sd2.apply_calls = 0
    extras.process(pp, **args)  # an API typo: said, not raised
    assert pp.image is source and pp.info == {} and sd2.apply_calls == 0
    assert capsys.readouterr().err.splitlines() == [f"[LAFR] Extras: image passed through unchanged: {message}"]


def test_a_missing_lafr_file_keeps_the_rest_of_the_extras_run(extras, webui, capsys):
    """Issue 15, seen in a real A1111: today two tracebacks and an EMPTY gallery."""
    source = rgba_photo()
    gallery, infotext = run_extras(source, [(extras, {"enable": True, "visibility": 1.0, "lafr_file": "missing.safetensors"}),
                                            (FlippedCopies(), {"enable": True})])

    assert len(gallery) == 2  # the image, and the copy the later script made of it
    assert gallery[0] is source
    assert np.array_equal(np.asarray(gallery[1]), np.asarray(source)[:, ::-1])
    assert infotext == ""
    err = capsys.readouterr().err
    folder = webui.models_path / "LAFR"
    assert err.splitlines() == [
        f"[LAFR] Extras: image passed through unchanged: LAFR file 'missing.safetensors' is not in {folder} "
        "(found: faces.safetensors); pick another in Extras > LAFR"]
    assert "Traceback" not in err


def test_a_bug_in_extras_is_one_report_and_the_run_goes_on(extras, sd2, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("host exploded")

    monkeypatch.setattr(sd2, "apply_model", broken)
    source = rgba_photo()
    gallery, _ = run_extras(source, [(extras, {"enable": True, "visibility": 1.0, "lafr_file": "Use settings"}),
                                     (FlippedCopies(), {"enable": True})])
    assert len(gallery) == 2 and gallery[0] is source
    err = capsys.readouterr().err
    assert "LAFR error" in err and "Extras (the image passes through unchanged)" in err and "pp.image" in err
    ends = [line for line in err.splitlines() if line == "RuntimeError: host exploded"]
    assert len(ends) == 1  # one traceback, ours: the webui's runner never sees the error


def test_no_face_is_said_in_the_infotext_and_the_console(extras, sd2, capsys):
    blank = Image.new("RGB", (256, 256), (120, 120, 120))
    sd2.apply_calls = 0
    gallery, infotext = run_extras(blank, [(extras, {"enable": True, "visibility": 1.0, "lafr_file": "Use settings"})])
    assert gallery == [blank]
    assert infotext == "LAFR: no face found (image passed through unchanged), LAFR model: faces.safetensors"
    assert capsys.readouterr().err.splitlines() == ["[LAFR] no face found (image passed through unchanged)"]
    assert sd2.apply_calls == 0


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
    assert list(controls) == ["enable", "visibility", "lafr_file", "prompt"]
    assert set(controls) == set(ExtrasArgs.__dataclass_fields__)
    assert controls["lafr_file"].kwargs["choices"] == ["Use settings", "faces.safetensors"]
    assert isinstance(controls["enable"], InputAccordion) and controls["enable"].args == (False,)
