"""A tiny A1111-style SD2 model for the webui tests: a diffusers UNet (SD2.1 layout, toy widths,
1024-wide cross-attention so a real LAFR file fits) whose modules also sit in a module tree named
like A1111's openaimodel.UNetModel, an LDM-style VAE with a posterior, and a LatentDiffusion-like
wrapper with apply_model / first_stage_model / decode_first_stage and the webui's model flags.
Plus a LAFR LoRA (peft on a copy, exported to kohya) and LafrWeights / a LAFR file for it."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from conftest import build_unet, tiny_unet_config
from lafr_core.adapter import AlignerConfig, LatentAligner
from lafr_core.lafr_file import LafrWeights, save_lafr
from lafr_core.ldm_keys import layout_from_diffusers_config, unet_key_map
from lafr_core.lora import add_conv_lora, lora_state_to_kohya

CONTEXT = 1024


def tiny_sd2_config(context: int = CONTEXT) -> dict:
    config = tiny_unet_config()
    config["cross_attention_dim"] = context
    return config


class LdmNamedUNet(nn.Module):
    """The diffusers UNet's own modules, registered under their LDM paths (input_blocks.1.0.in_layers.2,
    ...), so named_modules()/state_dict() look like A1111's UNet while forward runs diffusers."""

    def __init__(self, unet: nn.Module, config: dict):
        super().__init__()
        object.__setattr__(self, "_unet", unet)  # not a child: every module appears once, by its LDM name
        self.in_channels = config["in_channels"]
        for diffusers_name, ldm_name in unet_key_map(**layout_from_diffusers_config(config)).items():
            try:
                module = unet.get_submodule(diffusers_name)
            except AttributeError:  # conv_shortcut exists only where channels change
                continue
            parent = self
            *path, leaf = ldm_name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, module)

    def forward(self, x, timesteps, context=None):
        return self._unet(x, timesteps, encoder_hidden_states=context).sample


class Posterior:
    def __init__(self, moments: torch.Tensor):
        self.mean, self.logvar = moments.chunk(2, dim=1)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self) -> torch.Tensor:
        return self.mean + torch.randn_like(self.mean) * (0.5 * self.logvar).exp()


class TinyVAE(nn.Module):
    """LDM AutoencoderKL's interface: encode(x in -1..1) -> posterior, decode(z) -> -1..1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.encoder = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.decoder = nn.ConvTranspose2d(4, 3, kernel_size=8, stride=8)
        self.encode_calls = 0

    def encode(self, x):
        self.encode_calls += 1
        return Posterior(self.encoder(x))

    def decode(self, z):
        return torch.tanh(self.decoder(z))


class FakeLatentDiffusion(nn.Module):
    """What A1111's shared.sd_model offers LAFR: flags, parameterization, model.diffusion_model,
    first_stage_model, scale_factor, apply_model(x, t, cond) returning eps, decode_first_stage."""

    def __init__(self, family: str = "sd2", parameterization: str = "eps", context: int = CONTEXT, seed: int = 0):
        super().__init__()
        self.config = tiny_sd2_config(context)
        self.unet = build_unet(self.config, seed=seed)  # kept for references; its modules are shared
        self.model = nn.Module()
        self.model.diffusion_model = LdmNamedUNet(self.unet, self.config)
        self.first_stage_model = TinyVAE()
        self.scale_factor = 0.18215
        self.parameterization = parameterization
        self.is_sd1, self.is_sd2, self.is_sdxl = family == "sd1", family == "sd2", family == "sdxl"
        self.sd_checkpoint_info = SimpleNamespace(title=f"tiny-{family}-{parameterization}.safetensors")
        self.apply_calls = 0

    def apply_model(self, x_noisy, t, cond):
        self.apply_calls += 1
        context = torch.cat(cond["c_crossattn"], 1)
        return self.model.diffusion_model(x_noisy, t, context=context)

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)


def lafr_lora(unet: nn.Module, seed: int = 1, std: float = 0.05) -> dict[str, torch.Tensor]:
    """A rank-4 LAFR LoRA for this UNet with non-zero lora_up (a fresh one would be a no-op)."""
    work = add_conv_lora(copy.deepcopy(unet))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in work.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return lora_state_to_kohya(work)


def lafr_weights(sd_model: FakeLatentDiffusion, with_adapter: bool = True, seed: int = 1) -> LafrWeights:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return LafrWeights(
        aligner=LatentAligner(AlignerConfig()).eval() if with_adapter else None,
        kohya_lora=lafr_lora(sd_model.unet, seed),
        prompt_embeds=torch.randn(1, 77, sd_model.config["cross_attention_dim"], generator=gen),
        meta={},
    )


def write_lafr_file(path: Path, weights: LafrWeights) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_lafr(path, aligner=weights.aligner, kohya_lora=weights.kohya_lora, prompt_embeds=weights.prompt_embeds)
