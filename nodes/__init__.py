"""ComfyUI nodes of ComfyUI-LAFR: thin classes over lafr_core (one file per concern)."""

from .comfy_host import register_lafr_folder
from .latent_nodes import LAFRLatentAlign, LAFRPrunedUNetStep
from .loader import LAFRLoader

NODE_CLASS_MAPPINGS = {
    "LAFRLoader": LAFRLoader,
    "LAFRLatentAlign": LAFRLatentAlign,
    "LAFRPrunedUNetStep": LAFRPrunedUNetStep,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LAFRLoader": "LAFR Loader",
    "LAFRLatentAlign": "LAFR Latent Align",
    "LAFRPrunedUNetStep": "LAFR Pruned UNet Step",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_lafr_folder"]
