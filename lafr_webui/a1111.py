"""The A1111 model as a lafr_core.host_chain.HostModel: its VAE and its UNet, called the host's way.

Facts relied on (AUTOMATIC1111 v1.10.1, HOSTS.md):
  * sd_model.apply_model(x, t, cond) is the UNet entry point the webui itself samples through: its
    hijack casts inputs to devices.dtype_unet under autocast, and --medvram/--lowvram hang their
    move-to-GPU hooks below it. For an eps model it returns eps; x0 is computed here in float64
    constants (lafr_core.schedule). cond is {"c_crossattn": [prompt]}.
  * sd_model.first_stage_model.encode(x in [-1, 1]) returns a posterior: LAFR uses its MODE (the
    webui's get_first_stage_encoding would sample it), also for a file that asks for a sampled
    latent (service says so once). decode_first_stage(z) divides by sd_model.scale_factor itself.
  * The file's UNet LoRA (any Conv2d/Linear) and replacements (OSEDiff's conv_in) are forward hooks
    around apply_model only, its VAE-encoder LoRA hooks on first_stage_model around our encode
    only (unet_hooks): never merged, so A1111's Lora extension never backs up LAFR's weights.
  * The prompt is the `weights.prompt_embeds` the caller chose (the file's, or text encoded by the
    host: lafr_webui.prompt).
Host-free: the webui's device and dtypes are passed in, so tests drive it with stand-ins.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from lafr_core.host_chain import DEFAULT_OOM_ERRORS, HostModel
from lafr_core.lafr_file import LafrWeights
from lafr_core.schedule import x0_from_eps

from .unet_hooks import unet_hooks, vae_encoder_hooks


def _to_nchw(crops: torch.Tensor) -> torch.Tensor:
    """[n, S, S, 3] 0..1 -> [n, 3, S, S] -1..1 (what the LDM VAE takes)."""
    return crops.permute(0, 3, 1, 2) * 2.0 - 1.0


def _to_nhwc(pixels: torch.Tensor) -> torch.Tensor:
    """[n, 3, S, S] -1..1 -> [n, S, S, 3] 0..1."""
    return ((pixels.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1)


class A1111Model:
    """encode / denoise / decode on a loaded A1111 LatentDiffusion (SD2.1-base checked by the caller)."""

    def __init__(
        self,
        sd_model: Any,
        weights: LafrWeights,
        device: torch.device,
        vae_dtype: torch.dtype,
        lora_strength: float = 1.0,
    ) -> None:
        self.sd_model = sd_model
        self.weights = weights
        self.device = torch.device(device)
        self.vae_dtype = vae_dtype
        self.unet_hooks = unet_hooks(sd_model.model.diffusion_model, weights.kohya_lora, weights.unet_set, lora_strength)
        self.vae_hooks = vae_encoder_hooks(sd_model.first_stage_model, weights.vae_lora)

    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        with self.vae_hooks:
            posterior = self.sd_model.first_stage_model.encode(_to_nchw(crops).to(self.device, self.vae_dtype))
        if not hasattr(posterior, "mode"):
            raise TypeError(f"first_stage_model.encode returned {type(posterior).__name__}, not a posterior with "
                            "mode(): another extension replaced the VAE encoder")
        return posterior.mode().float()

    def denoise(self, z_t: torch.Tensor) -> torch.Tensor:
        n, timestep = z_t.shape[0], self.weights.timestep
        t = torch.full((n,), timestep, device=self.device, dtype=torch.long)
        prompt = self.weights.prompt_embeds.to(self.device).expand(n, -1, -1)
        x = z_t.to(self.device)
        with self.unet_hooks:
            eps = self.sd_model.apply_model(x, t, {"c_crossattn": [prompt]})
        return x0_from_eps(x.float(), eps.float(), timestep)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        scale = float(self.sd_model.scale_factor)
        return _to_nhwc(self.sd_model.decode_first_stage((latents * scale).to(self.device, self.vae_dtype)))

    def host_model(self, on_oom: Callable[[int], None] | None = None) -> HostModel:
        return HostModel(self.encode, self.denoise, self.decode, self.device, DEFAULT_OOM_ERRORS, on_oom)
