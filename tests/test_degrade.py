"""Seeded degradation (lafr_core/degrade.py): deterministic under a seed, within its ranges."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA_DIR, REPO
from lafr_core.degrade import DegradeConfig, DegradeRecord, degrade, jpeg, motion_kernel


@pytest.fixture(scope="module")
def face():
    from PIL import Image

    image = Image.open(DATA_DIR / "astronaut.png").convert("RGB").resize((96, 96))
    return np.asarray(image, dtype=np.float32) / 255.0


def test_same_seed_same_output_other_seed_other_output(face):
    a, rec_a = degrade(face, (3, 1, 7))
    b, rec_b = degrade(face, np.random.default_rng((3, 1, 7)))
    c, rec_c = degrade(face, (3, 1, 8))
    assert np.array_equal(a, b) and rec_a == rec_b
    assert not np.array_equal(a, c) and rec_a != rec_c


def test_every_parameter_within_its_range_and_probabilities_hold(face):
    config = DegradeConfig()
    small = face[::2, ::2].copy()  # 48x48: quick
    records: list[DegradeRecord] = []
    for seed in range(300):
        out, record = degrade(small, seed, config)
        assert out.shape == small.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        records.append(record)

    def applied(name):
        return [getattr(r, name) for r in records if getattr(r, name) is not None]

    assert all(config.gaussian_blur_sigma[0] <= s <= config.gaussian_blur_sigma[1] for s in applied("gaussian_sigma"))
    assert all(config.motion_blur_length[0] <= n <= config.motion_blur_length[1] for n in applied("motion_length"))
    assert all(0 <= a < 180 for a in applied("motion_angle"))
    assert all(1.0 <= s <= 12.0 for s in applied("scale"))
    assert set(applied("down_mode")) == set(config.downsample_modes)
    assert all(config.gaussian_noise_sigma[0] <= s <= config.gaussian_noise_sigma[1] for s in applied("noise_sigma"))
    assert all(config.poisson_peak[0] <= p <= config.poisson_peak[1] for p in applied("poisson_peak"))
    qualities = applied("jpeg_quality")
    assert all(30 <= q <= 95 for q in qualities) and min(qualities) < 40 and max(qualities) > 85
    # probabilities: 300 draws, 5 sigma bands
    for name, p in [("gaussian_sigma", 0.7), ("motion_length", 0.2), ("noise_sigma", 0.5), ("poisson_peak", 0.2), ("jpeg_quality", 0.8)]:
        rate = len(applied(name)) / len(records)
        assert abs(rate - p) < 5 * np.sqrt(p * (1 - p) / len(records)), (name, rate)
    assert len(applied("scale")) == len(records)  # downsample_prob 1.0


def test_all_stages_off_is_identity(face):
    off = DegradeConfig(gaussian_blur_prob=0, motion_blur_prob=0, downsample_prob=0, gaussian_noise_prob=0, poisson_noise_prob=0, jpeg_prob=0)
    out, record = degrade(face, 0, off)
    assert np.array_equal(out, face)
    assert record == DegradeRecord(None, None, None, None, None, None, None, None)


def test_stronger_settings_degrade_more(face):
    def error(**kw):
        base = dict(gaussian_blur_prob=0, motion_blur_prob=0, downsample_prob=0, gaussian_noise_prob=0, poisson_noise_prob=0, jpeg_prob=0)
        base.update(kw)
        return float(np.abs(degrade(face, 0, DegradeConfig(**base))[0] - face).mean())

    assert error(downsample_prob=1, downsample_scale=(12, 12)) > error(downsample_prob=1, downsample_scale=(2, 2)) > 0
    assert error(jpeg_prob=1, jpeg_quality=(30, 30)) > error(jpeg_prob=1, jpeg_quality=(95, 95)) > 0
    assert error(gaussian_blur_prob=1, gaussian_blur_sigma=(6, 6)) > error(gaussian_blur_prob=1, gaussian_blur_sigma=(1, 1)) > 0


def test_x4_mode_is_fixed_and_only_the_noise_depends_on_the_seed(face):
    x4 = DegradeConfig.preset("x4")
    a, rec_a = degrade(face, 1, x4)
    b, rec_b = degrade(face, 2, x4)
    again, _ = degrade(face, 1, x4)
    assert rec_a == rec_b == DegradeRecord(1.5, None, None, 4.0, "bicubic", 5.0, None, 75)
    assert np.array_equal(a, again)
    assert 0 < float(np.abs(a - b).mean()) < 0.03  # same blur/scale/JPEG, different noise


def test_jpeg_round_trip_and_motion_kernel():
    rng = np.random.default_rng(0)
    smooth = np.clip(np.cumsum(rng.normal(0, 0.02, (64, 64, 3)), axis=1) + 0.5, 0, 1).astype(np.float32)
    assert jpeg(smooth, 95).shape == smooth.shape
    assert np.abs(jpeg(smooth, 30) - smooth).mean() > np.abs(jpeg(smooth, 95) - smooth).mean()
    kernel = motion_kernel(7, 0.0)
    assert kernel.shape == (7, 7) and np.isclose(kernel.sum(), 1.0)
    assert np.count_nonzero(kernel[3]) == 7 and np.count_nonzero(kernel) == 7  # a horizontal line


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(jpeg_prob=1.5), "jpeg_prob must be a probability"),
        (dict(jpeg_quality=(10, 200)), "jpeg_quality"),
        (dict(downsample_scale=(4, 2)), "downsample_scale"),
        (dict(blur_kernel_size=40), "odd"),
        (dict(downsample_modes=("nearest",)), "downsample_modes"),
    ],
)
def test_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DegradeConfig(**kwargs)


def test_config_accepts_yaml_lists_and_stays_hashable():
    config = DegradeConfig(jpeg_quality=[40, 60], downsample_modes=["area"])
    assert config.jpeg_quality == (40, 60) and hash(config)
    assert DegradeConfig(**config.to_dict()) == config


def test_degrade_imports_no_diffusers_or_peft():
    code = "import sys, lafr_core.degrade; bad = [m for m in ('diffusers', 'peft', 'transformers') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
