"""Shared fixtures: model configs built in the tests (random weights, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SD21_CONFIG_DIR = REPO / "lafr_core" / "configs" / "sd21_base"
DATA_DIR = Path(__file__).resolve().parent / "data"


def sd21_unet_config() -> dict:
    """The full SD2.1-base UNet config (diffusers), as shipped in the package."""
    config = json.loads((SD21_CONFIG_DIR / "unet_config.json").read_text())
    config.pop("_class_name", None)
    return config


def tiny_unet_config() -> dict:
    """SD2.1's block layout (same block types, layers and key structure) at toy widths."""
    config = sd21_unet_config()
    config.update(
        block_out_channels=[32, 32, 64, 64],
        attention_head_dim=[2, 2, 4, 4],
        cross_attention_dim=32,
        norm_num_groups=8,
        sample_size=16,
    )
    return config


def build_unet(config: dict, seed: int = 0, device: str = "cpu"):
    """A diffusers UNet2DConditionModel with seeded random weights, in eval mode."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).to(device).eval()


@pytest.fixture
def tiny_unet():
    return build_unet(tiny_unet_config())


@pytest.fixture
def tiny_prompt_embeds():
    return torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def comfy_home(tmp_path, monkeypatch):
    """A HOME with an empty ComfyUI and no other model folders (facexlib's own folder aside)."""
    for name in ("COMFYUI_DIR", "A1111_DIR", "FORGE_DIR", "LAFR_FACE_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / "ComfyUI" / "models" / "facedetection"
    folder.mkdir(parents=True)
    return folder
