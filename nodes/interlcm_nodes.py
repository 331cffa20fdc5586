"""InterLCM Loader and InterLCM Restore Faces: the second engine on the user's LCM Dreamshaper v7.

The loader gathers what ComfyUI's own loaders cannot give: the converted InterLCM file (models/lafr),
the LCM guidance weight that ComfyUI drops when it loads the checkpoint (read from the file the
user names), and CLIP ViT-B/16 (models/clip_vision; ComfyUI's CLIP vision loader knows only
larger towers). The restore node runs the shared face pipeline (lafr_core.host_chain) with the
InterLCM engine of nodes/interlcm_host on the MODEL and VAE from Load Checkpoint.
"""

from __future__ import annotations

import os

from ..lafr_core.face import colour_for
from ..lafr_core.interlcm.guidance import read_guidance_weights
from ..lafr_core.interlcm.weights import load_interlcm, read_interlcm_metadata
from ..lafr_core.lafr_file import LafrFileError
from . import comfy_host
from .chain_run import RestoreNodeOutputs, file_colour_input, restore_node_output
from .face_nodes import DETECT_INPUTS, PASTE_INPUTS, TEMPORAL_INPUTS, Temporal, face_options
from .interlcm_host import InterLCMModels, interlcm_engine, load_clip_vision_b16, load_spatial_encoder

NODE = "InterLCM Restore Faces"
LOADER = "InterLCM Loader"
CHECKPOINT_FOLDERS = ("diffusion_models", "checkpoints")  # where the LCM UNet or checkpoint may be
_CACHE: dict[tuple, InterLCMModels] = {}


def checkpoint_names() -> list[str]:
    import folder_paths

    names: list[str] = []
    for folder in CHECKPOINT_FOLDERS:
        names += [n for n in folder_paths.get_filename_list(folder) if n not in names and n.endswith(".safetensors")]
    return names


def checkpoint_path(name: str) -> str:
    import folder_paths

    for folder in CHECKPOINT_FOLDERS:
        path = folder_paths.get_full_path(folder, name)
        if path:
            return path
    raise FileNotFoundError(f"{LOADER}: '{name}' is in neither models/diffusion_models nor models/checkpoints")


def clip_vision_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("clip_vision")


def _stamp(*paths: str) -> tuple:
    return tuple((p, os.path.getmtime(p)) for p in paths)


def load_models(interlcm_path: str, checkpoint: str, clip_vision_path: str) -> InterLCMModels:
    """Everything InterLCM needs beside the MODEL and VAE, cached per file version."""
    key = _stamp(interlcm_path, checkpoint, clip_vision_path)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        read_interlcm_metadata(interlcm_path)  # the header first: a LAFR file is named as such, cheaply
    except LafrFileError as exc:
        raise ValueError(f"{LOADER}: {exc} (a LAFR or OSEDiff file goes to LAFR Loader)") from None
    cond_proj, time_bias = read_guidance_weights(checkpoint)
    clip = load_clip_vision_b16(clip_vision_path)
    weights = load_interlcm(interlcm_path)
    models = InterLCMModels(
        meta=weights.meta, controlnet=load_spatial_encoder(weights), clip_vision=clip,
        visual_encoder=weights.build_visual_encoder().float(), guidance_projection=cond_proj,
        checkpoint_time_bias=time_bias, checkpoint_name=os.path.basename(checkpoint),
    )
    _CACHE.clear()  # one InterLCM at a time in RAM: a ControlNet is 1.4 GB
    _CACHE[key] = models
    return models


class InterLCMLoader:
    DESCRIPTION = ("Loads a converted InterLCM file (`lafr convert visual_encoder_Nstep.pth spatial_encoder_Nstep.pth`; "
                   "weights CC BY-NC 4.0, non-commercial), the LCM guidance weight of your LCM Dreamshaper v7 file and "
                   "CLIP ViT-B/16.")
    CATEGORY = "LAFR"
    RETURN_TYPES = ("INTERLCM",)
    RETURN_NAMES = ("interlcm",)
    OUTPUT_TOOLTIPS = ("InterLCM's visual and spatial encoders, CLIP ViT-B/16 and the guidance weight: feed InterLCM Restore Faces.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "interlcm_name": (comfy_host.lafr_filenames("interlcm"), {"tooltip": "A converted InterLCM .safetensors in models/lafr."}),
                "lcm_checkpoint": (checkpoint_names(), {"tooltip": "The LCM Dreamshaper v7 file your MODEL comes from (models/diffusion_models or "
                                                        "models/checkpoints): ComfyUI drops its guidance embedding on load, so it is read from here."}),
                "clip_vision_name": (clip_vision_names(), {"tooltip": "CLIP ViT-B/16 (openai/clip-vit-base-patch16's model.safetensors) in models/clip_vision."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, interlcm_name, lcm_checkpoint, clip_vision_name):
        try:
            import folder_paths

            return str(_stamp(comfy_host.lafr_full_path(interlcm_name), checkpoint_path(lcm_checkpoint),
                              folder_paths.get_full_path_or_raise("clip_vision", clip_vision_name)))
        except Exception:  # noqa: BLE001 - a missing file is reported by load()
            return float("nan")

    def load(self, interlcm_name: str, lcm_checkpoint: str, clip_vision_name: str):
        import folder_paths

        return (load_models(comfy_host.lafr_full_path(interlcm_name), checkpoint_path(lcm_checkpoint),
                            folder_paths.get_full_path_or_raise("clip_vision", clip_vision_name)),)


class InterLCMRestoreFaces(RestoreNodeOutputs):
    DESCRIPTION = ("Restores every face in the images with InterLCM (1 or 3 LCM steps, as its weights were trained) on your "
                   "LCM Dreamshaper v7 model.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Photos with faces, or a video's frames (turn temporal on)."}),
                "model": ("MODEL", {"tooltip": "LCM Dreamshaper v7 (SD1.5) from Load Checkpoint or Load Diffusion Model."}),
                "vae": ("VAE", {"tooltip": "Its SD1.5 VAE."}),
                "interlcm": ("INTERLCM", {"tooltip": "From InterLCM Loader."}),
                **DETECT_INPUTS,
                **PASTE_INPUTS,
                "colour_correction": file_colour_input("the file's (wavelet, as in the InterLCM paper)"),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the LCM noise; every face draws the same noise (no flicker on video)."}),
            },
            "optional": dict(TEMPORAL_INPUTS),
        }

    def restore(self, image, model, vae, interlcm, detector, threshold, min_size, select, strength, colour_correction, feather, seed,
                temporal=None, temporal_sigma=None, max_gap=None):
        engine = interlcm_engine(model, vae, interlcm, seed, NODE)
        options = face_options(detector, threshold, min_size, select, strength=strength,
                               colour_correction=colour_for(colour_correction, interlcm.colour_fix), feather=feather)
        return restore_node_output(image, engine, options, Temporal.from_inputs(temporal, temporal_sigma, max_gap))
