"""Validation grids: one row per validation face, one labelled column per stage of the chain
(stage 1: LQ | LQ latent decoded | aligned decoded | HQ; stage 2: LQ | aligned decoded |
restored | HQ), written as PNG to <output_dir>/validation/ and, when enabled, to TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

LABEL_HEIGHT = 14


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in -1..1 (computed on 0..1)."""
    mse = float((((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def grid(columns: list[torch.Tensor], labels: list[str]) -> np.ndarray:
    """Columns of [b, 3, H, W] images in -1..1 -> one uint8 [rows*H + label, cols*W, 3] image."""
    if len(columns) != len(labels) or not columns:
        raise ValueError("grid needs one label per column")
    rows = [torch.cat([c[i].float().clamp(-1, 1) for c in columns], dim=2) for i in range(columns[0].shape[0])]
    image = ((torch.cat(rows, dim=1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return _with_labels(image, labels, columns[0].shape[-1])


def _with_labels(image: np.ndarray, labels: list[str], width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + LABEL_HEIGHT), (0, 0, 0))
    canvas.paste(Image.fromarray(image), (0, LABEL_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((i * width + 2, 1), label, fill=(255, 255, 255))
    return np.asarray(canvas)


def write_grid(image: np.ndarray, folder: str | Path, step: int) -> Path:
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.png"
    tmp = folder / f".{path.name}.tmp.png"
    Image.fromarray(image).save(tmp)
    tmp.replace(path)
    return path


def log_grid(accelerator, image: np.ndarray, step: int, tag: str = "validation") -> None:
    """Add the grid to TensorBoard when that tracker is on."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, image, step, dataformats="HWC")
