"""LAFR Latent Align and LAFR Pruned UNet Step: the two latent-space stages of LAFR."""

from __future__ import annotations

from ..lafr_core.latent_ops import align_raw_latent
from . import comfy_host

CONDITIONING_INPUT = ("CONDITIONING", {"tooltip": "Optional: CLIP Text Encode of your SD2.1 checkpoint; replaces the file's prompt "
                                                  "(OSEDiff files converted without --base need it)."})

LATENT_TOOLTIP = "VAE Encode output of the aligned 512x512 face crops (raw SD latent)."


def _with_samples(latent: dict, samples) -> dict:
    """A new LATENT dict: never write into the input (other nodes share it)."""
    out = latent.copy()
    out["samples"] = samples
    return out


class LAFRLatentAlign:
    DESCRIPTION = "Stage 1 of LAFR: moves the latent of a degraded face towards the latent of a clean one (codebook alignment adapter)."
    CATEGORY = "LAFR"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The aligned latent (raw, like VAE Encode's): feed LAFR Pruned UNet Step.",)
    FUNCTION = "align"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "latent": ("LATENT", {"tooltip": LATENT_TOOLTIP}),
                "lafr": ("LAFR", {"tooltip": "From LAFR Loader; needs a stage '1' or '1+2' file."}),
            }
        }

    def align(self, latent: dict, lafr):
        samples = align_raw_latent(lafr, latent["samples"], comfy_host.compute_device())
        return (_with_samples(latent, samples.to(comfy_host.intermediate_device())),)


class LAFRPrunedUNetStep:
    DESCRIPTION = (
        "Stage 2 of LAFR: one SD2.1 UNet step at t=999 with the fixed prompt and the LAFR conv LoRA, "
        "returning the restored (x0) latent. Runs your SD2.1-base MODEL; the MODEL itself is not changed."
    )
    CATEGORY = "LAFR"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The restored latent (x0): feed VAE Decode, then Face Paste Back.",)
    FUNCTION = "step"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD2.1-base (512, epsilon) model from Load Checkpoint. SD1.5, SDXL and 768-v models are refused."}),
                "lafr": ("LAFR", {"tooltip": "From LAFR Loader; needs a stage '2' or '1+2' file."}),
                "latent": ("LATENT", {"tooltip": "LAFR Latent Align output (or VAE Encode output for a LoRA-only file)."}),
                "lora_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Scale of the LAFR LoRA; 1.0 is what it was trained at."}),
                "batch_size": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Faces per UNet forward; 0 = all at once (halved automatically on out-of-memory)."}),
            },
            "optional": {"conditioning": CONDITIONING_INPUT},
        }

    def step(self, model, lafr, latent: dict, lora_strength: float, batch_size: int, conditioning=None):
        weights = comfy_host.with_conditioning(lafr, conditioning, "LAFR Pruned UNet Step")
        x0 = comfy_host.unet_step(model, weights, latent["samples"], lora_strength, batch_size, node="LAFR Pruned UNet Step")
        return (_with_samples(latent, x0),)


class LAFRVAE:
    DESCRIPTION = (
        "Your VAE with the file's VAE-encoder LoRA (OSEDiff files have one), for VAE Encode in the three-node graph. "
        "For LAFR files it is your VAE unchanged. Your VAE itself is never modified: the LoRA lives on a clone."
    )
    CATEGORY = "LAFR"
    RETURN_TYPES = ("VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The VAE to encode the aligned faces with.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The VAE of your SD2.1-base checkpoint."}),
                "lafr": ("LAFR", {"tooltip": "From LAFR Loader."}),
            }
        }

    def patch(self, vae, lafr):
        return (comfy_host.vae_with_encoder_lora(vae, lafr, "LAFR VAE"),)
