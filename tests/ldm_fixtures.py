"""Writers of original-format (LDM) SD checkpoints for tests: the real key names and shapes of
an SD2.1-base .safetensors, with random weights (no real weights exist offline)."""

from __future__ import annotations

import re

import torch

from conftest import sd21_unet_config
from lafr_core.ldm_keys import diffusers_to_ldm, layout_from_diffusers_config
from lafr_core.pipeline import bundled_config

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_key_to_ldm(key: str, num_blocks: int) -> str:
    key = key.replace("conv_norm_out", "norm_out")
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_VAE_RESNET.get(m[3].rsplit('.', 1)[0], m[3].rsplit('.', 1)[0])}.{m[3].rsplit('.', 1)[1]}"
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{_VAE_RESNET.get(m[3], m[3])}.{m[4]}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m:
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{_VAE_RESNET.get(m[3], m[3])}.{m[4]}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    return key


def diffusers_vae_to_ldm(state_dict: dict[str, torch.Tensor], num_blocks: int = 4) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> LDM first_stage_model keys (attention as 1x1 convs)."""
    out = {}
    for key, value in state_dict.items():
        ldm = _vae_key_to_ldm(key, num_blocks)
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out["first_stage_model." + ldm] = value
    return out


def random_state_dict(cls, config: dict, dtype=torch.float16, seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Random weights of the right shapes without running the slow default init."""
    with torch.device("meta"):
        model = cls(**config)
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * std).to(dtype) for k, v in model.state_dict().items()}


def sd21_ldm_checkpoint(dtype=torch.float16, seed: int = 0, v_prediction: bool = False, context_dim: int = 1024, sd15: bool = False) -> dict[str, torch.Tensor]:
    """A full-size SD2.1-base original checkpoint (UNet + VAE, random weights). `context_dim`
    768 gives an SD1.5-width cross-attention; `sd15` the whole SD1.5 UNet layout (768-d context,
    conv projections, 8 heads); `v_prediction` widens the sentinel bias."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_config = sd21_unet_config()
    unet_config["cross_attention_dim"] = context_dim
    if sd15:
        unet_config.update(cross_attention_dim=768, use_linear_projection=False, attention_head_dim=8)
    unet_sd = random_state_dict(UNet2DConditionModel, unet_config, dtype, seed)
    ldm = {"model.diffusion_model." + k: v for k, v in diffusers_to_ldm(unet_sd, **layout_from_diffusers_config(unet_config)).items()}
    ldm.update(diffusers_vae_to_ldm(random_state_dict(AutoencoderKL, bundled_config("vae"), dtype, seed + 1)))
    if v_prediction:
        key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
        ldm[key] = (torch.randn(ldm[key].shape, generator=torch.Generator().manual_seed(3)) * 0.3).to(dtype)
    return ldm
