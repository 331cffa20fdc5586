"""lafr_core: host-free LAFR face restoration (latent alignment + one pruned SD2.1 UNet step).

Never imports comfy, modules or gradio. diffusers and peft are imported lazily, only on the
standalone-pipeline and training paths, so the node path needs torch, safetensors and einops.
"""

from .adapter import AlignerConfig, AlignerOutput, CodebookUsage, LatentAligner, codebook_usage
from .lafr_file import LafrFileError, LafrWeights, load_lafr, save_lafr
from .lora import add_conv_lora, lora_state_to_kohya, merge_kohya_lora
from .unet_step import PrunedUNet

__version__ = "0.1.0"

__all__ = [
    "AlignerConfig",
    "AlignerOutput",
    "CodebookUsage",
    "LatentAligner",
    "codebook_usage",
    "PrunedUNet",
    "add_conv_lora",
    "lora_state_to_kohya",
    "merge_kohya_lora",
    "save_lafr",
    "load_lafr",
    "LafrWeights",
    "LafrFileError",
    "__version__",
]
