"""lafr_core.video.smoothing: zero lag for steady motion (also at the ends), the expected noise
cut on a still face, determinism."""

import numpy as np
import pytest

from lafr_core.video import DEFAULT_SIGMA, fit_at, noise_reduction, smooth_series, window_radius


@pytest.mark.parametrize("sigma", [1.0, 2.5, DEFAULT_SIGMA, 8.0])
@pytest.mark.parametrize("frames", [1, 2, 7, 60])
def test_constant_velocity_is_reproduced_exactly(sigma, frames):
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    base = np.random.default_rng(0).uniform(50, 300, size=(1, 5, 2))
    velocity = np.random.default_rng(1).uniform(-4, 4, size=(1, 5, 2))  # pan + zoom: each point linear
    track = base + velocity * t
    np.testing.assert_allclose(smooth_series(track, sigma), track, atol=1e-9)


def test_noise_on_a_still_face_drops_by_the_expected_factor():
    rng = np.random.default_rng(7)
    still = np.full((4000, 5, 2), 200.0)
    noisy = still + rng.normal(0, 1.0, still.shape)
    smooth = smooth_series(noisy)
    r = window_radius(DEFAULT_SIGMA)
    interior = (smooth - still)[r:-r].std()
    expected = noise_reduction(DEFAULT_SIGMA)
    assert expected >= 4.0  # the goal for a still face
    assert noisy.std() / interior == pytest.approx(expected, rel=0.05)
    # the track's ends (one-sided windows) are noisier but still smoothed
    assert (smooth - still)[:r].std() < noisy.std()


def test_smoothing_is_deterministic_and_sigma_zero_is_off():
    noisy = np.random.default_rng(2).normal(size=(50, 5, 2))
    assert np.array_equal(smooth_series(noisy), smooth_series(noisy.copy()))
    assert np.array_equal(smooth_series(noisy, 0.0), noisy)
    assert window_radius(0.0) == 0 and window_radius(5.0) == 15
    with pytest.raises(ValueError, match=">= 0"):
        window_radius(-1.0)


def test_fit_at_one_sample_and_one_sided_windows():
    values = np.array([[3.0, 4.0]])
    assert np.array_equal(fit_at(values, np.array([0.0]), 5.0), values[0])
    # a one-sided window on a line extrapolates the line, not its mean
    k = np.arange(0, 10, dtype=np.float64)
    assert fit_at((2 + 0.5 * k)[:, None], k, 5.0)[0] == pytest.approx(2.0)
