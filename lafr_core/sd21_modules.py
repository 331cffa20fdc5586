"""Every Linear and Conv2d of SD2.1-base's UNet and VAE encoder, with its weight shape, from the
bundled diffusers configs and without diffusers.

Why: converting another engine's LoRA checkpoint (`lafr convert`) checks every tensor against
the real layer shapes, and that must work where only the host's packages are installed
(ComfyUI's Python has no diffusers). The channel arithmetic below is diffusers' own block
construction (UNet2DConditionModel / get_down_block / get_up_block, Encoder), written out;
tests/test_sd21_modules.py compares it with diffusers' models built on the meta device.

Names are diffusers module paths (`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`),
as peft and OSEDiff name them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd21_base"


class ModuleShape(NamedTuple):
    kind: str  # "linear" or "conv"
    weight: tuple[int, ...]  # [out, in] or [out, in, kh, kw]
    bias: tuple[int, ...] | None


def _config(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}_config.json").read_text())


def _linear(n_in: int, n_out: int, bias: bool = True) -> ModuleShape:
    return ModuleShape("linear", (n_out, n_in), (n_out,) if bias else None)


def _conv(n_in: int, n_out: int, kernel: int) -> ModuleShape:
    return ModuleShape("conv", (n_out, n_in, kernel, kernel), (n_out,))


def _resnet(shapes: dict, prefix: str, n_in: int, n_out: int, temb: int | None) -> None:
    shapes[f"{prefix}.conv1"] = _conv(n_in, n_out, 3)
    if temb is not None:
        shapes[f"{prefix}.time_emb_proj"] = _linear(temb, n_out)
    shapes[f"{prefix}.conv2"] = _conv(n_out, n_out, 3)
    if n_in != n_out:
        shapes[f"{prefix}.conv_shortcut"] = _conv(n_in, n_out, 1)


def _transformer(shapes: dict, prefix: str, channels: int, context: int, linear_projection: bool) -> None:
    """Transformer2DModel with one BasicTransformerBlock (GEGLU feed-forward, 4x inner width)."""
    shapes[f"{prefix}.proj_in"] = _linear(channels, channels) if linear_projection else _conv(channels, channels, 1)
    block = f"{prefix}.transformer_blocks.0"
    for attn, kv_in in (("attn1", channels), ("attn2", context)):
        shapes[f"{block}.{attn}.to_q"] = _linear(channels, channels, bias=False)
        shapes[f"{block}.{attn}.to_k"] = _linear(kv_in, channels, bias=False)
        shapes[f"{block}.{attn}.to_v"] = _linear(kv_in, channels, bias=False)
        shapes[f"{block}.{attn}.to_out.0"] = _linear(channels, channels)
    shapes[f"{block}.ff.net.0.proj"] = _linear(channels, channels * 8)  # GEGLU: two 4x halves
    shapes[f"{block}.ff.net.2"] = _linear(channels * 4, channels)
    shapes[f"{prefix}.proj_out"] = _linear(channels, channels) if linear_projection else _conv(channels, channels, 1)


@lru_cache(maxsize=1)
def sd21_unet_modules() -> dict[str, ModuleShape]:
    """diffusers module path -> shape for every Linear/Conv2d of the SD2.1-base UNet."""
    cfg = _config("unet")
    channels = list(cfg["block_out_channels"])
    layers = int(cfg["layers_per_block"])
    context = int(cfg["cross_attention_dim"])
    linear = bool(cfg.get("use_linear_projection", False))
    temb = channels[0] * 4
    shapes: dict[str, ModuleShape] = {
        "conv_in": _conv(int(cfg["in_channels"]), channels[0], int(cfg.get("conv_in_kernel", 3))),
        "time_embedding.linear_1": _linear(channels[0], temb),
        "time_embedding.linear_2": _linear(temb, temb),
    }
    out = channels[0]
    for i, block_type in enumerate(cfg["down_block_types"]):
        n_in, out = out, channels[i]
        for j in range(layers):
            _resnet(shapes, f"down_blocks.{i}.resnets.{j}", n_in if j == 0 else out, out, temb)
            if block_type.startswith("CrossAttn"):
                _transformer(shapes, f"down_blocks.{i}.attentions.{j}", out, context, linear)
        if i < len(channels) - 1:
            shapes[f"down_blocks.{i}.downsamplers.0.conv"] = _conv(out, out, 3)
    mid = channels[-1]
    _resnet(shapes, "mid_block.resnets.0", mid, mid, temb)
    _transformer(shapes, "mid_block.attentions.0", mid, context, linear)
    _resnet(shapes, "mid_block.resnets.1", mid, mid, temb)
    rev = channels[::-1]
    out = rev[0]
    for i, block_type in enumerate(cfg["up_block_types"]):
        prev, out = out, rev[i]
        skip_in = rev[min(i + 1, len(channels) - 1)]
        for j in range(layers + 1):
            skip = skip_in if j == layers else out
            _resnet(shapes, f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else out) + skip, out, temb)
            if block_type.startswith("CrossAttn"):
                _transformer(shapes, f"up_blocks.{i}.attentions.{j}", out, context, linear)
        if i < len(channels) - 1:
            shapes[f"up_blocks.{i}.upsamplers.0.conv"] = _conv(out, out, 3)
    shapes["conv_out"] = _conv(channels[0], int(cfg["out_channels"]), int(cfg.get("conv_out_kernel", 3)))
    return shapes


@lru_cache(maxsize=1)
def sd21_vae_encoder_modules() -> dict[str, ModuleShape]:
    """diffusers module path -> shape for every Linear/Conv2d of the VAE encoder and quant_conv
    (the decoder and post_quant_conv are left out: nothing here changes them)."""
    cfg = _config("vae")
    channels = list(cfg["block_out_channels"])
    layers = int(cfg["layers_per_block"])
    latent = int(cfg["latent_channels"])
    shapes: dict[str, ModuleShape] = {"encoder.conv_in": _conv(int(cfg["in_channels"]), channels[0], 3)}
    out = channels[0]
    for i in range(len(cfg["down_block_types"])):
        n_in, out = out, channels[i]
        for j in range(layers):
            _resnet(shapes, f"encoder.down_blocks.{i}.resnets.{j}", n_in if j == 0 else out, out, None)
        if i < len(channels) - 1:
            shapes[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = _conv(out, out, 3)
    mid = channels[-1]
    _resnet(shapes, "encoder.mid_block.resnets.0", mid, mid, None)
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        shapes[f"encoder.mid_block.attentions.0.{proj}"] = _linear(mid, mid)
    _resnet(shapes, "encoder.mid_block.resnets.1", mid, mid, None)
    shapes["encoder.conv_out"] = _conv(mid, 2 * latent, 3)  # mean and logvar
    shapes["quant_conv"] = _conv(2 * latent, 2 * latent, 1)
    return shapes
