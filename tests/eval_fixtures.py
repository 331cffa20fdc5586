"""Aligned FFHQ crops of the real test photos, computed once per test session (MTCNN on a full
photo is the slow part of the identity and eval tests)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import torch

from lafr_core.face import align_faces, detect_faces
from lafr_core.image_io import read_image

DATA = Path(__file__).parent / "data"
PHOTOS = {"astronaut": "astronaut.png", "grace_hopper": "grace_hopper.jpg"}


def photo(name: str) -> torch.Tensor:
    """[1, H, W, 3] float 0..1 of a test photo."""
    return read_image(DATA / PHOTOS[name]).pixels[..., :3]


def down_up(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """The photo downscaled by `factor` (OpenCV area) and back to its size (bicubic)."""
    image = pixels[0].numpy()
    h, w = image.shape[:2]
    small = cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)).clamp(0, 1)[None]


def align_largest(pixels: torch.Tensor, size: int = 512) -> torch.Tensor:
    faces = detect_faces(pixels, detector="mtcnn", select="largest")
    assert len(faces) == 1, "the test photo's face was not found"
    return align_faces(pixels, faces, size=size)[0]


@lru_cache(maxsize=None)
def aligned_crop(name: str, downscale: int = 1) -> torch.Tensor:
    """[1, 512, 512, 3] FFHQ crop of photo `name`, optionally of the photo downscaled and back."""
    pixels = photo(name)
    return align_largest(pixels if downscale == 1 else down_up(pixels, downscale))
