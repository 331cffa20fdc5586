"""Full-reference metrics on batches of faces [B, H, W, 3] float 0..1 -> one number per face.

The face-restoration protocol this follows (CelebA-Test as in GFPGAN, VQFR, RestoreFormer, DAEFR,
whose Table-1 numbers the LAFR paper reports): basicsr's `calculate_psnr` / `calculate_ssim` on
the 8-bit PNGs, on the RGB channels (`test_y_channel` False, crop_border 0: DAEFR's and
RestoreFormer's cal_psnr_ssim.py call them so; VQFR's script defaults to RGB too). Here:

- PSNR: 10 log10(255^2 / MSE) over all pixels and channels of one image, 0..255 scale; inf for
  identical images (basicsr's too).
- SSIM: Wang et al. 2004 with an 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, L 255,
  "valid" filtering (the 5-pixel border is not scored), per channel, then the mean of the
  channels. `y_channel=True` scores the MATLAB/BT.601 luma Y = 16 + 65.481 R + 128.553 G +
  24.966 B instead (basicsr's test_y_channel), as some super-resolution papers do.
- Landmark distance (LMD): mean Euclidean distance of the 5 landmarks (eyes, nose, mouth corners)
  our bundled MTCNN finds on the output vs on the HQ face, in pixels of the crop. VQFR's script
  reports the same quantity in pixels with a 98-point landmark model (AWing), so our 5-point
  numbers are comparable between runs here, not with the paper's column.
- Fréchet distance of two Gaussians (FID's formula), for `lafr_core.eval.learned`.

The evaluation runner quantises every image to 8 bits first, as the protocol reads saved PNGs;
these functions score whatever floats they are given.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
Y_WEIGHTS = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr / basicsr, for R, G, B in 0..1


def check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"metrics compare two batches [B, H, W, 3] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def to_255(images: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """[B, H, W, 3] 0..1 -> float64 [B, C, H, W] in 0..255 (C = 3, or 1 for luma Y)."""
    x = images.detach().to(torch.float64)
    if y_channel:
        w = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=x.device)
        return ((x * w).sum(-1, keepdim=True) + 16.0).permute(0, 3, 1, 2)
    return (x * 255.0).permute(0, 3, 1, 2)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit values a PNG would hold (still float 0..1)."""
    return (images.clamp(0, 1) * 255.0 + 0.5).floor() / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """[B] PSNR in dB between a and b (0..255 scale)."""
    check_pair(a, b)
    mse = (to_255(a, y_channel) - to_255(b, y_channel)).pow(2).flatten(1).mean(1)
    return torch.where(mse == 0, torch.full_like(mse, math.inf), 10.0 * torch.log10(255.0**2 / mse))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """[size] normalised Gaussian (OpenCV's getGaussianKernel; the 2-D window is its outer product)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """[B] SSIM (Gaussian 11 / 1.5, valid region, mean over channels), float64.

    Filtered with OpenCV's separable filter on the CPU: torch has no fast float64 convolution
    there, and float32 would lose the variance terms (E[x^2] - E[x]^2 of values up to 255^2)."""
    check_pair(a, b)
    x, y = to_255(a, y_channel).cpu().numpy(), to_255(b, y_channel).cpu().numpy()
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(x.shape[-2:])}")
    g = gaussian_window_1d().numpy()
    r = SSIM_WINDOW // 2

    def blur(t: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(t, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]  # valid region only

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = np.zeros(x.shape[:2])
    for i, j in np.ndindex(*x.shape[:2]):
        u, v = x[i, j], y[i, j]
        mu_u, mu_v = blur(u), blur(v)
        var_u, var_v, cov = blur(u * u) - mu_u**2, blur(v * v) - mu_v**2, blur(u * v) - mu_u * mu_v
        ssim_map = ((2 * mu_u * mu_v + c1) * (2 * cov + c2)) / ((mu_u**2 + mu_v**2 + c1) * (var_u + var_v + c2))
        out[i, j] = ssim_map.mean()
    return torch.from_numpy(out.mean(1))


def landmarks_of(images: torch.Tensor, detector: str = "mtcnn") -> torch.Tensor:
    """[B, 5, 2] landmarks of the largest face in each image, NaN where none is found."""
    from ..face import detect_faces

    faces = detect_faces(images, detector=detector, select="largest")
    out = torch.full((images.shape[0], 5, 2), math.nan, dtype=torch.float64)
    out[faces.image_index.cpu()] = faces.landmarks.cpu().double()
    return out


def landmark_distance(landmarks_a: torch.Tensor, landmarks_b: torch.Tensor) -> torch.Tensor:
    """[B] mean Euclidean distance over the 5 points, in pixels (NaN where a face is missing)."""
    return (landmarks_a - landmarks_b).norm(dim=-1).mean(-1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), the Fréchet distance of two Gaussians.

    Tr((S1 S2)^1/2) is the sum of the square roots of the eigenvalues of S1^1/2 S2 S1^1/2, which
    is symmetric positive semi-definite: two symmetric eigendecompositions, no complex sqrtm."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    vals, vecs = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    inner = root1 @ s2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_root)
