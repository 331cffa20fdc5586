"""Tiny models and configs for the trainer tests (random weights, CPU, seconds)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import DATA_DIR, build_unet, tiny_unet_config
from lafr_core.adapter import AlignerConfig
from train.config import DataConfig, RunConfig, Stage1Config, Stage2Config, TrainConfig

PORTRAITS = ("astronaut.png", "grace_hopper.jpg")


@pytest.fixture(autouse=True)
def one_thread():
    """Trainer tests run on one intra-op thread (autouse in every module that imports it):
      * tiny models gain nothing from threads, and on a shared 2-core machine two OpenMP threads
        per process oversubscribe the cores and run 4-5x slower;
      * multi-threaded CPU reductions differ run to run by ~1e-7 (two uninterrupted runs differ
        too), which Adam amplifies past the 1e-6 the resume tests hold the trainer to."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
RES = 64  # 8x8 latents with the 8x VAE below

TINY_VAE8 = dict(  # SD's VAE shape (4 levels: 8x downsampling) at toy widths
    block_out_channels=[8, 8, 16, 16],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=RES,
)
TINY_ADAPTER = AlignerConfig(hidden_channels=32, codebook_size=128, codebook_dim=8, norm_groups=8, extractor_blocks=1, mapping_blocks=1)


def tiny_vae8(seed: int = 5):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE8).eval()


def tiny_unet_1024(seed: int = 0):
    """SD2.1 block layout at toy widths with SD2.1's 1024-d cross-attention (LAFR files store a
    [1, 77, 1024] prompt)."""
    config = tiny_unet_config()
    config["cross_attention_dim"] = 1024
    return build_unet(config, seed=seed)


def portrait_folder(tmp: Path, extra_bad: bool = False) -> Path:
    folder = tmp / "faces"
    folder.mkdir(parents=True, exist_ok=True)
    for name in PORTRAITS:
        shutil.copy(DATA_DIR / name, folder / name)
    if extra_bad:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        from PIL import Image

        Image.new("RGB", (20, 20)).save(folder / "tiny.png")
        (folder / "notes.txt").write_text("not an image: ignored, not listed")
    return folder


def stage1_config(data: Path, out: Path, **run) -> TrainConfig:
    run_cfg = dict(output_dir=str(out), seed=0, checkpoint_every=1000, log_every=1, validate_every=0)
    run_cfg.update(run)
    return TrainConfig(
        stage="stage1",
        data=DataConfig(data=(str(data),), resolution=RES, align="resize", variants=4, num_workers=0, val_images=2),
        run=RunConfig(**run_cfg),
        stage1=Stage1Config(lr=2e-3, batch_size=2, epochs=1000, reseed_every=0),
        adapter=TINY_ADAPTER,
    )


def stage2_config(data: Path, out: Path, adapter: Path, **run) -> TrainConfig:
    run_cfg = dict(output_dir=str(out), seed=0, checkpoint_every=1000, log_every=1, validate_every=0)
    run_cfg.update(run)
    return TrainConfig(
        stage="stage2",
        data=DataConfig(data=(str(data),), resolution=RES, align="resize", variants=2, num_workers=0, val_images=1),
        run=RunConfig(**run_cfg),
        stage2=Stage2Config(adapter=str(adapter), lr=1e-3, batch_size=1, steps=1000),
    )


class TinyRegressor(nn.Module):
    """A 3DMM-regressor stand-in: conv trunk + 257-d head."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 257))

    def forward(self, x):
        return self.net(x)


def tiny_encoders(config):
    """A loss-encoder factory with random tiny encoders behind the real wrappers."""
    import lpips
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from train.losses import ClipIdentity, FaceStructure, LossEncoders, LpipsDistance

    torch.manual_seed(11)
    clip = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8, projection_dim=16)
    )
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        perceptual = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    return LossEncoders(
        lpips=LpipsDistance(perceptual) if config.lambda_lpips else None,
        identity=ClipIdentity(clip) if config.lambda_id else None,
        structure=FaceStructure(TinyRegressor(), input_size=32) if config.lambda_fs else None,
    )
