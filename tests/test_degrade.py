"""Seeded degradation (lafr_core/degrade.py): deterministic under a seed, within its ranges."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA_DIR, REPO
from lafr_core.degrade import PRESETS, DegradeConfig, DegradeRecord, blur_kernel, degrade, degrade_preset, jpeg, kernel_covariance, motion_kernel


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
    assert rec_a == rec_b == DegradeRecord(1.5, None, None, 4.0, "bicubic", 5.0, None, 75, "iso", 1.5, 0.0, 1.0)
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


# --------------------------------------------------------------------------- presets and kernels


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_deterministic_by_seed(face, name):
    small = face[::2, ::2].copy()
    a, rec_a = degrade_preset(small, name, (7, 3))
    b, rec_b = degrade_preset(small, name, (7, 3))
    c, _ = degrade_preset(small, name, (7, 4))
    assert np.array_equal(a, b) and rec_a == rec_b
    assert a.shape == small.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert not np.array_equal(a, c)


def test_presets_match_their_sources():
    # CodeFormer options/CodeFormer_stage3.yml and GFPGAN options/train_gfpgan_v1.yml
    cf, gf = DegradeConfig.preset("codeformer"), DegradeConfig.preset("gfpgan")
    for config in (cf, gf):
        assert config.kernel_types == ("iso", "aniso") and config.kernel_probs == (0.5, 0.5)
        assert config.gaussian_blur_sigma == (0.1, 10.0) and config.blur_kernel_size == 41 and config.jpeg_quality == (60, 100)
        assert config.gaussian_blur_prob == config.downsample_prob == config.gaussian_noise_prob == config.jpeg_prob == 1.0
        assert config.motion_blur_prob == config.poisson_noise_prob == 0.0
        assert config.downsample_modes == ("bilinear",) and config.upsample_mode == "bilinear"
    assert cf.downsample_scale == (1.0, 12.0) and cf.gaussian_noise_sigma == (0.0, 15.0)
    assert gf.downsample_scale == (0.8, 8.0) and gf.gaussian_noise_sigma == (0.0, 20.0)
    assert DegradeConfig.preset("celeba-test") == gf
    assert DegradeConfig.preset("lafr") == DegradeConfig() == DegradeConfig.preset("random")
    with pytest.raises(ValueError, match="unknown degradation preset 'nope'.*codeformer"):
        DegradeConfig.preset("nope")


def test_codeformer_preset_draws_both_kernels_in_range(face):
    small = face[::4, ::4].copy()
    records = [degrade_preset(small, "codeformer", seed)[1] for seed in range(200)]
    kinds = [r.kernel_type for r in records]
    assert 0.35 < kinds.count("aniso") / len(kinds) < 0.65 and set(kinds) == {"iso", "aniso"}
    assert all(1.0 <= r.scale <= 12.0 and 0.0 <= r.noise_sigma <= 15.0 and 60 <= r.jpeg_quality <= 100 for r in records)
    aniso = [r for r in records if r.kernel_type == "aniso"]
    assert all(0.1 <= r.sigma_y <= 10 and -np.pi <= r.kernel_angle <= np.pi for r in aniso)
    assert any(abs(r.gaussian_sigma - r.sigma_y) > 2 for r in aniso)


def test_iso_only_configs_degrade_exactly_as_before_the_new_kernels(face):
    """kernel parameters are drawn after the old ones: an iso-only config's pairs (and the
    trainer's cached latents) are unchanged; adding kernel types changes only the blur."""
    iso = DegradeConfig(gaussian_blur_prob=1.0, motion_blur_prob=0.0)
    mixed = DegradeConfig(gaussian_blur_prob=1.0, motion_blur_prob=0.0, kernel_types=("iso", "aniso"), kernel_probs=(0.5, 0.5))
    for seed in range(6):
        _, a = degrade(face[::4, ::4].copy(), seed, iso)
        _, b = degrade(face[::4, ::4].copy(), seed, mixed)
        assert (a.gaussian_sigma, a.scale, a.noise_sigma, a.jpeg_quality) == (b.gaussian_sigma, b.scale, b.noise_sigma, b.jpeg_quality)


@pytest.mark.parametrize("sx, sy, theta", [(3.0, 1.5, 0.0), (3.0, 1.5, 0.6), (2.0, 4.0, -2.2), (2.5, 2.5, 1.0)])
def test_anisotropic_kernel_has_the_requested_covariance(sx, sy, theta):
    kernel = blur_kernel(41, sx, sy, theta).astype(np.float64)
    assert kernel.shape == (41, 41)
    assert np.isclose(kernel.sum(), 1.0, atol=1e-6) and kernel.min() >= 0
    axis = np.arange(-20, 21)
    xx, yy = np.meshgrid(axis, axis)
    mean = np.array([(kernel * xx).sum(), (kernel * yy).sum()])
    assert np.abs(mean).max() < 1e-6  # centred
    cov = np.array([[(kernel * xx * xx).sum(), (kernel * xx * yy).sum()], [(kernel * xx * yy).sum(), (kernel * yy * yy).sum()]])
    # a sampled Gaussian's variance is the continuous one within ~1e-3 px^2 at these sigmas
    assert np.allclose(cov, kernel_covariance(sx, sy, theta), atol=2e-3), cov
    # principal axis along theta with the larger sigma
    values, vectors = np.linalg.eigh(cov)
    major = vectors[:, 1] if sx >= sy else vectors[:, 0]
    if abs(sx - sy) > 0.1:
        assert abs(abs(major @ np.array([np.cos(theta), np.sin(theta)])) - 1) < 1e-4
        assert np.allclose(np.sqrt(values), sorted([sx, sy]), atol=2e-3)


def test_kernel_shapes_normalisation_and_generalised_tails():
    for size in (7, 21, 41):
        for beta in (0.5, 1.0, 3.0):
            k = blur_kernel(size, 2.0, 1.0, 0.3, beta)
            assert k.shape == (size, size) and k.dtype == np.float32 and np.isclose(k.sum(), 1.0, atol=1e-6)
            assert k[size // 2, size // 2] == k.max()
            assert np.allclose(k, k[::-1, ::-1])  # point-symmetric
    heavy, gauss, flat = (blur_kernel(41, 2.0, 2.0, 0.0, b) for b in (0.5, 1.0, 3.0))
    ring = np.hypot(*np.meshgrid(np.arange(-20, 21), np.arange(-20, 21))) > 8
    assert heavy[ring].sum() > gauss[ring].sum() > flat[ring].sum()  # beta < 1: heavier tails
    with pytest.raises(ValueError, match="odd"):
        blur_kernel(8, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="kernel_probs"):
        DegradeConfig(kernel_types=("iso", "aniso"), kernel_probs=(0.5,))
    with pytest.raises(ValueError, match="kernel_types"):
        DegradeConfig(kernel_types=("box",), kernel_probs=(1.0,))


def test_generalised_kernels_are_drawn_and_applied(face):
    config = DegradeConfig(gaussian_blur_prob=1.0, motion_blur_prob=0, downsample_prob=0, gaussian_noise_prob=0, poisson_noise_prob=0, jpeg_prob=0,
                           kernel_types=("generalized_iso", "generalized_aniso"), kernel_probs=(0.5, 0.5), gaussian_blur_sigma=(2.0, 2.0))  # fmt: skip
    small = face[::2, ::2].copy()
    records = []
    for seed in range(40):
        out, record = degrade(small, seed, config)
        records.append(record)
        expected = cv2_filter(small, blur_kernel(41, 2.0, record.sigma_y, record.kernel_angle, record.beta))
        assert np.allclose(out, expected, atol=1e-6)
    betas = [r.beta for r in records]
    assert min(betas) < 1 < max(betas) and all(0.5 <= b <= 4.0 for b in betas)
    assert all(r.sigma_y == 2.0 and r.kernel_angle == 0.0 for r in records if r.kernel_type == "generalized_iso")


def cv2_filter(image, kernel):
    import cv2

    return np.clip(cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101), 0, 1)
