"""The webui's image types <-> lafr_core's float pixels [1, H, W, C] 0..1, at the host edge only.

The face restorer gets numpy uint8 RGB (processing.py hands it each sample); the Extras script
gets a PIL image that may be RGBA or grey. Pixels the restorer does not touch come back with
their exact values (v / 255 * 255 rounds back to v), and alpha rides along untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_NATIVE_MODES = {"RGB": 3, "RGBA": 4, "L": 1}  # channel layouts lafr_core.face takes as they are


class UnsupportedImage(TypeError):
    """An image the face restorer cannot take (the message names its type and shape)."""


def array_to_pixels(array: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3 or 4] -> float [1, H, W, C] 0..1."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise UnsupportedImage(f"the face restorer takes uint8 RGB(A) images [H, W, 3|4], got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)[None]


def pixels_to_array(pixels: torch.Tensor) -> np.ndarray:
    """float [1, H, W, C] 0..1 -> uint8 [H, W, C] (rounded, clamped)."""
    return pixels[0].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def pil_to_pixels(image: Any) -> tuple[torch.Tensor, str]:
    """PIL image -> (float [1, H, W, C], the mode to convert the result back to). RGB, RGBA and L
    are used as they are; other modes go through RGBA when they carry transparency, else RGB."""
    mode = image.mode
    if mode not in _NATIVE_MODES:
        transparent = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).float().div_(255.0)[None], mode


def pixels_to_pil(pixels: torch.Tensor, mode: str) -> Any:
    """float [1, H, W, C] -> PIL image: RGB, RGBA and L as given, LA converted back; other modes
    (palette, CMYK, 16-bit) stay RGB/RGBA, as the webui's own face restorers return them."""
    from PIL import Image

    array = pixels_to_array(pixels)
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # L, RGB or RGBA by shape
    return image.convert("LA") if mode == "LA" else image
