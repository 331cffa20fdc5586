import json
import math

import pytest
import torch

from conftest import SD21_CONFIG_DIR
from lafr_core.schedule import alpha_bar, comfy_sigma, sd21_alphas_cumprod, x0_coefficients, x0_from_eps


def _diffusers_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(json.loads((SD21_CONFIG_DIR / "scheduler_config.json").read_text()))


def test_alphas_cumprod_matches_diffusers_sd21_scheduler():
    ours = sd21_alphas_cumprod()
    theirs = _diffusers_scheduler().alphas_cumprod.double()  # diffusers keeps float32
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=0)
    assert alpha_bar(999) == pytest.approx(0.0046600, rel=1e-3)


def test_x0_from_eps_matches_diffusers_step():
    scheduler = _diffusers_scheduler()
    gen = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    theirs = scheduler.step(eps, 999, x_t, generator=gen).pred_original_sample
    ours = x0_from_eps(x_t, eps)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-5)


def test_x0_coefficients_match_diffusers_step_and_comfy_sigma():
    """diffusers' DDPMScheduler.step is linear in (x_t, eps): x0 = c_z * x_t - c_eps * eps. Read
    c_z and c_eps off it with unit inputs (float64 in, so only its float32 alphas_cumprod rounds)."""
    scheduler = _diffusers_scheduler()
    one, zero = torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    ref_c_z = float(scheduler.step(zero, 999, one).pred_original_sample)
    ref_c_eps = -float(scheduler.step(one, 999, zero).pred_original_sample)
    c_z, c_eps = x0_coefficients(999)
    assert c_z == pytest.approx(ref_c_z, rel=1e-5) and c_eps == pytest.approx(ref_c_eps, rel=1e-5)
    assert c_z == pytest.approx(14.6488, abs=1e-3) and c_eps == pytest.approx(14.6146, abs=1e-3)
    sigma = comfy_sigma(999)
    assert sigma == pytest.approx(14.6146, abs=1e-3)  # ComfyUI's sigmas[999] for SD2.1
    assert math.sqrt(1 + sigma**2) == pytest.approx(c_z)


def test_timestep_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 999\]"):
        alpha_bar(1000)
