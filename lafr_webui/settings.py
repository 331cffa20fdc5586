"""Settings > LAFR (file, detector, strength, colour correction, prompt, InterLCM seed) and models/LAFR.

The section is added the way the webui's own extensions do it: a script_callbacks.on_ui_settings
callback calling shared.opts.add_option(key, shared.OptionInfo(...)) with section ("lafr", "LAFR")
in the "postprocessing" category, next to "Face restoration". Values are read back with getattr
defaults, so API-only runs (no settings UI built) still get the defaults.
LAFR files live in <webui>/models/LAFR (modules.paths.models_path); RetinaFace weights are taken
from models/GFPGAN, where the webui's own facexlib helper downloads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lafr_core.face import DETECTORS
from lafr_core.face.retinaface import NETWORKS

from .args import AUTOMATIC, COLOUR_CHOICES, FILE_COLOUR, RestoreArgs
from .interlcm import is_interlcm_file

SECTION = ("lafr", "LAFR")
CATEGORY = "postprocessing"
LAFR_FOLDER = "LAFR"
FACE_FOLDER = "GFPGAN"
# option key -> RestoreArgs field
OPTION_FIELDS = {
    "lafr_file": "lafr_file",
    "lafr_detector": "detector",
    "lafr_strength": "strength",
    "lafr_colour_correction": "colour_correction",
    "lafr_prompt": "prompt",
    "lafr_interlcm_seed": "seed",
}
AUTO_NETWORK = "resnet50"  # what "auto" picks when RetinaFace can run (lafr_core.face.resolve_detector)


def models_path() -> Path:
    from modules import paths

    return Path(paths.models_path)


def lafr_folder() -> Path:
    return models_path() / LAFR_FOLDER


def lafr_files(folder: Path | None = None) -> list[str]:
    """LAFR files (.safetensors) under the folder, as paths relative to it, sorted."""
    folder = lafr_folder() if folder is None else folder
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors") if p.is_file())


def resolve_lafr_file(name: str, folder: Path | None = None, setting: str = "Settings > LAFR") -> Path:
    """The file a setting names: AUTOMATIC is the first LAFR-format file in the folder (LAFR,
    OSEDiff), else the first InterLCM one, as `lafr restore` picks. FileNotFoundError says which
    folder to fill, or which `setting` to change."""
    folder = lafr_folder() if folder is None else folder
    files = lafr_files(folder)
    if name == AUTOMATIC:
        if not files:
            raise FileNotFoundError(f"no LAFR file in {folder}: put one there (OSEDiff's published face model, converted "
                                    f"with `lafr convert osediff_face.pkl -o {folder / 'osediff_face.safetensors'}`, "
                                    "InterLCM's, converted with `lafr convert visual_encoder_1step.pth spatial_encoder_1step.pth "
                                    f"-o {folder}/`, or a file trained with `python -m train`) and pick it in Settings > LAFR")
        lafr_format = [f for f in files if not is_interlcm_file(folder / f)]
        return folder / (lafr_format or files)[0]
    if name not in files:
        listed = ", ".join(files) if files else "none"
        raise FileNotFoundError(f"LAFR file {name!r} is not in {folder} (found: {listed}); pick another in {setting}")
    return folder / name


def detector_weights(detector: str, folder: Path | None = None) -> Path | None:
    """models/GFPGAN when it holds the RetinaFace weights the detector would use, else None (then
    lafr_core searches its usual folders, and "auto" falls back to the bundled MTCNN)."""
    network = AUTO_NETWORK if detector == "auto" else detector.removeprefix("retinaface_")
    if network not in NETWORKS:
        return None
    folder = models_path() / FACE_FOLDER if folder is None else folder
    return folder if (folder / NETWORKS[network]).is_file() else None


def read_settings(opts: Any) -> RestoreArgs:
    """RestoreArgs from shared.opts (missing options: the defaults)."""
    return RestoreArgs.from_dict({field: getattr(opts, key, None) for key, field in OPTION_FIELDS.items()})


def file_choices() -> list[str]:
    return [AUTOMATIC] + lafr_files()


def add_settings() -> None:
    """on_ui_settings callback: the LAFR section of Settings."""
    import gradio as gr
    from modules import shared

    defaults = RestoreArgs()
    options = {
        "lafr_file": shared.OptionInfo(defaults.lafr_file, "LAFR file", gr.Dropdown, lambda: {"choices": file_choices()},
                                       refresh=lafr_files).info(
            f"from models/{LAFR_FOLDER}; Automatic = the first LAFR/OSEDiff file. LAFR and OSEDiff files run on the loaded "
            "SD2.1-base checkpoint; converted InterLCM files on their own models, whatever is loaded: LCM Dreamshaper v7 "
            "in models/diffusers and CLIP ViT-B/16 in models/clip_vision"),
        "lafr_detector": shared.OptionInfo(defaults.detector, "Face detector", gr.Radio, {"choices": list(DETECTORS)}).info(
            "auto = RetinaFace when facexlib and its weights (models/GFPGAN) are present, else the bundled MTCNN"),
        "lafr_strength": shared.OptionInfo(defaults.strength, "Strength", gr.Slider,
                                           {"minimum": 0.0, "maximum": 1.0, "step": 0.01}).info(
            "blend of the restored face over the original; 0 = original"),
        "lafr_colour_correction": shared.OptionInfo(defaults.colour_correction, "Colour correction", gr.Radio,
                                                    {"choices": list(COLOUR_CHOICES)}).info(
            f"match the restored face's colours to the original face; {FILE_COLOUR} = what the file asks for "
            "(LAFR: none, OSEDiff: adain)"),
        "lafr_prompt": shared.OptionInfo(defaults.prompt, "LAFR prompt", gr.Textbox).info(
            "empty = the file's own prompt; text here replaces it, encoded by the loaded checkpoint's text encoder "
            "(for OSEDiff files, e.g. 'face, close-up, portrait, sharp'); InterLCM files take no prompt"),
        # no component: the webui's settings page makes an int option a gr.Number (ui_settings.create_setting_component)
        "lafr_interlcm_seed": shared.OptionInfo(defaults.seed, "InterLCM seed", None, {"precision": 0, "minimum": 0}).info(
            "the noise InterLCM files start from (every face draws it); another seed gives another restoration. "
            "LAFR and OSEDiff files ignore it"),
    }
    for key, info in options.items():
        info.section = SECTION
        info.category_id = CATEGORY
        shared.opts.add_option(key, info)
