"""lafr_core.eval metrics against direct computations: PSNR, SSIM (hand formula and skimage),
the Y channel, the Fréchet distance, landmark distance, LPIPS's input convention, FID's accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lafr_core.eval.learned import FidAccumulator, Lpips, load_fid_features, load_lpips
from lafr_core.eval.metrics import frechet_distance, landmark_distance, psnr, quantise, ssim


def pair(seed: int = 0, shape=(2, 24, 20, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g)
    b = (a + 0.15 * torch.randn(shape, generator=g)).clamp(0, 1)
    return quantise(a), quantise(b)


def hand_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) * 255 - b.astype(np.float64) * 255) ** 2)
    return 10 * math.log10(255**2 / mse)


def hand_ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 at every position where the 11x11 Gaussian window fits (no filtering code)."""
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_psnr_equals_the_formula_and_is_inf_for_identical_images():
    a, b = pair()
    got = psnr(a, b)
    for i in range(2):
        assert float(got[i]) == pytest.approx(hand_psnr(a[i].numpy(), b[i].numpy()), abs=1e-9)
    assert math.isinf(float(psnr(a, a)[0]))


def test_ssim_equals_a_windowed_hand_computation():
    a, b = pair(1)
    got = ssim(a, b)
    for i in range(2):
        x, y = a[i].double().numpy() * 255, b[i].double().numpy() * 255
        expected = np.mean([hand_ssim_channel(x[..., c], y[..., c]) for c in range(3)])
        assert float(got[i]) == pytest.approx(expected, abs=1e-10)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))


def test_ssim_and_psnr_match_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    a, b = pair(2, (1, 40, 36, 3))
    x, y = a[0].double().numpy() * 255, b[0].double().numpy() * 255
    expected = metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2)
    assert float(ssim(a, b)[0]) == pytest.approx(expected, abs=1e-9)
    assert float(psnr(a, b)[0]) == pytest.approx(metrics.peak_signal_noise_ratio(x, y, data_range=255), abs=1e-9)


def test_y_channel_scores_bt601_luma():
    a, b = pair(3)
    y = lambda t: (16 + t.double() @ torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64)).numpy()  # noqa: E731
    mse = np.mean((y(a[0]) - y(b[0])) ** 2)
    assert float(psnr(a, b, y_channel=True)[0]) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert float(ssim(a, b, y_channel=True)[0]) == pytest.approx(hand_ssim_channel(y(a[0]), y(b[0])), abs=1e-10)
    assert float(psnr(a, b, y_channel=True)[0]) != pytest.approx(float(psnr(a, b)[0]), abs=1e-3)


def test_metrics_refuse_mismatched_or_tiny_images():
    a, b = pair()
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, b[:1])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[:, :8, :8], b[:, :8, :8])


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = np.diag(rng.uniform(0.5, 2, 4)), np.diag(rng.uniform(0.5, 2, 4))
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2))) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-10)
    m = rng.normal(size=(6, 6))
    full = m @ m.T
    assert frechet_distance(mu1[:1].repeat(6), full, mu1[:1].repeat(6), full) == pytest.approx(0.0, abs=1e-8)
    linalg = pytest.importorskip("scipy.linalg")
    other = full + np.eye(6)
    root = linalg.sqrtm(full @ other).real
    assert frechet_distance(np.zeros(6), full, np.ones(6), other) == pytest.approx(6 + np.trace(full + other - 2 * root), rel=1e-8)


def test_landmark_distance_is_mean_point_distance_and_nan_without_a_face():
    a = torch.zeros(2, 5, 2, dtype=torch.float64)
    b = a.clone()
    b[0, :, 0] = 3.0
    b[0, 0] = torch.tensor([3.0, 4.0])  # one point 5 px away, four 3 px away
    b[1] = math.nan
    d = landmark_distance(b, a)
    assert float(d[0]) == pytest.approx((5 + 4 * 3) / 5)
    assert math.isnan(float(d[1]))


def test_lpips_takes_0_1_faces_and_feeds_lpips_minus1_1():
    lpips = pytest.importorskip("lpips")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()  # random trunk: no download
    a, b = pair(4, (2, 64, 64, 3))
    with torch.no_grad():
        expected = model(a.permute(0, 3, 1, 2) * 2 - 1, b.permute(0, 3, 1, 2) * 2 - 1).flatten()
    got = Lpips(model, "alex")(a, b)
    assert torch.allclose(got, expected.double(), atol=1e-6)
    assert float(Lpips(model)(a, a).abs().max()) < 1e-6


def test_learned_metrics_skip_with_a_note_when_weights_are_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model, note = load_lpips("vgg")
    if model is None:
        assert "LPIPS skipped" in note
        assert "vgg16-397923af.pth" in note or "pip install lpips" in note
    features, note = load_fid_features()
    assert features is None and note.startswith("FID skipped")


def test_fid_accumulator_is_the_frechet_distance_of_the_features():
    def features(images: torch.Tensor) -> np.ndarray:  # a stand-in extractor: per-channel means and stds
        x = images.double().flatten(1, 2)
        return torch.cat([x.mean(1), x.std(1)], 1).numpy()

    acc = FidAccumulator(features)
    a1, b1 = pair(5, (3, 16, 16, 3))
    a2, b2 = pair(6, (3, 16, 16, 3))
    acc.add(a1, b1)
    acc.add(a2, b2)
    fx, fy = features(torch.cat([a1, a2])), features(torch.cat([b1, b2]))
    expected = frechet_distance(fx.mean(0), np.cov(fx, rowvar=False), fy.mean(0), np.cov(fy, rowvar=False))
    assert acc.fid() == pytest.approx(expected, rel=1e-12)
    assert acc.fid((fx.mean(0), np.cov(fx, rowvar=False))) == pytest.approx(0.0, abs=1e-8)


def test_fid_features_through_pytorch_fid_inception_with_stand_in_weights(tmp_path, monkeypatch):
    """pytorch-fid's FID Inception at random weights (its real weights are a download): the
    cached-file check and 2048-d pool3 features per face (the Fréchet part is tested above)."""
    inception = pytest.importorskip("pytorch_fid.inception")
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert load_fid_features()[0] is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"stand-in")
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(torchvision.models.Inception3, "load_state_dict", lambda self, *a, **k: None)
    torch.manual_seed(0)
    features, note = load_fid_features()
    assert note is None
    a, _ = pair(7, (2, 64, 64, 3))
    fa = features(a)
    assert fa.shape == (2, 2048) and np.isfinite(fa).all() and not np.allclose(fa[0], fa[1])
