"""Validation grids: one row per validation face, one labelled column per stage of the chain
(stage 1: LQ | LQ latent decoded | aligned decoded | HQ; stage 2: LQ | aligned decoded |
restored | HQ), written as PNG to <output_dir>/validation/ and, when enabled, to TensorBoard.

Stage 2 also scores the restored faces with the numbers `lafr eval` reports (lafr_core.eval's
protocol: 8-bit PSNR / SSIM, MTCNN landmark distance, the identity distance when an identity
model is installed, LPIPS when the loss has it), appended to <output_dir>/validation/metrics.csv,
so a user can watch fidelity and identity move during training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

LABEL_HEIGHT = 14


def to_faces(images: torch.Tensor) -> torch.Tensor:
    """[b, 3, H, W] in -1..1 -> [b, H, W, 3] in 0..1, rounded to 8 bits (what a PNG holds)."""
    from lafr_core.eval.metrics import quantise

    return quantise((images.detach().float().cpu().permute(0, 2, 3, 1) + 1) / 2)


def load_val_identity(backend: str, log=print):
    """The identity model for validation, or None (with the reason logged once)."""
    if backend == "none":
        return None
    from lafr_core.identity import IdentityModelError, load_identity_model

    try:
        model = load_identity_model(backend)
    except IdentityModelError as err:
        log(f"validation: no identity distance ({err})")
        return None
    log(f"validation: identity distance by {model.name} ({model.unit})")
    return model


def face_metrics(restored: torch.Tensor, hq: torch.Tensor, *, identity=None, lpips=None, landmarks: bool = True) -> dict[str, float]:
    """Means over the faces ([b, 3, H, W] in -1..1) of PSNR, SSIM, and when asked: landmark
    distance (px, faces MTCNN finds on both sides), identity distance, LPIPS."""
    from lafr_core.eval.metrics import landmark_distance, landmarks_of
    from lafr_core.eval.metrics import psnr as psnr_255
    from lafr_core.eval.metrics import ssim

    a, b = to_faces(restored), to_faces(hq)
    out = {"psnr": float(psnr_255(a, b).mean()), "ssim": float(ssim(a, b).mean())}
    if landmarks:
        distances = landmark_distance(landmarks_of(a), landmarks_of(b))
        found = distances[~torch.isnan(distances)]
        out["lmd"] = float(found.mean()) if len(found) else math.nan
    if identity is not None:
        out["identity"] = float(identity.distances(a, b).mean())
    if lpips is not None:
        with torch.no_grad():
            param = next(lpips.parameters())
            out["lpips"] = float(lpips(restored.to(param), hq.to(param)).float().mean())
    return out


def append_metrics(folder: str | Path, step: int, metrics: dict[str, float]) -> Path:
    """One CSV row per validation (header written with the first)."""
    path = Path(folder) / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(metrics)
    new = not path.is_file()
    with path.open("a") as handle:
        if new:
            handle.write(",".join(["step", *names]) + "\n")
        handle.write(",".join([str(step), *(f"{metrics[n]:.6g}" for n in names)]) + "\n")
    return path


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
