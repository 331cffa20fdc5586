"""Colour correction of restored crops against the input crops, batched over faces.

A one-step diffusion restorer can shift skin tone or overall brightness; pasted back, a shifted
face shows as a patch. Three fixes, all computed in crop space before the paste:
  * "lab": match each face's per-channel mean and standard deviation in CIE LAB to the input
    face's, weighted by the face mask (so background in the crop corners does not count);
  * "wavelet": keep the restored face's high frequencies (detail) and take the low frequencies
    (colour, shading) from the input face, as StableSR's wavelet colour fix does (OSEDiff's
    `wavelet_color_fix` is the same computation);
  * "adain": OSEDiff's default (`adain_color_fix`, test_osediff.py): each RGB channel's mean and
    standard deviation over the WHOLE crop made the input crop's. OSEDiff-face is trained and run
    on aligned 512 crops, so whole-crop statistics here are exactly what its own code computes;
    the face mask is deliberately not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOUR_CORRECTIONS = ("none", "lab", "wavelet", "adain")
# A host's choice meaning "what the LAFR-format file asks for" (`lafr.colour_fix`: none for LAFR
# files, adain for converted OSEDiff files), so one default suits every engine.
FILE_COLOUR_FIX = "file default"


def colour_for(choice: str, file_colour_fix: str) -> str:
    """The correction to run: the user's choice, or with FILE_COLOUR_FIX the file's own."""
    return file_colour_fix if choice == FILE_COLOUR_FIX else choice

# sRGB (D65) <-> XYZ, IEC 61966-2-1
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])
_LAB_EPS = 216 / 24389  # CIE: (6/29)^3
_LAB_KAPPA = 24389 / 27
# OSEDiff's calc_mean_std (my_utils/wavelet_color_fix.py): eps added to the (unbiased) variance
ADAIN_EPS = 1e-5
WAVELET_LEVELS = 5  # StableSR's wavelet colour fix: dilations 1..16 -> low band below ~1/64 of a 512 crop


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] sRGB 0..1 -> CIE LAB (L 0..100)."""
    xyz = _srgb_to_linear(rgb.float()) @ _RGB_TO_XYZ.to(rgb.device).T / _WHITE_D65.to(rgb.device)
    f = torch.where(xyz > _LAB_EPS, xyz.clamp_min(_LAB_EPS) ** (1 / 3), (_LAB_KAPPA * xyz + 16) / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE LAB [..., 3] -> sRGB 0..1 (clamped)."""
    fy = (lab[..., 0] + 16) / 116
    f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], dim=-1)
    xyz = torch.where(f**3 > _LAB_EPS, f**3, (116 * f - 16) / _LAB_KAPPA) * _WHITE_D65.to(lab.device)
    rgb = xyz @ torch.linalg.inv(_RGB_TO_XYZ).to(lab.device).T
    return _linear_to_srgb(rgb).clamp(0, 1)


def _weighted_mean_std(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H, W, C], weights [N, H, W] -> per-face, per-channel mean and std [N, 1, 1, C]."""
    w = weights[..., None] / weights.sum(dim=(1, 2), keepdim=True)[..., None].clamp_min(1e-6)
    mean = (x * w).sum(dim=(1, 2), keepdim=True)
    var = ((x - mean) ** 2 * w).sum(dim=(1, 2), keepdim=True)
    return mean, var.sqrt()


def match_lab_mean_std(crops: torch.Tensor, reference: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Shift and scale each crop's LAB channels to the reference crop's masked mean and std."""
    lab, ref = rgb_to_lab(crops), rgb_to_lab(reference)
    mean, std = _weighted_mean_std(lab, weights)
    ref_mean, ref_std = _weighted_mean_std(ref, weights)
    # a flat restored channel (std ~ 0) is only shifted, never blown up
    gain = torch.where(std > 1e-3, ref_std / std.clamp_min(1e-3), torch.ones_like(std))
    return lab_to_rgb((lab - mean) * gain + ref_mean).to(crops.dtype)


def wavelet_low_pass(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """[N, C, H, W] -> the low band after `levels` a-trous blurs (3x3 binomial, dilation 2^i)."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=x.device, dtype=x.dtype) / 16
    channels = x.shape[1]
    kernel = kernel.expand(channels, 1, 3, 3)
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(x, (dilation,) * 4, mode="replicate")
        x = F.conv2d(padded, kernel, groups=channels, dilation=dilation)
    return x


def transfer_low_frequency(crops: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """Restored detail on the reference's colour: crops - low(crops) + low(reference)."""
    x = crops.permute(0, 3, 1, 2).float()
    ref = reference.permute(0, 3, 1, 2).float()
    out = x - wavelet_low_pass(x, levels) + wavelet_low_pass(ref, levels)
    return out.clamp(0, 1).permute(0, 2, 3, 1).to(crops.dtype)


def adain_match(crops: torch.Tensor, reference: torch.Tensor, eps: float = ADAIN_EPS) -> torch.Tensor:
    """Each crop's RGB channels shifted and scaled to the reference crop's mean and std, whole-crop
    statistics with the unbiased variance plus `eps` on both sides, clamped to 0..1: OSEDiff's
    adaptive instance normalisation (computed in fp32 on floats; OSEDiff runs it on 8-bit images)."""
    x, ref = crops.float(), reference.float()

    def mean_std(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t.mean(dim=(1, 2), keepdim=True), (t.var(dim=(1, 2), keepdim=True) + eps).sqrt()

    mean, std = mean_std(x)
    ref_mean, ref_std = mean_std(ref)
    return ((x - mean) / std * ref_std + ref_mean).clamp(0, 1).to(crops.dtype)


def correct_colour(crops: torch.Tensor, reference: torch.Tensor, method: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Colour-correct restored `crops` [N, S, S, 3] towards the input `reference` crops.

    method: "none", "lab" (weighted by `weights` [N, S, S], the face mask; the whole crop without),
    "wavelet" or "adain" (both on the whole crop, as OSEDiff and StableSR do)."""
    if method not in COLOUR_CORRECTIONS:
        raise ValueError(f"colour correction must be one of {', '.join(COLOUR_CORRECTIONS)}, got {method!r}")
    if crops.shape != reference.shape:
        raise ValueError(f"restored crops {tuple(crops.shape)} and input crops {tuple(reference.shape)} differ in shape")
    if method == "none" or crops.shape[0] == 0:
        return crops
    if method == "lab":
        if weights is None:
            weights = torch.ones(crops.shape[:3], device=crops.device)
        return match_lab_mean_std(crops, reference, weights.to(crops.device))
    if method == "adain":
        return adain_match(crops, reference)
    return transfer_low_frequency(crops, reference)
