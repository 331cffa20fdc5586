"""InterLCM (ICLR 2025, github.com/sen-mao/InterLCM) as a second engine beside LAFR.

The low-quality face's latent is taken as an intermediate state of a latent consistency model
(LCM Dreamshaper v7) and finished in 1 or 3 LCM steps, conditioned on CLIP-derived tokens (the
visual module) and a ControlNet on the LQ face (the spatial encoder). Reimplemented from reading
its code (which has no licence; its weights are CC BY-NC 4.0) and checked against it on
random-weight models of the real configs (bench/interlcm_reference.py).

Modules: visual_encoder (the 1-D conv net), clip_features (CLIP ViT-B/16 tokens), lcm (the
schedule), weights (the converted .safetensors), convert (the published .pth pair -> that file),
pipeline (standalone restoration of aligned crops on diffusers / transformers modules).
Importing this package needs neither diffusers nor transformers.
"""

from .clip_features import clip_pixels, clip_vision_tokens, face_tokens
from .lcm import guidance_embedding, interlcm_sample, interlcm_timesteps, lcm_timesteps
from .visual_encoder import VisualEncoder, VisualEncoderConfig
from .weights import InterLCMFileError, InterLCMWeights, load_interlcm, read_interlcm_metadata, save_interlcm

__all__ = [
    "InterLCMFileError",
    "InterLCMWeights",
    "VisualEncoder",
    "VisualEncoderConfig",
    "clip_pixels",
    "clip_vision_tokens",
    "face_tokens",
    "guidance_embedding",
    "interlcm_sample",
    "interlcm_timesteps",
    "lcm_timesteps",
    "load_interlcm",
    "read_interlcm_metadata",
    "save_interlcm",
]
