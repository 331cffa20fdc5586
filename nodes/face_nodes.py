"""LAFR Face Detect & Align and Face Paste Back: the image-space ends of the LAFR chain."""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from ..lafr_core.face import COLOUR_CORRECTIONS, DEFAULT_FEATHER, DEFAULT_MIN_SIZE, DETECTORS, FaceSet, parse_select, paste_faces
from ..lafr_core.host_chain import FaceOptions, find_and_align
from ..lafr_core.video import DEFAULT_MAX_GAP, DEFAULT_SIGMA, align_frames
from . import comfy_host
from .ui_preview import face_overlay, restore_preview

log = logging.getLogger("ComfyUI-LAFR")

DETECT_INPUTS = {
    "detector": (list(DETECTORS), {"default": "auto", "tooltip": "auto: RetinaFace when facexlib and its weights are in models/facedetection, else the bundled MTCNN (offline)."}),
    "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.999, "step": 0.01, "tooltip": "Minimum detector confidence; 0 = the detector's default (MTCNN 0.9, RetinaFace 0.97)."}),
    "min_size": ("INT", {"default": DEFAULT_MIN_SIZE, "min": 0, "max": 4096, "tooltip": "Faces smaller than this many pixels are skipped (and counted)."}),
    "select": ("STRING", {"default": "all", "tooltip": "all, largest, or face indices per image like 0,2 (0 = largest face). "
                          "With temporal on: largest = the largest face over the clip, 0,2 = track ids (0 = the first face to appear)."}),
}
# Optional, so workflows and API prompts saved before video support still validate and run:
# ComfyUI passes nothing for a missing optional input, and None means the default here.
TEMPORAL_INPUTS = {
    "temporal": ("BOOLEAN", {"default": False, "tooltip": "Turn ON for video frames (the IMAGE batch is one clip's frames in order, e.g. from "
                             "Load Video -> Get Video Components): faces are tracked across frames and their landmarks smoothed over time, "
                             "so the crop and paste mask stop jittering and the face does not flicker. Leave OFF for separate photos. "
                             "With it on, select picks tracks: largest = the largest face over the clip, 0,2 = track ids (0 = the first face to appear)."}),
    "temporal_sigma": ("FLOAT", {"default": DEFAULT_SIGMA, "min": 0.0, "max": 30.0, "step": 0.5, "tooltip": "Temporal mode: smoothing strength in frames "
                                 f"(Gaussian width; {DEFAULT_SIGMA:g} cuts landmark jitter about 4x with no lag on steady motion; larger is steadier "
                                 "but rounds off quick turns; 0 = track only, no smoothing)."}),
    "max_gap": ("INT", {"default": DEFAULT_MAX_GAP, "min": 0, "max": 120, "tooltip": "Temporal mode: frames a face may go undetected (occlusion, blur, a face "
                        "passing in front) and keep its track; the missed frames are filled in between."}),
}
PASTE_INPUTS = {
    "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Blend of the restored face over the original (0 = original)."}),
    "colour_correction": (list(COLOUR_CORRECTIONS), {"default": "none", "tooltip": "Match the restored face's colours to the input face: lab (mean/std in the face mask), wavelet (low frequencies) "
                          "or adain (OSEDiff's default: RGB mean/std over the whole crop)."}),
    "feather": ("FLOAT", {"default": DEFAULT_FEATHER, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "How softly the face mask fades out (fraction of the face ellipse)."}),
}


def interrupted() -> bool:
    """should_stop for lafr_core: ComfyUI's interrupt raises its own exception, so never True."""
    comfy_host.check_interrupt()  # raises ComfyUI's own interruption exception
    return False


class Temporal(NamedTuple):
    """The temporal inputs of a node, None (a saved workflow without them) read as the default."""

    on: bool
    sigma: float
    max_gap: int

    @classmethod
    def from_inputs(cls, temporal: bool | None, temporal_sigma: float | None, max_gap: int | None) -> "Temporal":
        return cls(bool(temporal) if temporal is not None else False,
                   float(temporal_sigma) if temporal_sigma is not None else DEFAULT_SIGMA,
                   int(max_gap) if max_gap is not None else DEFAULT_MAX_GAP)


def face_options(detector: str, threshold: float, min_size: int, select: str, **paste) -> FaceOptions:
    """The detection widgets (and any paste options) as FaceOptions; RetinaFace from models/facedetection."""
    return FaceOptions(detector=detector, threshold=threshold or None, min_size=min_size, select=parse_select(select),
                       detector_weights=comfy_host.face_models_folder(), **paste)


def detect_and_align(image: torch.Tensor, detector: str, threshold: float, min_size: int, select: str,
                     temporal: Temporal = Temporal(False, DEFAULT_SIGMA, DEFAULT_MAX_GAP)) -> tuple[torch.Tensor, FaceSet]:
    """Detect on the compute device (RetinaFace from models/facedetection when "auto" finds it),
    align there, return crops on the intermediate device. Temporal mode: the batch is a clip's
    frames; faces are tracked and smoothed over it (lafr_core.video) and carry track ids."""
    options = face_options(detector, threshold, min_size, select)
    pixels = image.to(comfy_host.compute_device())
    if temporal.on:
        crops, faces = align_frames(pixels, options, temporal.sigma, temporal.max_gap, should_stop=interrupted)
    else:
        crops, faces = find_and_align(pixels, options)
    if len(faces) == 0:
        log.warning("LAFR: no face found in %d image(s) (%d too small); images pass through unchanged",
                    image.shape[0], sum(faces.skipped_small))
    return crops.to(comfy_host.intermediate_device()), faces


def placeholder_crops(size: int = 512) -> torch.Tensor:
    """One grey crop when no face was found, so a wired VAE Encode still gets an image (Face
    Paste Back ignores it: the LAFR_FACES it receives is empty)."""
    return torch.full((1, size, size, 3), 0.5)


class LAFRFaceDetectAlign:
    DESCRIPTION = "Finds faces (5 landmarks) and warps each to the 512x512 FFHQ layout LAFR was trained on."
    CATEGORY = "LAFR"
    RETURN_TYPES = ("IMAGE", "LAFR_FACES", "INT")
    RETURN_NAMES = ("faces", "lafr_faces", "face_count")
    OUTPUT_TOOLTIPS = (
        "Aligned 512x512 crops, all faces of all images in one batch (one grey crop when none is found).",
        "Where each face came from (and its track id in temporal mode): wire to Face Paste Back.",
        "Number of faces found (0: the images pass through Face Paste Back unchanged).",
    )
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE", {"tooltip": "Photos with faces (any size, RGB/RGBA/grayscale), or a video's frames (turn temporal on)."}),
                             **DETECT_INPUTS},
                "optional": TEMPORAL_INPUTS}

    def detect(self, image, detector, threshold, min_size, select, temporal=None, temporal_sigma=None, max_gap=None):
        crops, faces = detect_and_align(image, detector, threshold, min_size, select, Temporal.from_inputs(temporal, temporal_sigma, max_gap))
        result = (crops if len(faces) else placeholder_crops(), faces, len(faces))
        return {"ui": face_overlay(image, faces), "result": result}


def paste_back(image: torch.Tensor, restored: torch.Tensor, faces: FaceSet, strength: float, colour_correction: str, feather: float) -> torch.Tensor:
    if len(faces) == 0:
        return image
    if restored.shape[0] != len(faces):
        raise ValueError(f"Face Paste Back: got {restored.shape[0]} restored faces for {len(faces)} detected faces; "
                         "wire the VAE Decode of the same LAFR Face Detect & Align output")
    device = comfy_host.compute_device()
    out = paste_faces(image.to(device), restored[..., :3].to(device), faces, strength=strength,
                      colour_correction=colour_correction, feather=feather)
    return out.to(comfy_host.intermediate_device())


class LAFRFacePasteBack:
    DESCRIPTION = "Puts restored faces back into the original images with a feathered mask (alpha, grayscale and size kept)."
    CATEGORY = "LAFR"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The original images with the restored faces blended in.",)
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The original images given to LAFR Face Detect & Align."}),
                "restored_faces": ("IMAGE", {"tooltip": "VAE Decode of the restored latents, one per detected face."}),
                "lafr_faces": ("LAFR_FACES", {"tooltip": "From LAFR Face Detect & Align."}),
                **PASTE_INPUTS,
            }
        }

    def paste(self, image, restored_faces, lafr_faces, strength, colour_correction, feather):
        out = paste_back(image, restored_faces, lafr_faces, strength, colour_correction, feather)
        return {"ui": restore_preview(image, out, lafr_faces, None, restored_faces), "result": (out,)}
