"""NIQE (Mittal et al. 2013, "Making a 'Completely Blind' Image Quality Analyzer"), as BasicSR scores it.

Face-restoration papers (the LAFR paper's Table 1 included) report NIQE from BasicSR's
`calculate_niqe(img, crop_border=0)` on the saved 8-bit PNGs; this module reproduces that number
(tests/test_eval_niqe.py checks it against BasicSR's own outputs, bench/niqe_reference.py makes
them). No learned weights: the pristine model (mean and covariance of 36 natural-scene features
fitted by the NIQE authors, and their 7x7 Gaussian window) is the bundled niqe_pris_params.npz
(BasicSR's copy of the official MATLAB parameters, Apache-2.0: see ATTRIBUTION.md beside it).

Steps, per image (lower is better):
1. 8-bit RGB -> MATLAB BT.601 luma Y (float32, rounded to integers, as BasicSR's to_y_channel +
   round); crop to whole 96x96 blocks.
2. At scales 1 and 1/2 (MATLAB's antialiased bicubic imresize): MSCN coefficients
   (Y - mu) / (sigma + 1) with the Gaussian window ('nearest' borders), then per block an
   asymmetric generalised Gaussian fit (AGGD, by moment matching on a 0.2..10 grid of shapes) of
   the coefficients and of their products with the 4 neighbours (circular within the block):
   18 features per scale.
3. The blocks' feature mean and covariance (rows with NaN dropped, as MATLAB's nancov) against the
   pristine Gaussian: sqrt((mu_p - mu)^T pinv((S_p + S) / 2) (mu_p - mu)).

Arithmetic follows BasicSR's dtypes (float32 images, float64 filter sums and statistics) and the
resize lays out its float32 sums as BasicSR's does, so the numbers agree to ~1e-14 on the test
portraits (the test allows 1e-6: another BLAS build may round a float32 sum differently).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

PARAMS_FILE = Path(__file__).with_name("niqe_pris_params.npz")
BLOCK = 96  # block size the pristine model was fitted with (the official recommendation)
BGR_Y_WEIGHTS = [24.966, 128.553, 65.481]  # MATLAB rgb2ycbcr luma, for B, G, R in 0..1
SHAPE_GRID = np.arange(0.2, 10.001, 0.001)  # AGGD shape parameters tried (the MATLAB release's grid)
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical, two diagonals


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu [36], covariance [36, 36], Gaussian window [7, 7]) of the NIQE pristine model."""
    with np.load(PARAMS_FILE) as params:
        return params["mu_pris_param"].reshape(-1), params["cov_pris_param"], params["gaussian_window"]


@lru_cache(maxsize=1)
def _moment_ratio_table() -> np.ndarray:
    """Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) for each shape a of SHAPE_GRID (monotone in a)."""
    return np.array([math.gamma(2 / a) ** 2 / (math.gamma(1 / a) * math.gamma(3 / a)) for a in SHAPE_GRID])


def luma(image_255: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB in 0..255 -> float32 [H, W] integer-valued Y (16..235), BasicSR's to_y_channel + round."""
    bgr01 = image_255[..., ::-1].astype(np.float32) / np.float32(255.0)
    y = ((np.dot(bgr01, BGR_Y_WEIGHTS) + 16.0) / 255.0).astype(np.float32)
    return (y * np.float32(255.0)).round()


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def matlab_resize_taps(n_in: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(first source index [n_out] (0-based, may be < 0 or run past the end: the caller pads
    symmetrically), weights [n_out, taps]) of MATLAB imresize(..., 'bicubic') along one axis,
    antialiased when shrinking; float32, like BasicSR's torch version."""
    n_out = math.ceil(n_in * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    x = torch.linspace(1, n_out, n_out)
    centre = x / scale + 0.5 * (1 - 1 / scale)
    taps = math.ceil(width) + 2
    index = torch.floor(centre - width / 2)[:, None] + torch.linspace(0, taps - 1, taps)[None, :]  # 1-based
    offset = centre[:, None] - index
    weights = scale * _cubic(offset * scale) if scale < 1 else _cubic(offset)
    weights = weights / weights.sum(1, keepdim=True)
    keep = (weights != 0).any(0)  # the spare first / last tap is all zero: drop it as MATLAB does
    keep[1:-1] = True
    return index[:, keep][:, 0].long() - 1, weights[:, keep].contiguous()


def _pad_symmetric(image: torch.Tensor, first: torch.Tensor, taps: int, dim: int) -> tuple[torch.Tensor, int]:
    """`image` padded along `dim` by mirroring (edge pixel repeated) far enough for every tap; and the pad before."""
    n = image.shape[dim]
    before, after = max(0, -int(first.min())), max(0, int(first.max()) + taps - n)
    head, tail = image.narrow(dim, 0, before).flip(dim), image.narrow(dim, n - after, after).flip(dim)
    return torch.cat([head, image, tail], dim), before


def matlab_resize(image: np.ndarray, scale: float) -> np.ndarray:
    """[H, W] float image resized like MATLAB imresize (bicubic, antialiased), float32, no rounding.

    Rows first, then columns; each output sample is one dot product over a slice of the padded
    image, with the slice laid out as in BasicSR's torch code (not one matrix product), so the
    float32 sums round alike."""
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))
    first, weights = matlab_resize_taps(x.shape[0], scale)
    padded, before = _pad_symmetric(x, first, weights.shape[1], 0)
    k = weights.shape[1]
    x = torch.stack([padded[f + before : f + before + k].T.mv(w) for f, w in zip(first.tolist(), weights)])
    first, weights = matlab_resize_taps(x.shape[1], scale)
    padded, before = _pad_symmetric(x, first, weights.shape[1], 1)
    k = weights.shape[1]
    return torch.stack([padded[:, f + before : f + before + k].mv(w) for f, w in zip(first.tolist(), weights)], 1).numpy()


def _filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """float32 image convolved with `window` ('nearest' borders), summed in float64, stored float32."""
    out = cv2.filter2D(image.astype(np.float64), cv2.CV_64F, window[::-1, ::-1].copy(), borderType=cv2.BORDER_REPLICATE)
    return out.astype(np.float32)


def mscn(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (Y - mu) / (sigma + 1), float32."""
    mu = _filter(image, window)
    sigma = np.sqrt(np.abs(_filter(np.square(image), window) - np.square(mu)))
    return (image - mu) / (sigma + 1)


def aggd_fit(values: np.ndarray) -> tuple[float, float, float]:
    """(shape alpha, left scale, right scale) of an asymmetric generalised Gaussian, by moment matching.

    An all-zero (or one-signed) block has no left or right spread: its scales are NaN and its
    shape is the grid's first value, as in the reference (np.argmin over NaNs picks index 0)."""
    x = values.reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.mean(x[x < 0] ** 2)) if (x < 0).any() else np.float32(np.nan)
        right = np.sqrt(np.mean(x[x > 0] ** 2)) if (x > 0).any() else np.float32(np.nan)
        ratio = left / right
        r = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
        r_norm = r * (ratio**3 + 1) * (ratio + 1) / (ratio**2 + 1) ** 2
    alpha = float(SHAPE_GRID[0 if np.isnan(r_norm) else np.argmin((_moment_ratio_table() - r_norm) ** 2)])
    spread = math.sqrt(math.gamma(1 / alpha) / math.gamma(3 / alpha))
    return alpha, float(left) * spread, float(right) * spread


def block_features(block: np.ndarray) -> list[float]:
    """18 NIQE features of one block of MSCN coefficients."""
    alpha, left, right = aggd_fit(block)
    features = [alpha, (left + right) / 2]
    for shift in NEIGHBOURS:
        alpha, left, right = aggd_fit(block * np.roll(block, shift, axis=(0, 1)))
        mean = (right - left) * (math.gamma(2 / alpha) / math.gamma(1 / alpha))
        features += [alpha, mean, left, right]
    return features


def niqe_of_luma(y: np.ndarray) -> float:
    """NIQE of one integer-valued float32 luma image [H, W] (at least 2 blocks of 96x96)."""
    mu_p, cov_p, window = pristine_model()
    nh, nw = y.shape[0] // BLOCK, y.shape[1] // BLOCK
    if nh * nw < 2:
        raise ValueError(f"NIQE needs at least two {BLOCK}x{BLOCK} blocks (e.g. 192x96 pixels), got {y.shape[0]}x{y.shape[1]}")
    image = y[: nh * BLOCK, : nw * BLOCK].astype(np.float32)
    per_scale = []
    for scale in (1, 2):
        coeffs, size = mscn(image, window), BLOCK // scale
        per_scale.append([block_features(coeffs[i * size : (i + 1) * size, j * size : (j + 1) * size]) for i in range(nh) for j in range(nw)])
        if scale == 1:
            image = matlab_resize(image / np.float32(255.0), 0.5) * np.float32(255.0)
    features = np.concatenate([np.array(f, dtype=np.float64) for f in per_scale], axis=1)
    mu = np.nanmean(features, axis=0)
    cov = np.cov(features[~np.isnan(features).any(axis=1)], rowvar=False)
    d = mu_p - mu
    return float(np.sqrt(d @ np.linalg.pinv((cov_p + cov) / 2) @ d))


def niqe(images: torch.Tensor) -> torch.Tensor:
    """[B] NIQE of RGB faces [B, H, W, 3] float 0..1 (read as 8-bit values), float64; lower is better."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"NIQE scores a batch [B, H, W, 3], got {tuple(images.shape)}")
    pixels = (images.detach().clamp(0, 1).cpu().double() * 255.0).round().numpy()
    return torch.tensor([niqe_of_luma(luma(p)) for p in pixels], dtype=torch.float64)
