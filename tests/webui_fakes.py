"""Small stand-ins for the few A1111 objects the webui layer touches (the webui cannot be
installed in CI). Shapes follow A1111 v1.10.1 as read from its source (HOSTS.md): only the
attributes lafr_webui uses, with the webui's semantics, nothing more.

torch and the standard library only, so a subprocess with diffusers blocked can use them too.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "lafr_a1111.py"
# lafr_webui modules that bind `modules` at import: re-imported for every fake webui
HOST_BOUND = ("lafr_webui.restorer", "lafr_webui.extras")


class FaceRestoration:
    """modules.face_restoration.FaceRestoration: name() + restore(np_image)."""

    def name(self):
        return "None"

    def restore(self, np_image):
        return np_image


class OptionInfo:
    """modules.options.OptionInfo: the constructor arguments the settings use, .info() chaining."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, category_id=None, **_):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section, self.refresh, self.category_id, self.comment_after = section, refresh, category_id, ""

    def info(self, text):
        self.comment_after += text
        return self


class Options:
    """modules.options.Options: values in .data, defaults from data_labels, add_option."""

    def __init__(self):
        object.__setattr__(self, "data_labels", {})
        object.__setattr__(self, "data", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value


class State:
    """modules.shared_state.State: the flags and counters a job reads."""

    def __init__(self):
        self.interrupted = self.skipped = False
        self.textinfo, self.job = None, ""
        self.sampling_step = self.sampling_steps = 0
        self.seen: list[tuple[int, int, str]] = []  # (step, steps, textinfo) each time textinfo changes

    def __setattr__(self, key, value):
        object.__setattr__(self, key, value)
        if key == "textinfo" and value is not None and hasattr(self, "seen"):
            self.seen.append((self.sampling_step, self.sampling_steps, value))


class PostprocessedImage:
    """modules.scripts_postprocessing.PostprocessedImage: image (PIL) and info."""

    def __init__(self, image):
        self.image, self.info, self.extra_images = image, {}, []


class ScriptPostprocessing:
    name = None
    order = 1000

    def ui(self):
        pass

    def process(self, pp, **args):
        pass


class FlippedCopies(ScriptPostprocessing):
    """extensions-builtin/postprocessing-for-training's "Create flipped copies" (order 4030, after
    LAFR's 2100): appends a mirrored copy of the image it gets to pp.extra_images."""

    name = "Create flipped copies"
    order = 4030

    def process(self, pp, enable=False):
        if enable:
            pp.extra_images.append(pp.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def run_extras(image, scripts_and_args) -> tuple[list, str]:
    """One Extras run the way A1111 v1.10.1 does it (postprocessing.run_postprocessing inside
    call_queue.wrap_gradio_call): every script's process(pp, **args) in order on one
    PostprocessedImage (ScriptPostprocessingRunner.run, which catches nothing), then the gallery
    gets the image and its extra images and the infotext is pp.info joined by ", ". An exception
    from any script ends the whole run: the webui prints it and returns an EMPTY gallery."""
    pp = PostprocessedImage(image)
    try:
        for script, args in sorted(scripts_and_args, key=lambda item: item[0].order):
            script.process(pp, **args)
    except Exception:  # noqa: BLE001 - call_queue.wrap_gradio_call_no_job: errors.report(...), then no images
        traceback.print_exc()
        return [], ""
    infotext = ", ".join(k if k == v else f"{k}: {v}" for k, v in pp.info.items() if v is not None)
    return [pp.image, *pp.extra_images], infotext


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


class FakeWebui:
    """A fresh fake `modules` tree. install(monkeypatch) puts it into sys.modules (and forgets the
    host-bound lafr_webui modules, so they bind to this tree)."""

    def __init__(self, models_path: Path):
        self.gc_calls = 0
        self.ui_settings_callbacks: list = []
        self.models_path = Path(models_path)
        shared = _module("modules.shared", face_restorers=[], opts=Options(), state=State(), sd_model=None,
                         OptionInfo=OptionInfo)
        devices = _module("modules.devices", device=torch.device("cpu"), cpu=torch.device("cpu"),
                          dtype_vae=torch.float32, dtype_unet=torch.float32, torch_gc=self._torch_gc)
        self.modules = {
            "modules": _module("modules", __path__=[]),
            "modules.shared": shared,
            "modules.devices": devices,
            "modules.paths": _module("modules.paths", models_path=str(self.models_path)),
            "modules.face_restoration": _module("modules.face_restoration", FaceRestoration=FaceRestoration),
            "modules.scripts_postprocessing": _module("modules.scripts_postprocessing",
                                                      ScriptPostprocessing=ScriptPostprocessing,
                                                      PostprocessedImage=PostprocessedImage),
            "modules.script_callbacks": _module("modules.script_callbacks", on_ui_settings=self.ui_settings_callbacks.append),
        }
        for name, module in self.modules.items():
            if "." in name:
                setattr(self.modules["modules"], name.split(".", 1)[1], module)

    def _torch_gc(self):
        self.gc_calls += 1

    @property
    def shared(self):
        return self.modules["modules.shared"]

    def install(self, monkeypatch=None) -> "FakeWebui":
        for name, module in self.modules.items():
            if monkeypatch is None:
                sys.modules[name] = module
            else:
                monkeypatch.setitem(sys.modules, name, module)
        package = sys.modules.get("lafr_webui")
        for name in HOST_BOUND:  # also the package attribute: `from lafr_webui import x` prefers it
            attribute = name.rsplit(".", 1)[1]
            if monkeypatch is None:
                sys.modules.pop(name, None)
                if package is not None and hasattr(package, attribute):
                    delattr(package, attribute)
            else:
                monkeypatch.delitem(sys.modules, name, raising=False)
                if package is not None:
                    monkeypatch.delattr(package, attribute, raising=False)
        return self

    def load_script(self) -> types.ModuleType:
        """Import scripts/lafr_a1111.py the way the webui does (a fresh module per call)."""
        spec = importlib.util.spec_from_file_location("lafr_a1111.py", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def ready(self, sd_model, lafr_file: Path) -> "FakeWebui":
        """The extension loaded with `sd_model` loaded, `lafr_file` in models/LAFR and the bundled
        MTCNN detector chosen (offline and deterministic)."""
        folder = self.models_path / "LAFR"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(lafr_file).name).symlink_to(lafr_file)
        self.shared.sd_model = sd_model
        self.shared.opts.lafr_detector = "mtcnn"
        self.load_script()
        return self

    def build_settings(self) -> None:
        """What the webui does when it builds the Settings page: run on_ui_settings callbacks."""
        for callback in self.ui_settings_callbacks:
            callback()


def fake_gradio() -> types.ModuleType:
    """Enough of gradio for settings.add_settings and LafrExtras.ui: components record kwargs."""

    class Component:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    return _module("gradio", Dropdown=type("Dropdown", (Component,), {}), Radio=type("Radio", (Component,), {}),
                   Slider=type("Slider", (Component,), {}), Row=type("Row", (Component,), {}),
                   Textbox=type("Textbox", (Component,), {}),
                   Warning=lambda message: None, Component=Component)


def photo() -> np.ndarray:
    """A real portrait (one face) as the webui hands it to a face restorer: uint8 RGB."""
    return np.asarray(Image.open(REPO / "tests" / "data" / "astronaut.png").convert("RGB"), dtype=np.uint8).copy()


def lafr_entries(webui: FakeWebui) -> list:
    """The "LAFR" entries of the webui's face restorer list."""
    return [r for r in webui.shared.face_restorers if r.name() == "LAFR"]
