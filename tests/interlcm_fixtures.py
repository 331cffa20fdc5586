"""Tiny InterLCM models saved as the folders a user downloads (LCM Dreamshaper v7: unet/ + vae/;
CLIP ViT-B/16 save_pretrained) and a converted file whose spatial encoder is a tiny ControlNet,
shared by the CLI tests (test_interlcm_cli.py) and the A1111/Forge tests (test_webui_interlcm.py).

The loader's full-size sentinel shapes and the pipeline's ControlNet config are swapped for the
tiny ones by the `home` fixture (the full ControlNet is 1.4 GB); `home` also empties HOME and
the model-folder environment variables and makes the hub offline, so nothing is found by accident.
Needs diffusers and transformers: the test modules importorskip them before importing this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import cli_fixtures
from lafr_core.interlcm import pipeline as pipeline_mod
from lafr_core.interlcm import weights as weights_mod
from lafr_core.interlcm.visual_encoder import VisualEncoder
from lafr_core.interlcm.weights import base_metadata, save_interlcm

LICENCE = "CC BY-NC 4.0 (non-commercial; repository has no LICENSE file)"
SOURCE = "https://github.com/sen-mao/InterLCM/releases/tag/v0.1.0: visual_encoder_1step.pth (sha256 ab12), spatial_encoder_1step.pth (sha256 cd34)"
# narrow, with attention only at 16x16 (the third level of a 64x64 latent): a 512 crop stays cheap on a CPU
TINY_UNET = dict(
    block_out_channels=(16, 16, 32), down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=1, cross_attention_dim=768,
    attention_head_dim=8, norm_num_groups=8, sample_size=64,
)
ENV = ("LAFR_MODEL", "LAFR_MODELS_DIR", "LAFR_BASE_MODEL", "LAFR_LCM_MODEL", "LAFR_CLIP_VISION", "COMFYUI_DIR", "A1111_DIR",
       "FORGE_DIR", "HF_HOME", "HF_HUB_CACHE")


@dataclass(frozen=True)
class TinyInterLCM:
    lcm: Path  # diffusers folder: unet/, vae/
    clip: Path  # transformers CLIPVisionModel folder
    file: Path  # converted InterLCM .safetensors (tiny ControlNet)
    controlnet_config: dict
    sentinels: dict


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyInterLCM:
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("interlcm")
    torch.manual_seed(0)
    UNet2DConditionModel(**TINY_UNET, time_cond_proj_dim=256).save_pretrained(root / "lcm" / "unet")
    cli_fixtures.tiny_vae().save_pretrained(root / "lcm" / "vae")  # 8x down: 512 crops -> 64x64 latents
    controlnet = ControlNetModel.from_unet(UNet2DConditionModel(**TINY_UNET), conditioning_embedding_out_channels=(16, 16, 16, 16))
    with torch.no_grad():  # ControlNet's zero convolutions would hide the spatial encoder
        for p in controlnet.parameters():
            if bool((p == 0).all()):
                p.normal_(0, 0.02)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=12,
                                     image_size=224, patch_size=16, hidden_act="quick_gelu")).save_pretrained(root / "clip")
    state = controlnet.state_dict()
    sentinels = {k: tuple(state[k].shape) for k in ("conv_in.weight", "controlnet_cond_embedding.conv_in.weight", "controlnet_mid_block.weight")}
    visual = VisualEncoder()
    with torch.no_grad():
        for p in visual.parameters():
            p.mul_(3)  # a visual encoder whose tokens matter
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weights_mod, "SPATIAL_SENTINELS", sentinels)
        file = save_interlcm(root / "interlcm_1step.safetensors", visual.state_dict(), state,
                             base_metadata(1, SOURCE, LICENCE, "params_ema"))
    config = {k: v for k, v in controlnet.config.items() if not k.startswith("_")}
    return TinyInterLCM(root / "lcm", root / "clip", file, config, sentinels)


@pytest.fixture
def home(tmp_path, monkeypatch, tiny) -> Path:
    """An empty HOME (no model folders, no hub cache, offline) with the tiny ControlNet accepted
    by the loader and built by the pipeline."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights_mod, "SPATIAL_SENTINELS", tiny.sentinels)
    monkeypatch.setattr(pipeline_mod, "config", lambda name: tiny.controlnet_config if name == "controlnet" else weights_mod.config(name))
    return tmp_path / "home"
