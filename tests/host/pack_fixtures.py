"""What every real-host test sets up the same way: this pack copied where the host looks for
extensions, and a full-size SD2.1-base LAFR stand-in file (random weights, real key names)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def copy_pack(target: Path, parts: tuple[str, ...]) -> None:
    """Copy `parts` of the repository into `target` (a host's custom_nodes/ or extensions/ entry):
    a copy, not a link, so the host sees a plain folder and no git checkout."""
    target.mkdir(parents=True)
    for part in parts:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, target / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, target / part)


def write_stand_in_lafr(path: Path, seed: int = 0) -> None:
    """A "1+2" LAFR file for the full SD2.1-base UNet: adapter, conv LoRA and prompt embedding."""
    from diffusers import UNet2DConditionModel

    from conftest import sd21_unet_config
    from lafr_core.adapter import AlignerConfig, LatentAligner
    from lafr_core.lafr_file import save_lafr
    from lafr_core.lora import add_conv_lora, lora_state_to_kohya

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unet_config())
    add_conv_lora(unet)
    gen = torch.Generator().manual_seed(seed)
    unet.to_empty(device="cpu")
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.01, generator=gen)
    save_lafr(path, aligner=LatentAligner(AlignerConfig()), kohya_lora=lora_state_to_kohya(unet),
              prompt_embeds=torch.randn(1, 77, 1024, generator=gen))
