"""ComfyUI nodes of ComfyUI-LAFR: thin classes over lafr_core (one file per concern)."""

from .comfy_host import register_lafr_folder
from .face_nodes import LAFRFaceDetectAlign, LAFRFacePasteBack
from .interlcm_nodes import InterLCMLoader, InterLCMRestoreFaces
from .latent_nodes import LAFRVAE, LAFRLatentAlign, LAFRPrunedUNetStep
from .loader import LAFRLoader
from .restore_node import LAFRRestoreFaces

NODE_CLASS_MAPPINGS = {
    "LAFRLoader": LAFRLoader,
    "LAFRLatentAlign": LAFRLatentAlign,
    "LAFRPrunedUNetStep": LAFRPrunedUNetStep,
    "LAFRFaceDetectAlign": LAFRFaceDetectAlign,
    "LAFRFacePasteBack": LAFRFacePasteBack,
    "LAFRRestoreFaces": LAFRRestoreFaces,
    "LAFRVAE": LAFRVAE,
    "InterLCMLoader": InterLCMLoader,
    "InterLCMRestoreFaces": InterLCMRestoreFaces,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LAFRLoader": "LAFR Loader",
    "LAFRLatentAlign": "LAFR Latent Align",
    "LAFRPrunedUNetStep": "LAFR Pruned UNet Step",
    "LAFRFaceDetectAlign": "LAFR Face Detect & Align",
    "LAFRFacePasteBack": "Face Paste Back",
    "LAFRRestoreFaces": "LAFR Restore Faces",
    "LAFRVAE": "LAFR VAE",
    "InterLCMLoader": "InterLCM Loader",
    "InterLCMRestoreFaces": "InterLCM Restore Faces",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_lafr_folder"]
