"""Extras tab > LAFR: restore the faces of an uploaded image with the chosen file's engine.

A LAFR or OSEDiff file runs on the loaded SD2.1-base checkpoint, a converted InterLCM file on its
own models (lafr_webui.interlcm): pick one file, then the other, to compare the engines on the
same photo; the infotext names the engine and seed of an InterLCM run.

A postprocessing script is a modules.scripts_postprocessing.ScriptPostprocessing subclass found in
a scripts/*.py module (HOSTS.md): ui() returns the components by argument name and process(pp,
**args) edits pp.image (PIL, maybe RGBA) and records its parameters in pp.info, which the webui
writes into the PNG. API calls that leave a script out pass None for all of its arguments, which
ExtrasArgs reads as "off".

process() never raises: A1111's runner does not catch a script's exception, so one would end the
whole Extras run (the other scripts skipped, the gallery empty). A failure is reported the way the
face restorer reports it (report.image_kept: one line, or one report for a bug) and the image goes
on, unchanged, to the next script. No face found is written into the infotext as well.
"""

from __future__ import annotations

from typing import Any

from modules import scripts_postprocessing, shared

from . import RESTORER_NAME, service
from .args import FROM_SETTINGS, ExtrasArgs
from .images import pil_to_pixels, pixels_to_pil
from .report import image_kept
from .settings import lafr_files, read_settings

ORDER = 2100  # after the webui's GFPGAN (2000), before CodeFormer (3000)


class LafrExtras(scripts_postprocessing.ScriptPostprocessing):
    name = RESTORER_NAME
    order = ORDER

    def ui(self) -> dict[str, Any]:
        import gradio as gr
        from modules import ui_components

        defaults = ExtrasArgs()
        with ui_components.InputAccordion(defaults.enable, label=RESTORER_NAME, elem_id="extras_lafr") as enable:
            with gr.Row():
                visibility = gr.Slider(minimum=0.0, maximum=1.0, step=0.01, value=defaults.visibility, label="Visibility",
                                       elem_id="extras_lafr_visibility")
                lafr_file = gr.Dropdown(choices=[FROM_SETTINGS] + lafr_files(), value=defaults.lafr_file, label="LAFR file",
                                        elem_id="extras_lafr_file")
            prompt = gr.Textbox(value=defaults.prompt, label="Prompt", elem_id="extras_lafr_prompt",
                                placeholder="empty: Settings > LAFR's prompt, or the file's own")
        return {"enable": enable, "visibility": visibility, "lafr_file": lafr_file, "prompt": prompt}

    def process(self, pp: Any, **args: Any) -> None:
        with image_kept("Extras", {"pp.image": pp.image, **args}):
            self._process(pp, ExtrasArgs.from_dict(args))

    def _process(self, pp: Any, extras: ExtrasArgs) -> None:
        if not extras.active:
            return
        pixels, mode = pil_to_pixels(pp.image)
        chosen_in = "Settings > LAFR" if extras.lafr_file == FROM_SETTINGS else "Extras > LAFR"
        outcome = service.restore(pixels, extras.over(read_settings(shared.opts)), label="LAFR", file_setting=chosen_in)
        if outcome.skipped:
            return
        if outcome.no_face:
            pp.info["LAFR"] = outcome.no_face
            pp.info["LAFR model"] = outcome.lafr_file
            return
        pp.image = pixels_to_pil(outcome.images, mode)
        pp.info["LAFR visibility"] = round(extras.visibility, 3)
        pp.info["LAFR model"] = outcome.lafr_file
        pp.info["LAFR faces"] = outcome.faces
        if outcome.engine != service.LAFR_ENGINE:  # LAFR's own runs keep the infotext they always had
            pp.info["LAFR engine"] = outcome.engine
            pp.info["LAFR seed"] = outcome.seed
