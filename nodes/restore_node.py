"""LAFR Restore Faces: the whole chain in one node (detect, align, encode, align latent, one
UNet step, decode, paste back) on the user's MODEL and VAE, through lafr_core.host_chain, the
same chain the A1111/Forge restorer runs."""

from __future__ import annotations

from ..lafr_core.face import colour_for
from ..lafr_core.host_chain import HostModel, lafr_engine
from . import comfy_host
from .chain_run import RestoreNodeOutputs, file_colour_input, restore_node_output
from .face_nodes import DETECT_INPUTS, PASTE_INPUTS, TEMPORAL_INPUTS, Temporal, face_options
from .latent_nodes import CONDITIONING_INPUT

NODE = "LAFR Restore Faces"
# The all-in-one node knows the file, so it offers the file's own colour fix (adain for OSEDiff
# files, none for LAFR's) and defaults to it; Face Paste Back has no file and keeps the plain list.
RESTORE_PASTE_INPUTS = {
    **PASTE_INPUTS,
    "colour_correction": file_colour_input("what the file asks for (none for LAFR files, adain for OSEDiff-face)"),
}


class LAFRRestoreFaces(RestoreNodeOutputs):
    DESCRIPTION = "Restores every face in the images in one diffusion step with LAFR on your SD2.1-base model."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Photos with faces, or a video's frames (turn temporal on)."}),
                "model": ("MODEL", {"tooltip": "An SD2.1-base (512, epsilon) model from Load Checkpoint."}),
                "vae": ("VAE", {"tooltip": "The VAE of that checkpoint."}),
                "lafr": ("LAFR", {"tooltip": "From LAFR Loader (a '1+2' file; a '2' file skips alignment)."}),
                **DETECT_INPUTS,
                **RESTORE_PASTE_INPUTS,
                "lora_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Scale of the LAFR LoRA."}),
            },
            "optional": {"conditioning": CONDITIONING_INPUT, **TEMPORAL_INPUTS},
        }

    def restore(self, image, model, vae, lafr, detector, threshold, min_size, select, strength, colour_correction, feather, lora_strength,
                conditioning=None, temporal=None, temporal_sigma=None, max_gap=None):
        lafr = comfy_host.with_conditioning(lafr, conditioning, NODE)
        unet = comfy_host.PatchedUNet(model, lafr, lora_strength, NODE)
        vae = comfy_host.vae_with_encoder_lora(vae, lafr, NODE)
        host = HostModel(encode=vae.encode, denoise=unet.denoise, decode=vae.decode, device=comfy_host.compute_device(),
                         oom_errors=comfy_host.oom_errors(), on_oom=comfy_host.free_memory_after_oom)
        options = face_options(detector, threshold, min_size, select, strength=strength,
                               colour_correction=colour_for(colour_correction, lafr.colour_fix), feather=feather)
        return restore_node_output(image, lafr_engine(lafr, host), options, Temporal.from_inputs(temporal, temporal_sigma, max_gap))
