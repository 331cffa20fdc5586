"""SD2.1's DDPM noise schedule and the x0-from-eps formula, in float64.

LAFR treats the aligned latent as x_t at t = 999 and turns the UNet's epsilon into x0 with
alphas_cumprod[999] ~= 0.0047. Dividing by sqrt(0.0047) amplifies every rounding error ~15x, so
the schedule is computed in float64 (as a python float) and only the final affine is applied in
the tensor's dtype. No diffusers import: the hosts run this without it.
"""

from __future__ import annotations

import math

import torch

SD21_BETA_START = 0.00085
SD21_BETA_END = 0.012
SD21_NUM_TRAIN_TIMESTEPS = 1000
LAFR_TIMESTEP = 999


def sd21_alphas_cumprod(
    beta_start: float = SD21_BETA_START,
    beta_end: float = SD21_BETA_END,
    num_train_timesteps: int = SD21_NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """The "scaled_linear" schedule of SD1/SD2: betas linear in sqrt space, cumulative product.

    Returns a float64 tensor of length `num_train_timesteps`.
    """
    sqrt_betas = torch.linspace(
        math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps, dtype=torch.float64, device="cpu"
    )
    return torch.cumprod(1.0 - sqrt_betas**2, dim=0)


def alpha_bar(timestep: int = LAFR_TIMESTEP) -> float:
    """alphas_cumprod[timestep] of SD2.1 as a python float (float64)."""
    alphas = sd21_alphas_cumprod()
    if not 0 <= timestep < alphas.numel():
        raise ValueError(f"timestep must be in [0, {alphas.numel() - 1}], got {timestep}")
    return float(alphas[timestep])


def x0_coefficients(timestep: int = LAFR_TIMESTEP) -> tuple[float, float]:
    """(c_z, c_eps) with x0 = c_z * x_t - c_eps * eps, both computed in float64."""
    a = alpha_bar(timestep)
    return 1.0 / math.sqrt(a), math.sqrt(1.0 - a) / math.sqrt(a)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, timestep: int = LAFR_TIMESTEP) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a) with a = alphas_cumprod[timestep]."""
    a = alpha_bar(timestep)
    return (x_t - math.sqrt(1.0 - a) * eps) / math.sqrt(a)


def comfy_sigma(timestep: int = LAFR_TIMESTEP) -> float:
    """The k-diffusion sigma of a DDPM step: sqrt((1 - a) / a). ComfyUI's EPS models take
    x = x_t * sqrt(1 + sigma^2) at this sigma and return x0 directly."""
    a = alpha_bar(timestep)
    return math.sqrt((1.0 - a) / a)
