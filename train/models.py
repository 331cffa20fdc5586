"""The frozen SD2.1 pieces the trainer uses: base-model loading, VAE encode/decode, and
activation checkpointing for the pruned UNet.

Why a wrapper for checkpointing: PrunedUNet is our own module tree (diffusers'
`enable_gradient_checkpointing` does not reach it), and its blocks call resnets/transformers
with one tensor, so wrapping those children in `Checkpointed` is all it takes. The LoRA layers
stay the same module objects, so exporting from the diffusers UNet is unaffected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lafr_core.lafr_file import DEFAULT_LATENT_SCALE

LATENT_SCALE = DEFAULT_LATENT_SCALE


@dataclass
class BaseModels:
    """A diffusers UNet2DConditionModel and AutoencoderKL. Tests inject tiny random ones."""

    unet: nn.Module | None
    vae: nn.Module


def load_base_models(source: str, need_unet: bool) -> BaseModels:
    """SD2.1-base from a single file, a diffusers folder or a hub id (lafr_core.pipeline).
    A source that cannot be found or read is a ConfigError (the CLI prints it, exit code 2)
    naming the forms --base_model accepts, never a raw huggingface_hub traceback."""
    from lafr_core.base_model import BaseModelError
    from lafr_core.pipeline import load_sd21

    from .config import ConfigError
    from .preflight import BASE_FORMS

    try:
        unet, vae = load_sd21(source)
    except BaseModelError as err:
        raise ConfigError(f"{err}. {BASE_FORMS}") from None
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError, connection errors, unreadable files
        raise ConfigError(f"cannot load the base model '{source}' ({type(err).__name__}: {str(err)[:300]}). {BASE_FORMS}") from None
    if not need_unet:
        del unet
        unet = None
    return BaseModels(unet=unet, vae=vae)


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def vae_fingerprint(vae: nn.Module) -> str:
    """Identifies the VAE weights cheaply (config + the encoder's first and last conv), for the
    latent cache key: a different VAE must never read another one's latents."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}  # "_use_default_values" is set-ordered
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode())
    for tensor in (vae.encoder.conv_in.weight, vae.encoder.conv_out.weight, vae.quant_conv.weight):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def vae_encode(vae: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """[b, 3, H, W] in -1..1 -> scaled latent (posterior mode x 0.18215), float32."""
    param = next(vae.parameters())
    with torch.no_grad():
        posterior = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
        return posterior.mode().float() * LATENT_SCALE


def vae_decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latent -> [b, 3, H, W] in about -1..1 (differentiable: stage 2 backpropagates)."""
    param = next(vae.parameters())
    return vae.decode(latents.to(param.dtype) / LATENT_SCALE).sample


class Checkpointed(nn.Module):
    """Runs `inner(x)` under activation checkpointing while training with gradients."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.inner, x, use_reentrant=False)
        return self.inner(x)


def checkpoint_pruned_unet(unet: nn.Module) -> int:
    """Wrap every resnet and transformer of a PrunedUNet in `Checkpointed`; returns how many."""
    count = 0
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for name in ("resnets", "attentions"):
            children = getattr(block, name, None)
            if children is None:
                continue
            for i, child in enumerate(children):
                if not isinstance(child, Checkpointed):
                    children[i] = Checkpointed(child)
                    count += 1
    return count
