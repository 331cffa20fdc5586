"""Standalone InterLCM restoration of aligned 512 face crops on diffusers / transformers modules.

The models (InterLCM, github.com/sen-mao/InterLCM; weights CC BY-NC 4.0):
  * unet: LCM Dreamshaper v7's UNet (SD1.5 layout, `time_cond_proj_dim` 256 for the guidance
    embedding); vae: its SD1.5 VAE;
  * controlnet: the spatial encoder, a diffusers ControlNetModel of an SD1.5 UNet; its hint is the
    LQ face in [-1, 1] and its residuals enter the UNet at scale 1 (it gets no guidance embedding);
  * clip_vision: CLIP ViT-B/16's image tower (transformers CLIPVisionModel, e.g.
    openai/clip-vit-base-patch16) -> 197 tokens (clip_features) -> visual_encoder -> 77 x 768
    tokens used as `encoder_hidden_states` for both networks (no text prompt).
Per face: tokens, LQ latent = VAE posterior MEAN x 0.18215, the InterLCM schedule
(lafr_core.interlcm.lcm: `steps` network calls, noise seeded per face), decode, clamp.

The colour fix (wavelet in the paper) is left to the face pipeline's paste (lafr_core.face's
colour correction against the input crop) or `restore(colour_fix=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..face.colour import correct_colour
from ..pipeline import default_device_dtype
from .clip_features import DEFAULT_ANTIALIAS, face_tokens
from .lcm import GUIDANCE_EMBED_DIM, GUIDANCE_SCALE, face_generators, guidance_embedding, interlcm_sample
from .visual_encoder import VisualEncoder
from .weights import LATENT_SCALE, InterLCMWeights, config, load_interlcm

CROP_SIZE = 512  # InterLCM's face size (FaceRestoreHelper(face_size=512))


class InterLCMModelError(ValueError):
    """A model given to InterLCM is of the wrong family; the message names what it is."""


def require_lcm_unet(unet: torch.nn.Module, source: str = "the UNet") -> None:
    """LCM Dreamshaper v7: SD1.5 layout (cross-attention 768) with a 256-d guidance embedding."""
    cfg = unet.config
    cross = cfg.cross_attention_dim
    if cross != 768:
        family = {1024: "SD2.x", 2048: "SDXL"}.get(cross, f"cross-attention width {cross}")
        raise InterLCMModelError(f"{source} is {family}; InterLCM runs on LCM Dreamshaper v7 (SD1.5, width 768)")
    if getattr(cfg, "time_cond_proj_dim", None) != GUIDANCE_EMBED_DIM:
        raise InterLCMModelError(
            f"{source} is an SD1.5 UNet without LCM's guidance embedding (time_cond_proj_dim "
            f"{getattr(cfg, 'time_cond_proj_dim', None)}); InterLCM needs LCM Dreamshaper v7 (SimianLuo/LCM_Dreamshaper_v7)"
        )


def require_clip_b16(clip_vision: torch.nn.Module, source: str = "the CLIP vision model") -> None:
    cfg = getattr(clip_vision, "config", None)
    got = (getattr(cfg, "hidden_size", None), getattr(cfg, "patch_size", None), getattr(cfg, "image_size", None))
    if got != (768, 16, 224):
        raise InterLCMModelError(
            f"{source} has width/patch/size {got}; InterLCM needs CLIP ViT-B/16 (768, 16, 224): openai/clip-vit-base-patch16"
        )


def build_spatial_encoder(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The ControlNet of the bundled config with `state` loaded strictly (no random init)."""
    from diffusers import ControlNetModel

    with torch.device("meta"):
        model = ControlNetModel(**config("controlnet"))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


@dataclass
class InterLCMPipeline:
    unet: torch.nn.Module
    vae: torch.nn.Module
    controlnet: torch.nn.Module
    clip_vision: torch.nn.Module
    visual_encoder: VisualEncoder
    steps: int
    seed: int = 0
    guidance_scale: float = GUIDANCE_SCALE
    clip_antialias: bool = DEFAULT_ANTIALIAS  # see clip_features: False = InterLCM's pinned torchvision
    latent_scale: float = LATENT_SCALE

    def __post_init__(self) -> None:
        require_lcm_unet(self.unet)
        require_clip_b16(self.clip_vision)

    @classmethod
    def from_weights(
        cls, unet, vae, clip_vision, weights: InterLCMWeights | str | Path, seed: int = 0,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
    ) -> "InterLCMPipeline":
        """The user's LCM UNet, VAE and CLIP vision model + a converted InterLCM file."""
        weights = weights if isinstance(weights, InterLCMWeights) else load_interlcm(weights)
        device, dtype = default_device_dtype(device, dtype)
        move = lambda m: m.to(device=device, dtype=dtype).eval()  # noqa: E731
        return cls(
            unet=move(unet), vae=move(vae), controlnet=move(build_spatial_encoder(weights.spatial_encoder)),
            clip_vision=move(clip_vision), visual_encoder=weights.build_visual_encoder().to(device).float(),
            steps=weights.steps, seed=seed, guidance_scale=weights.guidance_scale,
        )

    @classmethod
    def from_pretrained(
        cls, lcm: str | Path, clip_vision: str | Path, weights: str | Path, seed: int = 0,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
    ) -> "InterLCMPipeline":
        """`lcm`: LCM Dreamshaper v7 as a diffusers folder or hub id; `clip_vision`: a transformers
        CLIP ViT-B/16 folder or hub id (openai/clip-vit-base-patch16); `weights`: the converted file."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPVisionModel

        weights = load_interlcm(weights)  # the file first: it is the cheapest thing to get wrong
        unet = UNet2DConditionModel.from_pretrained(str(lcm), subfolder="unet")
        require_lcm_unet(unet, f"'{lcm}'")
        vae = AutoencoderKL.from_pretrained(str(lcm), subfolder="vae")
        clip = CLIPVisionModel.from_pretrained(str(clip_vision))
        require_clip_b16(clip, f"'{clip_vision}'")
        return cls.from_weights(unet, vae, clip, weights, seed=seed, device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def visual_tokens(self, lq: torch.Tensor) -> torch.Tensor:
        """LQ faces [n, 3, H, W] in -1..1 -> prompt tokens [n, 77, 768] (float32)."""
        tokens = face_tokens(self.clip_vision, lq, antialias=self.clip_antialias)
        return self.visual_encoder(tokens.to(next(self.visual_encoder.parameters()).device).float())

    @torch.no_grad()
    def restore_latents(self, lq: torch.Tensor) -> torch.Tensor:
        """LQ faces [n, 3, H, W] in -1..1 -> restored scaled latent (every face draws the noise of
        `seed`, lafr_core.interlcm.lcm)."""
        lq = lq.to(self.device, self.dtype)
        prompt = self.visual_tokens(lq).to(self.device, self.dtype)
        z_lq = self.vae.encode(lq).latent_dist.mean * self.latent_scale
        w = guidance_embedding(lq.shape[0], self.guidance_scale, self.unet.config.time_cond_proj_dim).to(self.device, self.dtype)

        def predict_eps(sample: torch.Tensor, t: int) -> torch.Tensor:
            timestep = torch.tensor(t, device=self.device)
            down, mid = self.controlnet(sample, timestep, encoder_hidden_states=prompt, controlnet_cond=lq, return_dict=False)
            return self.unet(
                sample, timestep, encoder_hidden_states=prompt, timestep_cond=w,
                down_block_additional_residuals=down, mid_block_additional_residual=mid,
            ).sample

        return interlcm_sample(z_lq, predict_eps, self.steps, face_generators(lq.shape[0], self.seed))

    @torch.no_grad()
    def restore(
        self, faces: torch.Tensor, batch_size: int = 4, colour_fix: str = "none",
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Aligned faces [n, H, W, 3] float 0..1 -> restored [n, H, W, 3] float 0..1.

        `colour_fix`: "none" (the raw decode), "wavelet" (the paper's) or "lab", against the input."""
        if faces.ndim != 4 or faces.shape[-1] != 3:
            raise ValueError(f"restore expects faces [batch, H, W, 3], got {tuple(faces.shape)}")
        if faces.shape[1] % 8 or faces.shape[2] % 8:
            raise ValueError(f"face crops must be multiples of 8 pixels ({CROP_SIZE} is InterLCM's), got {tuple(faces.shape[1:3])}")
        out = []
        for start in range(0, faces.shape[0], batch_size):
            lq = faces[start : start + batch_size].permute(0, 3, 1, 2).float() * 2 - 1
            latents = self.restore_latents(lq)
            images = self.vae.decode(latents / self.latent_scale).sample.float().clamp(-1, 1)
            out.append(((images + 1) / 2).permute(0, 2, 3, 1).to(faces.device))
            if progress is not None:
                progress(min(start + batch_size, faces.shape[0]))
        restored = torch.cat(out)
        return correct_colour(restored, faces.float(), colour_fix)
