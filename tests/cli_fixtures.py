"""Restorers for the CLI tests without real weights: LafrPipeline on tiny random diffusers models
(the real chain: VAE, adapter, LoRA'd pruned UNet step), built the same way in every process."""

from __future__ import annotations

import torch

from conftest import build_unet, tiny_unet_config
from lafr_core.lafr_file import LafrWeights
from test_pipeline import tiny_weights


def tiny_vae():
    """A 4-level (8x down, like SD's) AutoencoderKL at toy widths: 512 crops -> 64x64 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[4, 4, 4, 4], down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=2,
                         latent_channels=4, sample_size=64).eval()


def tiny_pipeline() -> tuple[LafrWeights, "LafrPipeline"]:  # noqa: F821
    """(weights, LafrPipeline) on tiny seeded random models, on the CPU."""
    from lafr_core.pipeline import LafrPipeline

    vae = tiny_vae()
    weights, _ = tiny_weights()
    return weights, LafrPipeline.from_modules(build_unet(tiny_unet_config()), vae, weights, device="cpu")
