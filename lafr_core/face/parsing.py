"""Face-parsing paste mask: facexlib's ParseNet, with weights read only from local folders.

The landmark ellipse (mask.py) needs nothing; a parsing mask follows the real outline of skin,
brows, eyes, nose, lips, ears and neck, which helps with turned heads and hands over the face.
It is used when asked for (paste_faces(mask="parsenet")) and the file exists: facexlib's
ParseNet network class (optional dependency) with `parsing_parsenet.pth` found where the
RetinaFace weights are looked for (explicit path, LAFR_FACE_MODELS_DIR, ComfyUI
models/facedetection, A1111 models/GFPGAN, facexlib's weights folder), loaded with
torch.load(weights_only=True). Never downloaded. All crops are parsed in one forward.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model_paths import require_face_model
from .errors import DetectorUnavailableError, DetectorWeightsError
from .retinaface import read_state_dict

PARSENET_FILE = "parsing_parsenet.pth"
RELEASE_URL = "https://github.com/xinntao/facexlib/releases/tag/v0.2.2"
PARSE_SIZE = 512  # ParseNet's training resolution
# CelebAMask-HQ labels ParseNet predicts that belong to the pasted face: skin, brows, eyes,
# glasses, ears, earring, nose, mouth, lips, neck (the classes facexlib's paste keeps);
# background, hat, hair, necklace and cloth stay the photo's.
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)
# facexlib blurs the parse map twice with a 101-px, sigma-11 Gaussian at 512: one Gaussian of
# sigma 11 * sqrt(2) ~ 15.6 px does the same; the outer 10 px of the crop are zeroed as there.
MASK_SIGMA_512 = 15.6
MASK_BORDER_512 = 10


def find_parsenet_weights(explicit: str | Path | None = None) -> Path:
    return require_face_model(
        PARSENET_FILE, explicit, "ParseNet",
        f"Download it from {RELEASE_URL} into ComfyUI/models/facedetection, or paste with mask='landmarks'.",
        error=DetectorWeightsError,
    )


@lru_cache(maxsize=2)
def _load_cached(path: str, device: str, modified: float) -> torch.nn.Module:
    try:
        from facexlib.parsing.parsenet import ParseNet
    except Exception as exc:  # noqa: BLE001 - a missing or broken facexlib is reported the same way
        raise DetectorUnavailableError(f"facexlib is not importable ({exc}); `pip install facexlib` enables the ParseNet mask") from exc
    state = read_state_dict(Path(path), "ParseNet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = ParseNet(in_size=PARSE_SIZE, out_size=PARSE_SIZE, parsing_ch=19)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise DetectorWeightsError(
            f"{path} does not fit ParseNet: {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected "
            f"{unexpected[:3]}, {len(wrong)} of the wrong shape {wrong[:3]} (is it {PARSENET_FILE}?)"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_parsenet(weights: str | Path | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    path = find_parsenet_weights(weights)
    return _load_cached(str(path), str(torch.device(device)), path.stat().st_mtime)


def face_mask_from_logits(logits: torch.Tensor, size: int) -> torch.Tensor:
    """ParseNet logits [N, 19, 512, 512] -> soft face masks [N, size, size] in 0..1."""
    labels = logits.argmax(dim=1)
    hard = torch.isin(labels, torch.tensor(FACE_CLASSES, device=labels.device)).float()[:, None]
    radius = int(3 * MASK_SIGMA_512)
    taps = torch.arange(-radius, radius + 1, device=hard.device, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * MASK_SIGMA_512**2))
    kernel = kernel / kernel.sum()
    soft = F.conv2d(F.pad(hard, (radius, radius, 0, 0)), kernel.view(1, 1, 1, -1))
    soft = F.conv2d(F.pad(soft, (0, 0, radius, radius)), kernel.view(1, 1, -1, 1))
    keep = torch.zeros_like(soft)
    keep[..., MASK_BORDER_512:-MASK_BORDER_512, MASK_BORDER_512:-MASK_BORDER_512] = 1
    soft = soft * keep
    if size != soft.shape[-1]:
        soft = F.interpolate(soft, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return soft[:, 0].clamp(0, 1)


@torch.no_grad()
def parse_masks(crops: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Aligned crops [N, S, S, 3] 0..1 -> face masks [N, S, S], all crops in one forward."""
    device = next(model.parameters()).device
    x = crops.permute(0, 3, 1, 2).to(device, torch.float32)
    if x.shape[-1] != PARSE_SIZE:
        x = F.interpolate(x, size=(PARSE_SIZE, PARSE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    logits = model(x * 2 - 1)[0]
    return face_mask_from_logits(logits.float(), crops.shape[1]).to(crops.device)
