"""NIQE: equal to BasicSR's calculate_niqe on real portraits and degraded copies (numbers from
bench/niqe_reference.py, which runs BasicSR itself), and what a user of the score would rely on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lafr_core.eval.niqe import matlab_resize, niqe

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from niqe_reference import reference_images  # noqa: E402

# PYTHONPATH=/tmp/bsr python bench/niqe_reference.py  (basicsr 1.4.2, calculate_niqe(img, crop_border=0))
BASICSR_NIQE = {
    "astronaut.png": 3.0649476661847754,
    "astronaut.png:degraded": 10.424904655897418,
    "grace_hopper.jpg": 3.5785039423366527,
    "grace_hopper.jpg:degraded": 10.149107334845748,
}


def as_batch(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb[None].copy()).float() / 255.0


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return reference_images()


@pytest.mark.parametrize("name", sorted(BASICSR_NIQE))
def test_niqe_equals_basicsr(images, name):
    assert float(niqe(as_batch(images[name]))[0]) == pytest.approx(BASICSR_NIQE[name], abs=1e-6)


def test_degradation_raises_niqe_and_batch_matches_single(images):
    clean = torch.cat([as_batch(images["astronaut.png"]), as_batch(images["grace_hopper.jpg"][:512])])
    bad = torch.cat([as_batch(images["astronaut.png:degraded"]), as_batch(images["grace_hopper.jpg:degraded"][:512])])
    scores_clean, scores_bad = niqe(clean), niqe(bad)
    assert scores_clean.shape == (2,) and scores_clean.dtype == torch.float64
    assert (scores_bad > scores_clean + 5).all()
    assert float(scores_clean[0]) == pytest.approx(BASICSR_NIQE["astronaut.png"], abs=1e-6)


def test_matlab_resize_halves_constant_and_ramp():
    flat = np.full((8, 6), 0.25, np.float32)
    assert np.allclose(matlab_resize(flat, 0.5), 0.25, atol=1e-7) and matlab_resize(flat, 0.5).shape == (4, 3)
    ramp = np.tile(np.arange(32, dtype=np.float32), (4, 1))  # away from the borders a ramp stays linear
    half = matlab_resize(ramp, 0.5)  # output k is centred on input 2k + 0.5 (MATLAB's pixel-area alignment)
    assert half.shape == (2, 16) and np.allclose(half[:, 2:14], 2 * np.arange(2, 14) + 0.5, atol=1e-4)


def test_niqe_too_small_and_bad_shape_errors():
    with pytest.raises(ValueError, match="two 96x96 blocks"):
        niqe(torch.rand(1, 128, 128, 3))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        niqe(torch.rand(128, 128, 3))


@pytest.mark.skipif(not any((Path(p) / "basicsr").is_dir() for p in sys.path), reason="basicsr not importable (the table above holds its numbers)")
def test_niqe_equals_live_basicsr(images):
    from niqe_reference import basicsr_niqe

    rgb = images["grace_hopper.jpg:degraded"]
    assert float(niqe(as_batch(rgb))[0]) == pytest.approx(basicsr_niqe(rgb), abs=1e-6)
