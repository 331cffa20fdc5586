"""Real-photo fixtures for the face tests and bench/bench_face.py (no network).

HAND_LANDMARKS were read by eye from 5x nearest-neighbour zooms of the two portraits with a
10-pixel coordinate ruler (pupil centres, nose tip, mouth corners), pixel centres at integers;
they are independent of the detector, which the tests compare against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"
PORTRAITS = ("astronaut.png", "grace_hopper.jpg")
# left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right)
HAND_LANDMARKS = {
    "astronaut.png": [(205, 101), (247, 103), (225, 128), (201, 139), (246, 142)],
    "grace_hopper.jpg": [(221, 191), (311, 186), (268, 238), (233, 280), (306, 276)],
}
# head regions (x0, y0, x1, y1) cut out to compose multi-face canvases
HEAD_REGIONS = {"astronaut.png": (140, 20, 310, 200), "grace_hopper.jpg": (150, 90, 390, 370)}


def load_portrait(name: str) -> torch.Tensor:
    """[1, H, W, 3] float 0..1."""
    array = np.asarray(Image.open(DATA / name).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array.copy())[None]


@dataclass(frozen=True)
class Placed:
    name: str
    scale: float
    x: int
    y: int

    def landmarks(self) -> torch.Tensor:
        """Where the hand-checked landmarks land on the canvas ([5, 2])."""
        x0, y0, _, _ = HEAD_REGIONS[self.name]
        lm = torch.tensor(HAND_LANDMARKS[self.name], dtype=torch.float32) - torch.tensor([x0, y0])
        return (lm + 0.5) * self.scale - 0.5 + torch.tensor([self.x, self.y])


# four faces at four scales on a 1024x1024 canvas (also the benchmark's scene)
CANVAS_FACES = (
    Placed("astronaut.png", 0.6, 60, 80),
    Placed("grace_hopper.jpg", 1.0, 600, 40),
    Placed("astronaut.png", 1.8, 40, 560),
    Placed("grace_hopper.jpg", 0.55, 700, 700),
)


def compose_canvas(placed=CANVAS_FACES, size=(1024, 1024), background=0.45) -> torch.Tensor:
    """[1, H, W, 3] canvas with head cut-outs resized (antialiased bicubic) and placed."""
    canvas = torch.full((1, size[0], size[1], 3), background)
    for p in placed:
        x0, y0, x1, y1 = HEAD_REGIONS[p.name]
        head = load_portrait(p.name)[:, y0:y1, x0:x1].permute(0, 3, 1, 2)
        h, w = round((y1 - y0) * p.scale), round((x1 - x0) * p.scale)
        head = F.interpolate(head, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        canvas[0, p.y : p.y + h, p.x : p.x + w] = head[0].permute(1, 2, 0)
    return canvas


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
