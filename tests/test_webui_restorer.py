"""The "LAFR" face restorer and the scripts/lafr_a1111.py entry point on a fake A1111 `modules`
tree (webui_fakes) with a tiny SD2 model (webui_models): registration and dedupe on "Reload UI",
Settings > LAFR, a real restore of a photo, refusal of SD1.5 / v-prediction, interrupts, errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import lafr_webui.messages as messages
from webui_fakes import FakeWebui, ScriptPostprocessing, fake_gradio, lafr_entries, photo
from webui_models import FakeLatentDiffusion, lafr_weights, write_lafr_file

FILE_NAME = "tiny_lafr.safetensors"


@pytest.fixture(scope="module")
def sd2():
    return FakeLatentDiffusion()


@pytest.fixture(scope="module")
def lafr_file(sd2, tmp_path_factory):
    return write_lafr_file(tmp_path_factory.mktemp("lafr") / FILE_NAME, lafr_weights(sd2))


@pytest.fixture
def webui(tmp_path, monkeypatch):
    monkeypatch.setattr(messages, "_shown", set())
    return FakeWebui(tmp_path / "models").install(monkeypatch)


@pytest.fixture
def ready(webui, sd2, lafr_file):
    """The fake webui with the extension loaded, SD2 model loaded, a LAFR file and MTCNN chosen."""
    folder = webui.models_path / "LAFR"
    folder.mkdir(parents=True)
    (folder / FILE_NAME).symlink_to(lafr_file)
    webui.shared.sd_model = sd2
    webui.shared.opts.lafr_detector = "mtcnn"  # offline and deterministic
    webui.load_script()
    return webui


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model, before):
    return [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]


# ----------------------------------------------------------------------------- registration


class StaleLafr:
    """What an older import of the extension left in the list."""

    def name(self):
        return "LAFR"


class Other:
    def name(self):
        return "CodeFormer"


def test_registration_on_import_and_dedupe_on_reload_ui(webui):
    webui.shared.face_restorers[:] = [Other(), StaleLafr(), StaleLafr()]
    restorers = webui.shared.face_restorers

    first = webui.load_script()
    assert restorers is webui.shared.face_restorers  # edited in place: the webui holds this list
    assert [r.name() for r in restorers] == ["CodeFormer", "LAFR"]
    registered = lafr_entries(webui)[0]
    assert type(registered).__module__ == "lafr_webui.restorer"

    second = webui.load_script()  # "Reload UI" re-imports the script; lafr_webui stays cached
    assert [r.name() for r in restorers] == ["CodeFormer", "LAFR"]
    assert lafr_entries(webui)[0] is not registered  # the fresh object replaced the stale one
    assert first is not second
    assert (webui.models_path / "LAFR").is_dir()
    assert webui.ui_settings_callbacks[-1].__name__ == "add_settings"


def test_the_script_module_exposes_exactly_one_postprocessing_script(webui):
    module = webui.load_script()
    found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, ScriptPostprocessing)]
    assert [cls.__name__ for cls in found] == ["LafrExtras"]
    assert found[0].name == "LAFR"


def test_settings_section(webui, monkeypatch, sd2, lafr_file):
    monkeypatch.setitem(sys.modules, "gradio", fake_gradio())
    (webui.models_path / "LAFR" / "sub").mkdir(parents=True)
    (webui.models_path / "LAFR" / "sub" / "b.safetensors").symlink_to(lafr_file)
    (webui.models_path / "LAFR" / "notes.txt").write_text("not a model")
    webui.load_script()
    webui.build_settings()

    from lafr_webui.args import RestoreArgs
    from lafr_webui.settings import OPTION_FIELDS, read_settings

    labels = webui.shared.opts.data_labels
    assert sorted(labels) == sorted(OPTION_FIELDS)
    assert {labels[k].section for k in labels} == {("lafr", "LAFR")}
    assert {labels[k].category_id for k in labels} == {"postprocessing"}
    assert labels["lafr_file"].component_args()["choices"] == ["Automatic", "sub/b.safetensors"]
    assert labels["lafr_detector"].component_args["choices"][0] == "auto"
    assert labels["lafr_colour_correction"].component_args["choices"][:2] == ["file default", "none"]
    assert labels["lafr_prompt"].label == "LAFR prompt" and labels["lafr_prompt"].default == ""
    defaults = read_settings(webui.shared.opts)
    assert defaults == RestoreArgs("Automatic", "auto", 1.0, "file default", "")
    webui.shared.opts.lafr_prompt = "  a face, sharp  "
    assert read_settings(webui.shared.opts).prompt == "a face, sharp"

    webui.shared.opts.lafr_strength = 1.5
    from lafr_webui.args import ArgsError

    with pytest.raises(ArgsError, match="strength must be between 0 and 1"):
        read_settings(webui.shared.opts)


# ----------------------------------------------------------------------------- restoring


def test_restore_a_photo_through_the_loaded_model(ready, sd2, capsys):
    image = photo()
    unet = sd2.model.diffusion_model
    before = _snapshot(unet)
    sd2.apply_calls = 0
    restorer = lafr_entries(ready)[0]

    out = restorer.restore(image)

    assert out.dtype == np.uint8 and out.shape == image.shape
    face = (slice(90, 150), slice(195, 255))  # around the hand-checked eyes/nose/mouth of astronaut.png
    assert np.abs(out[face].astype(int) - image[face]).mean() > 5  # the face was replaced
    assert np.array_equal(out[:40, :40], image[:40, :40]) and np.array_equal(out[-40:, -40:], image[-40:, -40:])
    assert sd2.apply_calls == 1  # all faces in one UNet forward
    assert not _changed(unet, before)
    assert not [n for n, m in unet.named_modules() if m._forward_hooks]
    state = ready.shared.state
    assert (state.textinfo, state.sampling_step, state.sampling_steps) == (None, 0, 0)  # put back
    assert any(text.endswith("1/1 faces") and steps == 1 for _, steps, text in state.seen)
    assert ready.gc_calls >= 1
    assert "[LAFR]" not in capsys.readouterr().err


@pytest.mark.parametrize("family, parameterization, found", [("sd1", "eps", "sd1.x"), ("sd2", "v", "predicts v")])
def test_other_checkpoints_are_refused_once_and_images_pass_through(ready, family, parameterization, found, capsys):
    other = FakeLatentDiffusion(family=family, parameterization=parameterization, context=768 if family == "sd1" else 1024)
    ready.shared.sd_model = other
    restorer = lafr_entries(ready)[0]
    image = photo()

    first, second = restorer.restore(image), restorer.restore(image)

    assert np.array_equal(first, image) and np.array_equal(second, image)
    assert other.apply_calls == 0 and other.first_stage_model.encode_calls == 0
    err = capsys.readouterr().err
    assert err.count("[LAFR]") == 1
    assert found in err and "SD2.1-base" in err and other.sd_checkpoint_info.title in err


@pytest.mark.parametrize("family, parameterization, facts", [
    ("sd1", "eps", ["sd1.x", "cross-attention 768", "tiny-sd1-eps.safetensors"]),
    ("sd2", "v", ["predicts v", "cross-attention 1024", "tiny-sd2-v.safetensors"]),
])
def test_the_refusal_says_each_fact_once(ready, family, parameterization, facts, capsys):
    other = FakeLatentDiffusion(family=family, parameterization=parameterization, context=768 if family == "sd1" else 1024)
    ready.shared.sd_model = other
    lafr_entries(ready)[0].restore(photo())
    err = capsys.readouterr().err
    assert err.startswith("[LAFR] the loaded checkpoint ")
    assert {fact: err.count(fact) for fact in facts} == {fact: 1 for fact in facts}, err
    assert "v_prediction" not in err and "unknown" not in err, err


def test_no_face_is_said_in_one_line_and_the_image_passes_through(ready, sd2, capsys):
    image = np.full((256, 256, 3), 128, np.uint8)
    image[:, :128] = 40  # two flat halves: nothing a detector calls a face
    sd2.apply_calls = 0
    restorer = lafr_entries(ready)[0]

    for _ in range(2):
        assert np.array_equal(restorer.restore(image), image)
        assert capsys.readouterr().err.splitlines() == ["[LAFR] no face found (image passed through unchanged)"]
    assert sd2.apply_calls == 0


def test_interrupt_returns_the_image_unchanged(ready, sd2):
    ready.shared.state.interrupted = True
    sd2.apply_calls = 0
    image = photo()
    assert np.array_equal(lafr_entries(ready)[0].restore(image), image)
    assert sd2.apply_calls == 0
    assert ready.gc_calls >= 1


def test_a_missing_lafr_file_is_explained_once(webui, sd2, capsys):
    webui.shared.sd_model = sd2
    webui.load_script()
    restorer = lafr_entries(webui)[0]
    image = photo()
    assert np.array_equal(restorer.restore(image), image)
    assert np.array_equal(restorer.restore(image), image)
    err = capsys.readouterr().err
    assert err.count("[LAFR]") == 1
    assert str(webui.models_path / "LAFR") in err


def test_an_unexpected_error_is_reported_and_the_image_kept(ready, sd2, monkeypatch, capsys):
    unet = sd2.model.diffusion_model
    before = _snapshot(unet)

    def broken(*args, **kwargs):
        raise RuntimeError("host exploded")

    monkeypatch.setattr(sd2, "apply_model", broken)
    image = photo()
    assert np.array_equal(lafr_entries(ready)[0].restore(image), image)
    err = capsys.readouterr().err
    assert "LAFR error" in err and "host exploded" in err and "np_image" in err
    assert not _changed(unet, before)
    assert ready.shared.state.textinfo is None


def test_no_loaded_checkpoint_is_explained_once(webui, capsys):
    webui.load_script()
    image = photo()
    restorer = lafr_entries(webui)[0]
    assert np.array_equal(restorer.restore(image), image) and np.array_equal(restorer.restore(image), image)
    err = capsys.readouterr().err
    assert err.count("[LAFR]") == 1 and "no checkpoint is loaded" in err


def test_forge_loads_the_users_selected_checkpoint_lazily(webui, monkeypatch, capsys):
    """Forge's shared.sd_model stays None until a generation calls sd_models.forge_model_reload()."""
    reloads = []

    def forge_model_reload():
        reloads.append(1)
        webui.shared.sd_model = FakeLatentDiffusion(family="sd1", context=768)  # what the user selected

    sd_models = types.ModuleType("modules.sd_models")
    sd_models.forge_model_reload = forge_model_reload
    monkeypatch.setitem(sys.modules, "modules.sd_models", sd_models)
    monkeypatch.setattr(sys.modules["modules"], "sd_models", sd_models, raising=False)
    webui.load_script()
    image = photo()
    assert np.array_equal(lafr_entries(webui)[0].restore(image), image)
    assert reloads == [1]
    assert "sd1.x" in capsys.readouterr().err  # the loaded checkpoint was then checked (and refused)
