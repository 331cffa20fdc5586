"""LCM's guidance embedding for hosts whose SD1.5 UNet has no slot for it.

LCM Dreamshaper v7 takes its guidance scale as an extra input to the time embedding: diffusers'
TimestepEmbedding adds `cond_proj(w_emb)` (a bias-free Linear 256 -> 320 of the sinusoidal
embedding of w = scale - 1, see lcm.guidance_embedding) to the timestep's sinusoidal features
before `linear_1`. ComfyUI's SD1.5 UNet (and the ldm one) has no `cond_proj`: loading the
checkpoint drops that weight, and the UNet then runs as if unguided.

The scale is fixed for InterLCM (8), so the addition is a constant vector c = cond_proj(w_emb)
in front of a linear layer: linear_1(t + c) = linear_1(t) + W1 c. The whole embedding is
therefore a constant change of linear_1's bias, W1 c, which any host can apply as an ordinary
additive weight patch on the user's model (ComfyUI: a "diff" patch on a clone), exact up to
float rounding. The weight comes from the user's own checkpoint file, read here without loading
the rest of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..lafr_file import LafrFileError
from .lcm import GUIDANCE_EMBED_DIM, GUIDANCE_SCALE, guidance_embedding

SD15_MODEL_CHANNELS = 320  # the sinusoidal timestep features of an SD1.5 UNet
SD15_TIME_EMBED = 1280  # linear_1's output
# linear_1's bias under the names checkpoints use (diffusers; ldm / ComfyUI)
TIME_BIAS_SUFFIXES = ("time_embedding.linear_1.bias", "time_embed.0.bias")
GUIDANCE_SUFFIX = "cond_proj.weight"


class GuidanceWeightError(LafrFileError):
    """The checkpoint has no (or no usable) LCM guidance projection; the message says which file."""


def guidance_time_bias(
    cond_proj: torch.Tensor, linear_1: torch.Tensor, scale: float = GUIDANCE_SCALE
) -> torch.Tensor:
    """The change of linear_1's bias that stands for the guidance embedding: [1280] float32.

    cond_proj: the checkpoint's `time_embedding.cond_proj.weight` [320, 256]; linear_1: the
    UNet's first time-embedding layer weight [1280, 320] (ComfyUI's `time_embed.0.weight`)."""
    if cond_proj.ndim != 2 or cond_proj.shape[1] != GUIDANCE_EMBED_DIM:
        raise ValueError(f"the guidance projection has shape {list(cond_proj.shape)}, LCM Dreamshaper v7's is "
                         f"[{SD15_MODEL_CHANNELS}, {GUIDANCE_EMBED_DIM}]")
    if linear_1.ndim != 2 or linear_1.shape[1] != cond_proj.shape[0]:
        raise ValueError(f"the time embedding's first layer has shape {list(linear_1.shape)}: it does not take the "
                         f"{cond_proj.shape[0]} timestep features the guidance projection gives (an SD1.5 UNet's is "
                         f"[{SD15_TIME_EMBED}, {SD15_MODEL_CHANNELS}])")
    w_emb = guidance_embedding(1, scale, GUIDANCE_EMBED_DIM)[0]
    features = cond_proj.float().cpu() @ w_emb  # what diffusers adds to the timestep features
    return linear_1.float().cpu() @ features


def read_guidance_weights(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond_proj weight [320, 256], linear_1 bias [1280] or None) read from an LCM checkpoint:
    a .safetensors UNet or full checkpoint in diffusers or single-file layout, found by suffix
    (any prefix: `unet.`, `model.diffusion_model.`, none). Only those tensors are read.

    The bias lets a host check that the MODEL it was given is this checkpoint."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise GuidanceWeightError(f"'{path.name}': the LCM guidance weight is read from .safetensors files only; "
                                  "use LCM Dreamshaper v7's .safetensors (SimianLuo/LCM_Dreamshaper_v7)", path)
    try:
        with safe_open(str(path), framework="pt") as file:
            keys = list(file.keys())
            guidance = [k for k in keys if k.endswith(GUIDANCE_SUFFIX)]
            if not guidance:
                raise GuidanceWeightError(
                    f"'{path.name}' has no LCM guidance embedding (no '*{GUIDANCE_SUFFIX}' tensor): it is not LCM "
                    "Dreamshaper v7. InterLCM needs SimianLuo/LCM_Dreamshaper_v7's UNet (diffusers' "
                    "unet/diffusion_pytorch_model.safetensors, or a full checkpoint that kept time_embedding.cond_proj)",
                    path,
                )
            cond_proj = file.get_tensor(sorted(guidance, key=len)[0])
            bias_keys = [k for k in keys if k.endswith(TIME_BIAS_SUFFIXES)]
            bias = file.get_tensor(sorted(bias_keys, key=len)[0]) if bias_keys else None
    except (SafetensorError, OSError) as exc:
        raise GuidanceWeightError(f"'{path.name}' cannot be read as .safetensors: {exc}", path) from None
    if tuple(cond_proj.shape) != (SD15_MODEL_CHANNELS, GUIDANCE_EMBED_DIM):
        raise GuidanceWeightError(f"'{path.name}': its guidance projection has shape {list(cond_proj.shape)}, "
                                  f"LCM Dreamshaper v7's is [{SD15_MODEL_CHANNELS}, {GUIDANCE_EMBED_DIM}]", path)
    return cond_proj, bias
