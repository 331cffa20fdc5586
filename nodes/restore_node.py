"""LAFR Restore Faces: the whole chain in one node (detect, align, encode, align latent, one
UNet step, decode, paste back), on the user's MODEL and VAE."""

from __future__ import annotations

from ..lafr_core.latent_ops import align_raw_latent
from . import comfy_host
from .face_nodes import DETECT_INPUTS, PASTE_INPUTS, detect_and_align, paste_back, placeholder_crops
from .ui_preview import before_after


class LAFRRestoreFaces:
    DESCRIPTION = "Restores every face in the images in one diffusion step with LAFR on your SD2.1-base model."
    CATEGORY = "LAFR"
    RETURN_TYPES = ("IMAGE", "IMAGE", "INT")
    RETURN_NAMES = ("image", "restored_faces", "face_count")
    OUTPUT_TOOLTIPS = (
        "The images with restored faces pasted back.",
        "The restored 512x512 face crops (a grey crop when no face was found).",
        "Number of faces restored.",
    )
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Photos with faces."}),
                "model": ("MODEL", {"tooltip": "An SD2.1-base (512, epsilon) model from Load Checkpoint."}),
                "vae": ("VAE", {"tooltip": "The VAE of that checkpoint."}),
                "lafr": ("LAFR", {"tooltip": "From LAFR Loader (a '1+2' file; a '2' file skips alignment)."}),
                **DETECT_INPUTS,
                **PASTE_INPUTS,
                "lora_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Scale of the LAFR LoRA."}),
            }
        }

    def restore(self, image, model, vae, lafr, detector, threshold, min_size, select, strength, colour_correction, feather, lora_strength):
        comfy_host.check_model(model, "LAFR Restore Faces")
        crops, faces = detect_and_align(image, detector, threshold, min_size, select)
        if len(faces) == 0:
            return {"ui": before_after(image, image), "result": (image, placeholder_crops(), 0)}
        raw = vae.encode(crops)
        if lafr.aligner is not None:
            raw = align_raw_latent(lafr, raw, comfy_host.compute_device())
        x0 = comfy_host.unet_step(model, lafr, raw, lora_strength, batch_size=0, node="LAFR Restore Faces")
        restored = vae.decode(x0)
        out = paste_back(image, restored, faces, strength, colour_correction, feather)
        return {"ui": before_after(image, out), "result": (out, restored, len(faces))}
