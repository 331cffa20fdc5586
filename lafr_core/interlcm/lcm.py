"""InterLCM's sampling: the LQ latent as the LCM's first-step prediction, then LCM steps.

What its code does (basicsr/utils/lcm_utils.py over diffusers 0.28's LatentConsistencyModel
pipeline and LCMScheduler, with LCM_Dreamshaper_v7's scheduler config), reimplemented without
diffusers so every host can run it:

* timesteps: LCMScheduler "leading" with 50 original steps: the grid 19, 39, ..., 999 (every
  1000 / 50 = 20th step) read backwards at floor(i * 50 / n), i < n. `--num_inference_steps`
  is the InterLCM step count + 1: 2 -> [999, 499] (the "1-step" weights), 4 -> [999, 759, 499,
  259] (the "3-step" weights);
* step 0 at t=999 calls no network: the LQ latent (VAE posterior MEAN x 0.18215) is taken as the
  denoised sample and re-noised to the next timestep t': sqrt(a') x0 + sqrt(1 - a') noise;
* every later step: the UNet (with the spatial encoder's residuals) predicts eps at t, then
  x0 = (x - sqrt(1 - a) eps) / sqrt(a), denoised = c_out(t) x0 + c_skip(t) x with LCM's
  boundary scalings (sigma_data 0.5, timestep_scaling 10), re-noised to the next timestep
  except on the last step, whose `denoised` is the result;
* guidance: LCM Dreamshaper takes guidance scale 8 as an embedding of w = 8 - 1 (a sinusoidal
  256-d vector of w * 1000) through the UNet's `timestep_cond`; no classifier-free guidance.

Noise: their code draws it unseeded from the global generator. Ours gives every face its own
CPU torch.Generator seeded with the same `seed`, each drawing its face's noise step after step:
every face gets the batch-of-one draw, so its result depends neither on the batch, its place in
it, the chunking nor (on video) the frame: a still face gets the same noise in every frame,
which keeps it from flickering. A single face with seed s draws exactly what diffusers draws
with generator=torch.Generator().manual_seed(s).

The schedule is SD1.5's "scaled_linear" (the same as SD2.1's), computed in float64.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..schedule import sd21_alphas_cumprod

NUM_TRAIN_TIMESTEPS = 1000
ORIGINAL_STEPS = 50  # LCM_Dreamshaper_v7's scheduler "original_inference_steps"
SIGMA_DATA = 0.5  # LCMScheduler's boundary condition
TIMESTEP_SCALING = 10.0  # LCM_Dreamshaper_v7's scheduler "timestep_scaling"
GUIDANCE_SCALE = 8.0  # inference_InterLCM.py
GUIDANCE_EMBED_DIM = 256  # LCM_Dreamshaper_v7's UNet time_cond_proj_dim
INTERLCM_STEPS = (1, 3)  # the published weights: visual/spatial_encoder_{1step,3step}.pth

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def lcm_timesteps(num_inference_steps: int, original_steps: int = ORIGINAL_STEPS) -> list[int]:
    """LCMScheduler's timesteps ("leading", strength 1): e.g. 4 -> [999, 759, 499, 259]."""
    if not 1 <= num_inference_steps <= original_steps:
        raise ValueError(f"num_inference_steps must be in 1..{original_steps}, got {num_inference_steps}")
    stride = NUM_TRAIN_TIMESTEPS // original_steps
    grid = [(i + 1) * stride - 1 for i in range(original_steps)][::-1]
    return [grid[(i * original_steps) // num_inference_steps] for i in range(num_inference_steps)]


def interlcm_timesteps(steps: int) -> list[int]:
    """InterLCM's schedule for its step count (network calls): LCM with steps + 1 timesteps."""
    if steps not in INTERLCM_STEPS:
        raise ValueError(f"InterLCM runs 1 or 3 steps (its published weights), got {steps}")
    return lcm_timesteps(steps + 1)


def alpha_bar(timestep: int) -> float:
    """alphas_cumprod[timestep] of SD1.5's scaled_linear schedule, float64."""
    return float(sd21_alphas_cumprod()[timestep])


def boundary_scalings(timestep: int) -> tuple[float, float]:
    """LCM's (c_skip, c_out) at a discrete timestep (scaled by TIMESTEP_SCALING)."""
    t = timestep * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (t**2 + SIGMA_DATA**2)
    c_out = t / math.sqrt(t**2 + SIGMA_DATA**2)
    return c_skip, c_out


def guidance_embedding(batch: int, scale: float = GUIDANCE_SCALE, dim: int = GUIDANCE_EMBED_DIM) -> torch.Tensor:
    """[batch, dim] float32: sin | cos of (scale - 1) * 1000 at frequencies 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    # float32 throughout, as diffusers computes it: angles reach 7000 rad, so a float64 frequency
    # would move sin/cos by up to ~1e-3
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -step)
    angles = (torch.full((batch,), scale - 1.0) * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def face_generators(count: int, seed: int) -> list[torch.Generator]:
    """One CPU generator per face, each seeded `seed` (module doc)."""
    return [torch.Generator().manual_seed(int(seed)) for _ in range(count)]


def draw_noise(like: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like `like`, one face per generator, on like's device."""
    if len(generators) != like.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {like.shape[0]}")
    noise = torch.cat([torch.randn((1, *like.shape[1:]), generator=g, dtype=torch.float32) for g in generators])
    return noise.to(like.device, like.dtype)


def renoise(denoised: torch.Tensor, timestep: int, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    a = alpha_bar(timestep)
    return math.sqrt(a) * denoised + math.sqrt(1.0 - a) * noise


def lcm_denoise(sample: torch.Tensor, eps: torch.Tensor, timestep: int) -> torch.Tensor:
    """LCM's consistency output: c_out x0(eps) + c_skip x_t (epsilon prediction)."""
    a = alpha_bar(timestep)
    x0 = (sample - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
    c_skip, c_out = boundary_scalings(timestep)
    return c_out * x0 + c_skip * sample


def interlcm_sample(
    z_lq: torch.Tensor,
    predict_eps: EpsFn,
    steps: int,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Scaled LQ latent [n, 4, h, w] -> restored scaled latent (module doc).

    `predict_eps(x_t, t)`: the UNet with the spatial encoder's residuals, the visual tokens and
    the guidance embedding bound in; called `steps` times."""
    timesteps = interlcm_timesteps(steps)
    denoised = z_lq  # step 0: the LQ latent is the prediction at timesteps[0]
    for t in timesteps[1:]:
        sample = renoise(denoised, t, draw_noise(denoised, generators))
        denoised = lcm_denoise(sample, predict_eps(sample, t), t)
    return denoised
