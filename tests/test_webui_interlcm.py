"""A converted InterLCM file in A1111/Forge (issue #13): the "LAFR" face restorer and Extras > LAFR
run it on the user's own LCM Dreamshaper v7 (models/diffusers) and CLIP ViT-B/16
(models/clip_vision) through the standalone pipeline, whatever checkpoint is loaded. On the fake
webui (webui_fakes) with tiny random models saved as the folders a user downloads
(interlcm_fixtures) and a real portrait: the output is restore_faces with interlcm_engine on the
same pipeline; the seed and colour come from Settings > LAFR; a LAFR file still runs LAFR's engine
on the loaded checkpoint (and frees the InterLCM pipeline); missing folders pass the image through
with one line naming every place looked; nothing raises into the webui."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import lafr_webui.interlcm as interlcm_mod  # noqa: E402
import lafr_webui.messages as messages  # noqa: E402
from interlcm_fixtures import home, tiny  # noqa: E402, F401 - fixtures are used by name
from lafr_core.host_chain import FaceOptions, restore_faces  # noqa: E402
from lafr_core.interlcm.engine import interlcm_engine  # noqa: E402
from lafr_core.interlcm.pipeline import InterLCMPipeline  # noqa: E402
from lafr_webui.images import array_to_pixels, pixels_to_array  # noqa: E402
from webui_fakes import FakeWebui, FlippedCopies, PostprocessedImage, fake_gradio, lafr_entries, photo, run_extras  # noqa: E402
from webui_models import FakeLatentDiffusion, lafr_weights, write_lafr_file  # noqa: E402

INTERLCM = "interlcm_1step.safetensors"
LAFR = "tiny_lafr.safetensors"
FACE = (slice(90, 150), slice(195, 255))  # around the eyes, nose and mouth of astronaut.png


@pytest.fixture(scope="module")
def sd2():
    return FakeLatentDiffusion()


@pytest.fixture(scope="module")
def lafr_file(sd2, tmp_path_factory):
    return write_lafr_file(tmp_path_factory.mktemp("lafr") / LAFR, lafr_weights(sd2))


@pytest.fixture
def webui(tmp_path, monkeypatch, home, tiny, lafr_file):
    """The extension loaded, both files in models/LAFR, Settings > LAFR on the InterLCM file and
    MTCNN, no checkpoint loaded; the base models are NOT in place yet (see `models_in_place`)."""
    monkeypatch.setattr(messages, "_shown", set())
    monkeypatch.setattr(interlcm_mod, "_cache", {})
    webui = FakeWebui(tmp_path / "models").install(monkeypatch)
    folder = webui.models_path / "LAFR"
    folder.mkdir(parents=True)
    (folder / INTERLCM).symlink_to(tiny.file)
    (folder / LAFR).symlink_to(lafr_file)
    webui.shared.opts.lafr_detector = "mtcnn"  # offline and deterministic
    webui.shared.opts.lafr_file = INTERLCM
    webui.load_script()
    return webui


def put_lcm(webui, tiny) -> Path:
    target = webui.models_path / "diffusers" / "LCM_Dreamshaper_v7"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(tiny.lcm, target_is_directory=True)
    return target


def put_clip(webui, tiny) -> Path:
    target = webui.models_path / "clip_vision" / "clip-vit-base-patch16"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(tiny.clip, target_is_directory=True)
    return target


@pytest.fixture
def ready(webui, tiny):
    put_lcm(webui, tiny)
    put_clip(webui, tiny)
    return webui


def reference(pipe, image: np.ndarray, colour: str = "wavelet") -> np.ndarray:
    """restore_faces with interlcm_engine on `pipe`, as the CLI runs it, at the webui's uint8 edge."""
    result = restore_faces(array_to_pixels(image), interlcm_engine(pipe), FaceOptions(detector="mtcnn", colour_correction=colour))
    return pixels_to_array(result.images)


def cached_pipe():
    return interlcm_mod._cache["pipe"]


# ----------------------------------------------------------------------------- face restorer


def test_face_restorer_runs_the_interlcm_file_without_a_checkpoint(ready, tiny, capsys):
    image = photo()
    out = lafr_entries(ready)[0].restore(image)

    assert out.dtype == np.uint8 and out.shape == image.shape
    pipe = cached_pipe()
    assert (pipe.device, pipe.dtype, pipe.seed) == (torch.device("cpu"), torch.float32, 0)  # fp32 on CPU, the seed setting's default
    assert np.array_equal(out, reference(pipe, image))
    fresh = InterLCMPipeline.from_pretrained(tiny.lcm, tiny.clip, tiny.file, seed=0, device="cpu")  # what the CLI loads
    assert np.array_equal(out, reference(fresh, image))
    assert np.abs(out[FACE].astype(int) - image[FACE]).mean() > 5  # random weights: the face was replaced
    assert np.array_equal(out[:40, :40], image[:40, :40]) and np.array_equal(out[-40:, -40:], image[-40:, -40:])
    assert ready.shared.sd_model is None  # no checkpoint was needed, loaded or asked for
    state = ready.shared.state
    assert (state.textinfo, state.sampling_step, state.sampling_steps) == (None, 0, 0)
    assert any(text.endswith("1/1 faces") for _, _, text in state.seen)
    assert ready.gc_calls >= 1
    assert "[LAFR]" not in capsys.readouterr().err

    again = lafr_entries(ready)[0].restore(image)
    assert cached_pipe() is pipe and np.array_equal(again, out)  # loaded once


def test_seed_and_colour_come_from_settings(ready):
    image = photo()
    restorer = lafr_entries(ready)[0]
    default = restorer.restore(image)
    pipe = cached_pipe()

    ready.shared.opts.lafr_interlcm_seed = 7
    seeded = restorer.restore(image)
    assert cached_pipe() is pipe  # another seed is not another load
    assert np.array_equal(seeded, reference(dataclasses.replace(pipe, seed=7), image))
    assert np.abs(seeded[FACE].astype(int) - default[FACE]).mean() > 1  # other noise, another face

    ready.shared.opts.lafr_interlcm_seed = 0
    ready.shared.opts.lafr_colour_correction = "none"
    raw = restorer.restore(image)
    assert np.array_equal(raw, reference(pipe, image, colour="none"))
    assert not np.array_equal(raw, default)  # "file default" was the file's wavelet fix
    ready.shared.opts.lafr_colour_correction = "wavelet"
    assert np.array_equal(restorer.restore(image), default)


def test_switching_to_a_lafr_file_runs_lafrs_engine_and_frees_the_pipeline(ready, sd2, tiny):
    image = photo()
    restorer = lafr_entries(ready)[0]
    interlcm_out = restorer.restore(image)
    first = cached_pipe()

    ready.shared.sd_model = sd2
    ready.shared.opts.lafr_file = LAFR
    sd2.apply_calls = 0
    gc_before = ready.gc_calls
    lafr_out = restorer.restore(image)
    assert sd2.apply_calls == 1  # LAFR's one UNet step on the loaded checkpoint
    assert interlcm_mod._cache == {} and ready.gc_calls > gc_before  # the InterLCM pipeline was dropped
    assert np.abs(lafr_out[FACE].astype(int) - image[FACE]).mean() > 5
    assert np.abs(lafr_out[FACE].astype(int) - interlcm_out[FACE]).mean() > 1

    ready.shared.opts.lafr_file = INTERLCM
    sd2.apply_calls = 0
    assert np.array_equal(restorer.restore(image), interlcm_out)
    assert sd2.apply_calls == 0 and cached_pipe() is not first  # loaded again

    unet_config = tiny.lcm / "unet" / "config.json"  # a replaced model file is reloaded
    stat = unet_config.stat()
    reloaded = cached_pipe()
    try:
        os.utime(unet_config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        restorer.restore(image)
        assert cached_pipe() is not reloaded
    finally:
        os.utime(unet_config, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# ----------------------------------------------------------------------------- Extras


def test_extras_restores_with_interlcm_and_writes_engine_and_seed(ready, tiny):
    from lafr_webui.extras import LafrExtras

    source = Image.fromarray(photo())
    pp = PostprocessedImage(source)
    LafrExtras().process(pp, enable=True, visibility=1.0, lafr_file="Use settings")

    assert pp.info == {"LAFR visibility": 1.0, "LAFR model": INTERLCM, "LAFR faces": 1, "LAFR engine": "InterLCM", "LAFR seed": 0}
    assert pp.image.mode == "RGB" and np.array_equal(np.asarray(pp.image), reference(cached_pipe(), photo()))


def test_extras_picks_the_interlcm_file_while_settings_name_a_lafr_file(ready, sd2):
    """Comparing the engines on one photo: Settings on the LAFR file, Extras names the InterLCM one;
    the next script (flipped copies) still gets the restored image."""
    from lafr_webui.extras import LafrExtras

    ready.shared.sd_model = sd2
    ready.shared.opts.lafr_file = LAFR
    ready.shared.opts.lafr_interlcm_seed = 3
    sd2.apply_calls = 0
    source = Image.fromarray(photo())
    gallery, infotext = run_extras(source, [(LafrExtras(), {"enable": True, "visibility": 1.0, "lafr_file": INTERLCM}),
                                            (FlippedCopies(), {"enable": True})])
    assert len(gallery) == 2 and sd2.apply_calls == 0
    expected = reference(dataclasses.replace(cached_pipe(), seed=3), photo())
    assert np.array_equal(np.asarray(gallery[0]), expected) and np.array_equal(np.asarray(gallery[1]), expected[:, ::-1])
    assert infotext == f"LAFR visibility: 1.0, LAFR model: {INTERLCM}, LAFR faces: 1, LAFR engine: InterLCM, LAFR seed: 3"


# ----------------------------------------------------------------------------- missing or broken base models


def test_missing_lcm_and_clip_pass_the_image_through_with_one_line(webui, home, capsys):
    image = photo()
    restorer = lafr_entries(webui)[0]
    assert np.array_equal(restorer.restore(image), image)
    assert np.array_equal(restorer.restore(image), image)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[LAFR]")]
    assert len(lines) == 1  # one line, once
    line = lines[0]
    assert line.startswith(f"[LAFR] face restoration: image passed through unchanged: the InterLCM file {INTERLCM} needs LCM Dreamshaper v7")
    models = webui.models_path
    for place in (f"{models / 'diffusers'} (and its subfolders)", "LAFR_LCM_MODEL (not set)", f"{home}/ComfyUI/models/diffusers",
                  "(SimianLuo/LCM_Dreamshaper_v7)", f"{models / 'clip_vision'} (and its subfolders)", "LAFR_CLIP_VISION (not set)",
                  f"{home}/ComfyUI/models/clip_vision", "(openai/clip-vit-base-patch16)", f"{home}/.cache/huggingface/hub"):
        assert place in line, place
    assert f"--local-dir {models / 'diffusers' / 'LCM_Dreamshaper_v7'}" in line
    assert f"--local-dir {models / 'clip_vision' / 'clip-vit-base-patch16'}" in line
    assert interlcm_mod._cache == {}


def test_missing_clip_alone_keeps_the_extras_gallery(webui, tiny, capsys):
    from lafr_webui.extras import LafrExtras

    put_lcm(webui, tiny)
    source = Image.fromarray(photo())
    gallery, infotext = run_extras(source, [(LafrExtras(), {"enable": True, "visibility": 1.0, "lafr_file": "Use settings"}),
                                            (FlippedCopies(), {"enable": True})])
    assert len(gallery) == 2 and gallery[0] is source and infotext == ""  # unchanged, and the next script ran
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("[LAFR]"))
    assert line.startswith("[LAFR] Extras: image passed through unchanged: ") and "CLIP ViT-B/16 (a transformers folder) not found" in line
    assert "LCM Dreamshaper v7" not in line and "Traceback" not in err


def test_the_environment_variables_win_over_the_webui_folders(webui, tiny, monkeypatch):
    put_lcm(webui, tiny)
    other_clip = webui.models_path / "clip_vision" / "not_b16"
    other_clip.mkdir(parents=True)
    (other_clip / "config.json").write_text('{"model_type": "clip_vision_model", "hidden_size": 1024, "patch_size": 14}')  # ViT-L: passed over
    monkeypatch.setenv("LAFR_CLIP_VISION", str(tiny.clip))
    found = interlcm_mod.find_base_models(tiny.file, webui.models_path)
    assert found == interlcm_mod.BaseModels(str(webui.models_path / "diffusers" / "LCM_Dreamshaper_v7"), str(tiny.clip))


def test_diffusers_missing_from_the_webui_is_one_line(ready, monkeypatch, capsys):
    import lafr_core.interlcm.engine as engine_mod

    def no_diffusers(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'diffusers'", name="diffusers")

    monkeypatch.setattr(engine_mod, "load_interlcm_pipeline", no_diffusers)
    image = photo()
    assert np.array_equal(lafr_entries(ready)[0].restore(image), image)
    err = capsys.readouterr().err
    assert err.count("[LAFR]") == 1 and "InterLCM files need diffusers in the webui's Python" in err and "pip install diffusers" in err
    assert "Traceback" not in err


def test_an_unreadable_lcm_folder_is_one_line(webui, tiny, capsys):
    broken = webui.models_path / "diffusers" / "LCM_broken"
    (broken / "unet").mkdir(parents=True)
    (broken / "vae").mkdir()
    (broken / "unet" / "config.json").write_text((tiny.lcm / "unet" / "config.json").read_text())  # config, no weights
    (broken / "vae" / "config.json").write_text((tiny.lcm / "vae" / "config.json").read_text())
    put_clip(webui, tiny)
    image = photo()
    assert np.array_equal(lafr_entries(webui)[0].restore(image), image)
    err = capsys.readouterr().err
    assert err.count("[LAFR]") == 1 and f"InterLCM's base models could not be loaded from --lcm '{broken}'" in err
    assert "Traceback" not in err


def test_a_failing_pipeline_is_reported_and_the_image_kept(ready, monkeypatch, capsys):
    image = photo()
    restorer = lafr_entries(ready)[0]
    restorer.restore(image)

    def broken(*args, **kwargs):
        raise RuntimeError("pipeline exploded")

    monkeypatch.setattr(InterLCMPipeline, "restore", broken)
    assert np.array_equal(restorer.restore(image), image)
    err = capsys.readouterr().err
    assert "LAFR error" in err and "pipeline exploded" in err and "np_image" in err
    assert ready.shared.state.textinfo is None


def test_interrupt_returns_the_image_unchanged(ready):
    ready.shared.state.interrupted = True
    image = photo()
    assert np.array_equal(lafr_entries(ready)[0].restore(image), image)


# ----------------------------------------------------------------------------- settings


def test_seed_setting_and_automatic_file_choice(webui, monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "gradio", fake_gradio())
    webui.build_settings()
    from lafr_webui.args import ArgsError, ExtrasArgs
    from lafr_webui.settings import read_settings, resolve_lafr_file

    option = webui.shared.opts.data_labels["lafr_interlcm_seed"]
    assert (option.label, option.default, option.component, option.section) == ("InterLCM seed", 0, None, ("lafr", "LAFR"))
    assert option.component_args["precision"] == 0  # the webui makes an int option a gr.Number
    webui.shared.opts.lafr_interlcm_seed = 12.0  # how a settings file may store it
    assert read_settings(webui.shared.opts).seed == 12
    assert ExtrasArgs(enable=True).over(read_settings(webui.shared.opts)).seed == 12
    for bad, message in ((-1, "seed must be between 0 and"), (1.5, "seed must be a whole number"), (True, "seed must be a whole number")):
        webui.shared.opts.lafr_interlcm_seed = bad
        with pytest.raises(ArgsError, match=message):
            read_settings(webui.shared.opts)

    folder = webui.models_path / "LAFR"
    assert resolve_lafr_file("Automatic", folder) == folder / LAFR  # a LAFR-format file first, as `lafr restore`
    (folder / LAFR).unlink()
    assert resolve_lafr_file("Automatic", folder) == folder / INTERLCM  # else the InterLCM one
