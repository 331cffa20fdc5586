"""CLIP ViT-B/16 image tokens for InterLCM's visual module, from a transformers CLIPVisionModel.

InterLCM's code (inference_InterLCM.py with basicsr/utils/clip_util.py) runs OpenAI's `clip`
package: `clip.load("ViT-B/16")` with its VisionTransformer patched to return ALL tokens after
`ln_post` and skip the projection. The same weights are published for transformers as
`openai/clip-vit-base-patch16`; there the tokens before the final norm are `last_hidden_state`
and the final norm is `vision_model.post_layernorm`, so the features are
post_layernorm(last_hidden_state): [b, 197, 768]. (OpenAI's QuickGELU is transformers'
`quick_gelu`; both LayerNorms use eps 1e-5.)

Preprocessing, as their `preprocess` composes it on a [-1, 1] face tensor:
  1. (x + 1) / 2                            (Normalize(mean=-1, std=2))
  2. bicubic resize of the short side to 224 (clip's Resize(224, BICUBIC), on a tensor)
  3. centre crop 224                         (CenterCrop(224); a no-op on square crops)
  4. (x - mean) / std with CLIP's mean/std   (the last transform of clip's preprocess)

Antialiasing of step 2: torchvision applied NO antialiasing to tensor resizes before 0.17
(`antialias=None` meant False for tensors); from 0.17 on it antialiases by default. InterLCM
pins torch 1.13.1 (torchvision 0.14), so its released weights were trained on aliased bicubic
downsampling: `antialias=False` is our default, and `antialias=True` reproduces their code run
under a current torchvision (the reference comparison uses that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NUM_TOKENS = 197  # 1 class token + (224 / 16)^2 patches
DEFAULT_ANTIALIAS = False  # torchvision < 0.17 on tensors, InterLCM's pinned environment (module doc)


def clip_pixels(faces: torch.Tensor, antialias: bool = DEFAULT_ANTIALIAS, size: int = CLIP_SIZE) -> torch.Tensor:
    """faces [b, 3, H, W] in -1..1 -> CLIP input [b, 3, size, size] (module doc, steps 1-4)."""
    x = (faces.float() + 1) / 2
    height, width = x.shape[-2:]
    short = min(height, width)
    new_h, new_w = (size, int(size * width / height)) if height == short else (int(size * height / width), size)
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=antialias)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_vision_tokens(clip_vision: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """All tokens after the final LayerNorm, no projection: [b, 197, 768] float32.

    `clip_vision`: a transformers CLIPVisionModel or CLIPVisionModelWithProjection: transformers 4
    keeps the tower in `.vision_model`, transformers 5's CLIPVisionModel is the tower itself."""
    vision = getattr(clip_vision, "vision_model", clip_vision)
    if not hasattr(vision, "post_layernorm"):
        raise TypeError(
            f"InterLCM needs a transformers CLIPVisionModel (CLIP ViT-B/16), got {type(clip_vision).__name__}"
        )
    param = next(vision.parameters())
    hidden = vision(pixel_values=pixels.to(param.device, param.dtype)).last_hidden_state
    tokens = vision.post_layernorm(hidden).float()
    if tokens.shape[1:] != (NUM_TOKENS, 768):
        raise ValueError(
            f"the CLIP vision model gives {list(tokens.shape[1:])} tokens x features; InterLCM was trained on "
            f"CLIP ViT-B/16 ({NUM_TOKENS} x 768): load openai/clip-vit-base-patch16"
        )
    return tokens


def face_tokens(clip_vision: torch.nn.Module, faces: torch.Tensor, antialias: bool = DEFAULT_ANTIALIAS) -> torch.Tensor:
    """faces [b, 3, H, W] in -1..1 -> CLIP tokens [b, 197, 768] (preprocess + clip_vision_tokens)."""
    return clip_vision_tokens(clip_vision, clip_pixels(faces, antialias=antialias))
