"""Landmarks smoothed over time: a centred, Gaussian-weighted local-linear fit.

Why this filter. A still face detected frame by frame jumps by a pixel or more (sensor noise,
compression, the pixel grid's phase); the aligned crop and the paste mask move with it and the
restorer turns that into flicker. The smoothing must (1) cut that noise at least 4x, (2) not
lag a face that moves or zooms steadily (the crop would slide off the face, and the paste with
it), and (3) be deterministic. A causal low-pass (exponential, One Euro, Kalman without a
smoother pass) can only trade (1) against (2): it is always behind a moving face. A centred
window sees as far ahead as behind, so we fit, for every frame t, a straight line through the
samples t - R .. t + R weighted by exp(-k^2 / 2 sigma^2) and take its value at t:

* steady motion (constant velocity, constant zoom rate in landmark space) lies on the line, so
  it is reproduced exactly, zero lag, also at the ends of a track where the window is one-sided
  (a weighted moving average would lag there; the local-linear fit's slope term removes it);
* in the interior the weights are symmetric, so the estimate equals the Gaussian-weighted mean:
  white landmark noise drops by sqrt(sum w)^2 / sum w^2 ~ sqrt(2 sqrt(pi) sigma) in std,
  4.2x at sigma = 5 frames (4.6x at 6);
* curvature is not followed exactly: an acceleration a (px / frame^2) leaves a bias of about
  a sigma^2 / 2 in the interior (0.1 px for a = 0.008, a face that speeds up from rest to
  4 px/frame in 500 frames), and a sinusoidal sway of period P frames is damped by
  exp(-2 pi^2 sigma^2 / P^2) (a 2 px sway of period 60 frames is followed to 0.25 px);
* a fixed linear filter of the samples in float64: same input, same output.

DEFAULT_SIGMA = 5 frames is the smallest strength that meets the 4x noise cut in the interior;
R = ceil(3 sigma) = 15 frames (0.5 s at 30 fps) is both the window's half width and the
lookahead the streaming needs. A local quadratic fit would follow curvature better but needs
sigma ~ 8 for the same noise cut (its equivalent kernel has negative side lobes): a longer
lookahead for a bias that is already sub-pixel on ordinary footage.

Landmarks are smoothed coordinate by coordinate (the 5 points independently, so a mouth that
opens still opens); the box and score the same way, so the paste window follows the landmarks.
"""

from __future__ import annotations

import math

import numpy as np

# Temporal smoothing strength in frames; see the module docstring for why 5.
DEFAULT_SIGMA = 5.0


def window_radius(sigma: float) -> int:
    """Half width R of the fitting window (frames): ceil(3 sigma); 0 when sigma is 0 (off)."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 frames, got {sigma}")
    return int(math.ceil(3 * sigma)) if sigma > 0 else 0


def fit_at(values: np.ndarray, offsets: np.ndarray, sigma: float) -> np.ndarray:
    """Local-linear estimate at offset 0 from samples `values` [n, ...] at frame `offsets` [n]
    (relative to the frame estimated, in frames), Gaussian weights of width `sigma`.

    Weighted least squares for y(k) = a + b k: with S_j = sum w k^j and Y_j = sum w k^j y,
    a = (S2 Y0 - S1 Y1) / (S0 S2 - S1^2). One sample (or sigma = 0) gives that sample back."""
    values = np.asarray(values, dtype=np.float64)
    k = np.asarray(offsets, dtype=np.float64)
    if sigma == 0 or len(k) == 1:
        return values[k == 0][0] if (k == 0).any() else values[np.argmin(np.abs(k))]
    w = np.exp(-(k**2) / (2 * sigma**2))
    shape = (-1,) + (1,) * (values.ndim - 1)
    s0, s1, s2 = w.sum(), (w * k).sum(), (w * k * k).sum()
    y0 = (w.reshape(shape) * values).sum(axis=0)
    y1 = ((w * k).reshape(shape) * values).sum(axis=0)
    det = s0 * s2 - s1 * s1
    if det <= 1e-12 * max(s0 * s2, 1e-300):  # all samples at one offset: the weighted mean
        return y0 / s0
    return (s2 * y0 - s1 * y1) / det


def smooth_series(values: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """values [T, ...] sampled at consecutive frames -> smoothed [T, ...] (float64).

    Each frame is fitted from the samples within window_radius(sigma) of it that exist (fewer
    near the ends: a one-sided window, still zero lag for steady motion). The streaming path
    calls fit_at on the same windows, so both give identical numbers."""
    values = np.asarray(values, dtype=np.float64)
    radius = window_radius(sigma)
    if radius == 0:
        return values.copy()
    n = values.shape[0]
    out = np.empty_like(values)
    for t in range(n):
        lo, hi = max(0, t - radius), min(n, t + radius + 1)
        out[t] = fit_at(values[lo:hi], np.arange(lo - t, hi - t), sigma)
    return out


def noise_reduction(sigma: float = DEFAULT_SIGMA) -> float:
    """Interior std reduction of white noise by the filter: 1 / sqrt(sum of squared weights),
    weights normalised to sum 1 (what the tests and the docstring quote)."""
    radius = window_radius(sigma)
    if radius == 0:
        return 1.0
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(k**2) / (2 * sigma**2))
    w /= w.sum()
    return float(1 / np.sqrt((w**2).sum()))
