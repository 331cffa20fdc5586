"""The shared parts of the restore nodes (outputs, the file-default colour widget) and their body: one engine through the face pipeline, on photos or on a
clip's frames, with ComfyUI's progress bar and interruption."""

from __future__ import annotations

import torch

from ..lafr_core.face import COLOUR_CORRECTIONS, FILE_COLOUR_FIX
from ..lafr_core.host_chain import ChainResult, CropEngine, FaceOptions, restore_faces
from ..lafr_core.video import restore_frame_batch
from . import comfy_host
from .face_nodes import PASTE_INPUTS, Temporal, interrupted, placeholder_crops
from .ui_preview import restore_preview


class RestoreNodeOutputs:
    """The outputs every restore node has (restore_node_output's "result"), in one place."""

    CATEGORY = "LAFR"
    RETURN_TYPES = ("IMAGE", "IMAGE", "INT")
    RETURN_NAMES = ("image", "restored_faces", "face_count")
    OUTPUT_TOOLTIPS = (
        "The images with restored faces pasted back.",
        "The restored 512x512 face crops (a grey crop when no face was found).",
        "Number of faces restored.",
    )
    FUNCTION = "restore"


def file_colour_input(what_file_asks: str) -> tuple:
    """The colour_correction widget of a node that knows its file: "file default" first."""
    return ([FILE_COLOUR_FIX, *COLOUR_CORRECTIONS], {
        "default": FILE_COLOUR_FIX,
        "tooltip": f"{FILE_COLOUR_FIX}: {what_file_asks}. " + PASTE_INPUTS["colour_correction"][1]["tooltip"]})


def run_engine(image: torch.Tensor, engine: CropEngine, options: FaceOptions, temporal: Temporal) -> ChainResult:
    """restore_faces, or with temporal on restore_frame_batch (faces tracked and smoothed over the
    batch, restored 16 frames at a time); the progress bar counts faces."""
    progress = None

    def tick(done: int, total: int) -> None:
        nonlocal progress
        progress = progress or comfy_host.Progress(total)
        progress(done)

    if temporal.on:
        return restore_frame_batch(image, engine, options, temporal.sigma, temporal.max_gap, should_stop=interrupted, progress=tick)
    return restore_faces(image, engine, options, should_stop=interrupted, progress=tick)


def restore_node_output(image: torch.Tensor, engine: CropEngine, options: FaceOptions, temporal: Temporal) -> dict:
    """What a restore node returns: the pasted images, the restored crops (a grey crop without
    faces), the face count, and the before/after ui (with identity distances when a model is
    installed)."""
    result = run_engine(image, engine, options, temporal)
    out = result.images.to(comfy_host.intermediate_device())
    restored = result.restored.to(comfy_host.intermediate_device()) if result.restored is not None else placeholder_crops()
    ui = restore_preview(image, out, result.faces, result.crops, result.restored)
    return {"ui": ui, "result": (out, restored, len(result.faces))}
