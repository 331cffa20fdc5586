"""InterLCM on ComfyUI's own machinery: the user's LCM MODEL and VAE, ComfyUI's ControlNet for the
spatial encoder, ComfyUI's CLIP vision model class for ViT-B/16, our sampling loop.

What is native and what is ours, and why:
* UNet: a clone of the user's MODEL, called through apply_model with the patcher's wrappers
  (as LAFR's PatchedUNet). Two patches on the clone, the user's MODEL untouched:
  - LCM's guidance embedding: ComfyUI's SD1.5 UNet has no `cond_proj`, so it becomes the
    constant bias change of `time_embed.0` it amounts to (lafr_core.interlcm.guidance), an
    ordinary "diff" weight patch, with the weight read from the checkpoint file the user names;
  - `model_sampling`: plain SD1.5 EPS discrete sampling (as core ModelSamplingDiscrete "eps"),
    so a MODEL the user already patched for LCM sampling still gives us eps.
* Spatial encoder: the converted file's diffusers ControlNet, loaded by
  comfy.controlnet.load_controlnet_state_dict and run by ControlNet.get_control with the LQ
  face in [-1, 1] as its hint, at strength 1: ComfyUI's own code, memory management and dtype.
* CLIP ViT-B/16: ComfyUI's CLIP vision loader recognises only ViT-L/H/G (and SigLIP, DINOv2),
  so the file is loaded into ComfyUI's own ClipVisionModel class with ViT-B/16's config. Its
  `encode_image` resizes with antialiasing and a centre crop of its own, so the tokens are taken
  from the model on our preprocessed pixels (lafr_core.interlcm.clip_features), with the final
  LayerNorm on all 197 tokens, as InterLCM does.
* Sampling: lafr_core.interlcm.lcm.interlcm_sample, not KSampler + the LCM sampler: InterLCM's
  first step makes no network call (the LQ latent is the prediction at t = 999), and its noise
  is one seeded draw per face (the batch-of-one draw, no flicker on video), which ComfyUI's
  batch noise cannot give.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ..lafr_core.host_chain import CropEngine
from ..lafr_core.interlcm.clip_features import DEFAULT_ANTIALIAS, NUM_TOKENS, clip_pixels
from ..lafr_core.interlcm.guidance import guidance_time_bias
from ..lafr_core.interlcm.lcm import face_generators, interlcm_sample
from ..lafr_core.interlcm.visual_encoder import VisualEncoder
from ..lafr_core.interlcm.weights import InterLCMWeights
from . import comfy_host

log = logging.getLogger("ComfyUI-LAFR")
# ComfyUI-format config (as comfy/clip_vision_config_vitl.json) of CLIP ViT-B/16
CLIP_B16_CONFIG = Path(__file__).resolve().parent / "configs" / "clip_vision_config_vitb16.json"
TIME_BIAS_KEY = "diffusion_model.time_embed.0.bias"
B16_LAST_LAYER = "vision_model.encoder.layers.11.layer_norm1.weight"
B16_POSITIONS = "vision_model.embeddings.position_embedding.weight"


class InterLCMHostError(ValueError):
    """A model given to the InterLCM nodes is of the wrong family; the message names what it is."""


@dataclass
class InterLCMModels:
    """What InterLCM Loader hands InterLCM Restore Faces (the INTERLCM type)."""

    meta: dict[str, str]
    controlnet: Any  # comfy.controlnet.ControlNet of the spatial encoder
    clip_vision: Any  # comfy.clip_vision.ClipVisionModel, ViT-B/16
    visual_encoder: VisualEncoder  # on the CPU between runs
    guidance_projection: torch.Tensor  # the checkpoint's cond_proj weight [320, 256]
    checkpoint_time_bias: torch.Tensor | None  # that layer's bias in the named checkpoint (MODEL check)
    checkpoint_name: str

    @property
    def steps(self) -> int:
        return int(self.meta["lafr.steps"])

    @property
    def colour_fix(self) -> str:
        return self.meta.get("lafr.colour_fix", "wavelet")

    @property
    def latent_scale(self) -> float:
        return float(self.meta.get("lafr.latent_scale", 0.18215))


# --------------------------------------------------------------------------- loading


def load_spatial_encoder(weights: InterLCMWeights):
    """The file's ControlNet through ComfyUI's loader (diffusers layout, converted by ComfyUI)."""
    import comfy.controlnet

    control = comfy.controlnet.load_controlnet_state_dict(dict(weights.spatial_encoder))  # it pops keys: a copy
    if control is None or not hasattr(control, "get_control"):
        raise InterLCMHostError("ComfyUI could not build the spatial encoder of this InterLCM file as a ControlNet")
    return control


def load_clip_vision_b16(path: str | os.PathLike):
    """CLIP ViT-B/16's image tower from a .safetensors (transformers layout, or OpenAI's `visual.*`)
    into ComfyUI's ClipVisionModel, managed by ComfyUI like any CLIP vision model."""
    import comfy.clip_vision
    import comfy.utils

    name = os.path.basename(str(path))
    state = comfy.utils.load_torch_file(str(path), safe_load=True)
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in state:  # OpenAI's layout
        state = comfy.clip_vision.convert_to_transformers(state, "visual.")
    elif "embeddings.position_embedding.weight" in state:  # a bare tower (transformers 5 saves CLIPVisionModel so)
        state = {"vision_model." + k: v for k, v in state.items()}
    describe_clip_vision(state, name)
    clip = comfy.clip_vision.ClipVisionModel(str(CLIP_B16_CONFIG))
    missing, _ = clip.load_sd(state)
    missing = [k for k in missing if k.startswith("vision_model.")]
    if missing:
        raise InterLCMHostError(f"'{name}' lacks {len(missing)} CLIP ViT-B/16 vision tensors, e.g. {missing[0]!r}")
    return clip


def describe_clip_vision(state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse anything but CLIP ViT-B/16, naming what the file is."""
    layers = sum(1 for k in state if k.startswith("vision_model.encoder.layers.") and k.endswith(".layer_norm1.weight"))
    positions = state.get(B16_POSITIONS)
    if B16_LAST_LAYER in state and layers == 12 and positions is not None and tuple(positions.shape) == (NUM_TOKENS, 768):
        return
    if positions is None:
        what = "not a CLIP vision model (no vision_model.* or visual.* tensors)"
    else:
        width, tokens = positions.shape[1], positions.shape[0]
        what = f"a CLIP vision tower with {layers} layers, width {width} and {tokens} tokens"
        what += {1280: " (ViT-H/14)", 1664: " (ViT-bigG/14)", 1024: " (ViT-L/14)"}.get(width, "")
    raise InterLCMHostError(f"'{name}' is {what}; InterLCM needs CLIP ViT-B/16 (12 layers, width 768, 197 tokens): "
                            "openai/clip-vit-base-patch16's model.safetensors in models/clip_vision")


def unpatched_weight(model, key: str) -> torch.Tensor:
    """A weight of the MODEL as its file has it. Clones share the module, and ComfyUI patches in
    place: while a patched clone (ours from an earlier run, or another node's) is loaded, the
    module holds the patched value and the patcher's shared `backup` the original."""
    import comfy.utils

    saved = getattr(model, "backup", {}).get(key)
    return (saved.weight if saved is not None else comfy.utils.get_attr(model.model, key)).detach()


def guidance_bias_for(model, cond_proj: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The bias change of time_embed.0 for this MODEL (its own time_embed.0 weight)."""
    return guidance_time_bias(cond_proj, unpatched_weight(model, "diffusion_model.time_embed.0.weight"), guidance_scale)


# --------------------------------------------------------------------------- checks


def check_lcm_model(model, models: InterLCMModels, node: str) -> None:
    """An SD1.5-layout UNet that is the checkpoint named in the loader (its time_embed.0 bias)."""
    info = comfy_host.model_info(model)
    if info.context_dim != 768 or info.in_channels != 4 or "conditioning" in info.family:
        raise InterLCMHostError(f"{node}: the MODEL input is {info.family} (cross-attention width {info.context_dim}); "
                                "InterLCM runs on LCM Dreamshaper v7 (SD1.5): load it with Load Checkpoint or Load Diffusion Model")
    if models.checkpoint_time_bias is None:
        return
    own = unpatched_weight(model, TIME_BIAS_KEY).float().cpu()
    named = models.checkpoint_time_bias.float().cpu()
    if own.shape != named.shape or not torch.allclose(own, named, rtol=1e-2, atol=1e-3):
        raise InterLCMHostError(
            f"{node}: the MODEL input is not '{models.checkpoint_name}', the checkpoint InterLCM Loader took the "
            "guidance embedding from (their time embeddings differ): load that file as the MODEL, or name the "
            "MODEL's file in InterLCM Loader"
        )


# --------------------------------------------------------------------------- the engine


def plain_eps_sampling(model):
    """SD1.5's discrete EPS sampling for this MODEL's config (core ModelSamplingDiscrete "eps")."""
    import comfy.model_sampling as ms

    class EpsDiscrete(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    return EpsDiscrete(model.model.model_config)


class LCMUNet:
    """A clone of the user's MODEL with the guidance bias patch and plain EPS sampling, and the
    spatial encoder; `eps(z_t, t, prompt, hint)` is one guided, controlled UNet call."""

    def __init__(self, model, models: InterLCMModels, guidance_bias: torch.Tensor) -> None:
        self.patcher = model.clone()
        self.sampling = plain_eps_sampling(model)
        self.patcher.add_object_patch("model_sampling", self.sampling)
        self.patcher.add_patches({TIME_BIAS_KEY: ("diff", (guidance_bias,))}, 1.0)
        self.control = models.controlnet

    def eps(self, z_t: torch.Tensor, t: int, prompt: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        """Scaled x_t [n, 4, h, w] at timestep t -> the UNet's eps, float32, on z_t's device."""
        n = z_t.shape[0]
        control = self.control.copy()  # a fresh hint cache per call: ControlNet reuses a hint of the same size
        control.set_cond_hint(hint, 1.0, (0.0, 1.0))
        control.pre_run(SimpleNamespace(model_sampling=self.sampling), self.sampling.percent_to_sigma)
        try:
            device = comfy_host.load_for_forward(self.patcher, tuple(z_t.shape), also=tuple(control.get_models()))
            sigma = self.sampling.sigma(torch.full((n,), float(t))).to(device).float()
            x = z_t.to(device).float() * torch.sqrt(1.0 + sigma**2).view(-1, 1, 1, 1)

            def control_for(x_in, sigma_in, cond, transformer):
                return control.get_control(x_in, sigma_in, cond, 1, transformer)

            denoised = comfy_host.apply_model(self.patcher, x, sigma, {"c_crossattn": prompt.to(device)}, control_for)
        finally:
            control.cleanup()
        return ((x - denoised) / sigma.view(-1, 1, 1, 1)).to(z_t.device)


def clip_tokens(clip_vision, lq: torch.Tensor, antialias: bool = DEFAULT_ANTIALIAS) -> torch.Tensor:
    """LQ faces [n, 3, H, W] in -1..1 -> the 197 tokens after the final LayerNorm, float32."""
    import comfy.model_management as mm

    mm.load_model_gpu(clip_vision.patcher)
    pixels = clip_pixels(lq.float(), antialias=antialias).to(clip_vision.load_device)
    hidden = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[0]
    return clip_vision.model.vision_model.post_layernorm(hidden).float()


def interlcm_engine(model, vae, models: InterLCMModels, seed: int, node: str) -> CropEngine:
    """InterLCM as a host_chain engine on the user's MODEL and VAE: crops [n, S, S, 3] 0..1 ->
    restored crops (raw decode; the chain's paste applies the colour fix)."""
    check_lcm_model(model, models, node)
    unet = LCMUNet(model, models, guidance_bias_for(model, models.guidance_projection, float(models.meta.get("lafr.guidance_scale", 8.0))))
    device = comfy_host.compute_device()
    scale = models.latent_scale

    @torch.no_grad()
    def restore(crops: torch.Tensor) -> torch.Tensor:
        lq = crops[..., :3].permute(0, 3, 1, 2).float() * 2 - 1
        tokens = clip_tokens(models.clip_vision, lq)
        encoder = models.visual_encoder.to(device)
        try:
            prompt = encoder(tokens.to(device))
        finally:
            models.visual_encoder.to("cpu")  # ours: nothing of it stays on the GPU
        z_lq = vae.encode(crops[..., :3]).to(device).float() * scale
        generators = face_generators(crops.shape[0], seed)
        hint = lq.to(device)  # the spatial encoder's input, the same at every step
        z = interlcm_sample(z_lq, lambda sample, t: unet.eps(sample, t, prompt, hint), models.steps, generators)
        comfy_host.check_interrupt()
        return vae.decode(z / scale).to(crops.device).float().clamp(0, 1)

    return CropEngine(restore, device, "InterLCM", comfy_host.oom_errors(), comfy_host.free_memory_after_oom)
