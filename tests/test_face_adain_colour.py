"""The "adain" colour correction is OSEDiff's default colour fix (adain_color_fix in its
my_utils/wavelet_color_fix.py, test_osediff.py --align_method adain): the reference below is
written from its facts, not its code: per image and RGB channel, mean and variance over ALL
pixels, the variance unbiased (torch's default) plus 1e-5, std its square root, the restored
channel normalised and given the input's statistics, clamped to 0..1; OSEDiff runs it on 8-bit
PIL images (ToTensor in, `mul(255).byte()` out, which truncates)."""

import numpy as np
import pytest
import torch

from face_fixtures import load_portrait
from lafr_core.face import COLOUR_CORRECTIONS, align_faces, detect_faces, paste_faces
from lafr_core.face.colour import adain_match, correct_colour
from lafr_core.lafr_file import COLOUR_FIXES


def osediff_adain(restored: np.ndarray, source: np.ndarray) -> np.ndarray:
    """[H, W, 3] float images -> the colour-fixed restored image, in float64 numpy."""
    out = np.empty_like(restored, dtype=np.float64)
    for c in range(3):
        target, style = restored[..., c].astype(np.float64).ravel(), source[..., c].astype(np.float64).ravel()
        t_std = np.sqrt(target.var(ddof=1) + 1e-5)
        s_std = np.sqrt(style.var(ddof=1) + 1e-5)
        out[..., c] = ((restored[..., c] - target.mean()) / t_std * s_std + style.mean())
    return np.clip(out, 0.0, 1.0)


@pytest.fixture(scope="module")
def astronaut():
    image = load_portrait("astronaut.png")
    crops, aligned = align_faces(image, detect_faces(image, detector="mtcnn"))
    return image, crops, aligned


def test_adain_equals_osediffs_formula_per_crop():
    gen = torch.Generator().manual_seed(0)
    source = torch.rand(3, 64, 48, 3, generator=gen)
    restored = (torch.rand(3, 64, 48, 3, generator=gen) * torch.tensor([0.5, 0.9, 0.3]) + 0.2).clamp(0, 1)
    restored[2] = 0.25 + 0.01 * restored[2]  # a nearly flat crop: eps decides its gain
    out = adain_match(restored, source)
    assert out.shape == restored.shape and out.dtype == restored.dtype
    for i in range(3):  # statistics are per crop, never over the batch
        expected = osediff_adain(restored[i].numpy(), source[i].numpy())
        assert np.abs(out[i].numpy() - expected).max() < 1e-5  # fp32 sums, as OSEDiff computes them
    # the restored crop really took the input's statistics (away from the clamp)
    assert torch.allclose(out[0].mean(dim=(0, 1)), source[0].mean(dim=(0, 1)), atol=2e-3)
    assert not torch.allclose(restored[0].mean(dim=(0, 1)), source[0].mean(dim=(0, 1)), atol=5e-2)


def test_adain_on_8_bit_images_gives_osediffs_bytes():
    """OSEDiff's own I/O: 8-bit in, ToTensor (/255), the fix in fp32, `mul(255).byte()` out."""
    rng = np.random.default_rng(1)
    source = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    restored = np.clip(rng.normal(140, 30, (96, 80, 3)), 0, 255).astype(np.uint8)
    expected = np.floor(osediff_adain(restored / 255.0, source / 255.0) * 255).astype(np.uint8)
    ours = correct_colour(torch.from_numpy(restored / 255.0).float()[None], torch.from_numpy(source / 255.0).float()[None], "adain")
    ours = (ours[0] * 255).to(torch.uint8).numpy()
    diff = np.abs(ours.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # off by one only at a truncation boundary


def test_half_precision_crops_stay_half_and_match():
    gen = torch.Generator().manual_seed(2)
    source, restored = torch.rand(2, 32, 32, 3, generator=gen), torch.rand(2, 32, 32, 3, generator=gen) * 0.5
    half = adain_match(restored.half(), source.half())
    assert half.dtype == torch.float16
    assert (half.float() - adain_match(restored.half().float(), source.half().float())).abs().max() < 1e-3


def test_paste_with_adain_pulls_a_tinted_face_back_using_whole_crop_statistics(astronaut):
    image, crops, aligned = astronaut
    tinted = (crops * torch.tensor([0.7, 0.95, 1.2]) + torch.tensor([0.08, 0.0, -0.05])).clamp(0, 1)
    x1, y1, x2, y2 = aligned.boxes[0].round().long().tolist()
    region = (slice(None), slice(y1, y2), slice(x1, x2))
    plain = paste_faces(image, tinted, aligned, source_crops=crops)
    fixed = paste_faces(image, tinted, aligned, colour_correction="adain", source_crops=crops)
    error_plain = float((plain[region] - image[region]).abs().mean())
    error_fixed = float((fixed[region] - image[region]).abs().mean())
    assert error_fixed < error_plain / 3, (error_plain, error_fixed)
    # the hook is OSEDiff's fix on the whole crops, then an ordinary paste (no mask weighting)
    by_hand = paste_faces(image, torch.from_numpy(osediff_adain(tinted[0].numpy(), crops[0].numpy())).float()[None], aligned)
    assert (fixed - by_hand).abs().max() < 1e-4
    # the source crops are sampled again from the image when not given: same result
    assert (paste_faces(image, tinted, aligned, colour_correction="adain") - fixed).abs().max() < 1e-4


def test_every_converted_files_colour_fix_is_a_paste_option(astronaut):
    """A host passes a converted file's lafr.colour_fix straight to paste_faces."""
    assert set(COLOUR_FIXES) <= set(COLOUR_CORRECTIONS)
    assert COLOUR_CORRECTIONS[:3] == ("none", "lab", "wavelet")  # saved workflows and settings keep their choices
    image, crops, aligned = astronaut
    for method in COLOUR_FIXES:
        out = paste_faces(image, crops.flip(1), aligned, colour_correction=method, source_crops=crops)
        assert out.shape == image.shape and torch.isfinite(out).all()
