"""facexlib's RetinaFace detector, with weights read only from local folders.

facexlib's own entry point (init_detection_model) downloads its weights from GitHub at first use
and then unpickles them with a plain torch.load; offline it fails, and inside a host it blocks.
Here the network class comes from facexlib (optional dependency: without it this detector is
reported unavailable, with the reason), and the weights come from
  an explicit file or folder, LAFR_FACE_MODELS_DIR, ComfyUI's models/facedetection,
  A1111's models/GFPGAN, or facexlib's own weights folder,
loaded with torch.load(weights_only=True). Nothing is ever downloaded. A missing file gives a
message naming the file and every folder searched, plus where to get it.

Inference is ours: the whole batch goes through the network in one forward on the compute device,
anchors and decoding are vectorised in torch (facexlib decodes one image at a time in NumPy).
"""

from __future__ import annotations

import importlib
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from ..model_paths import require_face_model
from .errors import DetectorUnavailableError, DetectorWeightsError
from .nms import batched_nms

NETWORKS = {  # network name -> (facexlib file name, download page for the message)
    "resnet50": "detection_Resnet50_Final.pth",
    "mobile0.25": "detection_mobilenet0.25_Final.pth",
}
RELEASE_URL = "https://github.com/xinntao/facexlib/releases/tag/v0.1.0"
# RetinaFace's anchor layout and box encoding (Deng et al. 2019; the values facexlib's config uses)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)  # the networks were trained on BGR 0..255 minus this mean
NMS_THRESHOLD = 0.4  # facexlib's default


def facexlib_problem() -> str | None:
    """None when facexlib's RetinaFace imports, else the reason (for messages and doctor)."""
    try:
        importlib.import_module("facexlib.detection.retinaface")
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
        return f"facexlib is not importable ({type(exc).__name__}: {exc}); `pip install facexlib` enables RetinaFace"
    return None


def find_retinaface_weights(network: str = "resnet50", explicit: str | Path | None = None) -> Path:
    """The local weights file for `network`, or a DetectorWeightsError naming file and folders."""
    if network not in NETWORKS:
        raise ValueError(f"RetinaFace network must be one of {', '.join(NETWORKS)}, got {network!r}")
    return require_face_model(
        NETWORKS[network], explicit, "RetinaFace",
        f"Download it from {RELEASE_URL} into ComfyUI/models/facedetection (or set "
        f"LAFR_FACE_MODELS_DIR), or use the bundled detector: detector='mtcnn'.",
        error=DetectorWeightsError,
    )


def read_state_dict(path: Path, what: str = "RetinaFace") -> dict[str, torch.Tensor]:
    """A facexlib .pth state dict, unpickled with weights_only=True (tensors only, no code)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and weights_only errors all mean "bad file"
        raise DetectorWeightsError(f"{what} weights {path} are unreadable or corrupt ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DetectorWeightsError(f"{path} is not a {what} state dict (got {type(state).__name__})")
    # checkpoints saved from DataParallel prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in state.items()}


@lru_cache(maxsize=4)
def _load_cached(network: str, path: str, device: str, modified: float) -> torch.nn.Module:
    """Cached per file version (`modified` is its mtime: a replaced file is loaded again)."""
    problem = facexlib_problem()
    if problem is not None:
        raise DetectorUnavailableError(problem)
    from facexlib.detection.retinaface import RetinaFace

    state = read_state_dict(Path(path))
    try:
        with warnings.catch_warnings():  # torchvision's deprecation notes about facexlib's `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            model = RetinaFace(network_name=network, half=False, phase="test", device=torch.device("cpu"))
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision that rejects facexlib's arguments
        raise DetectorUnavailableError(f"facexlib could not build RetinaFace {network} ({type(exc).__name__}: {exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise DetectorWeightsError(
            f"{path} does not fit RetinaFace {network}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of the wrong shape {wrong[:3]}"
            f" (is it the {NETWORKS[network]} file?)"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_retinaface(network: str = "resnet50", weights: str | Path | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """facexlib's RetinaFace `network` with local weights, on `device` (cached)."""
    path = find_retinaface_weights(network, weights)
    return _load_cached(network, str(path), str(torch.device(device)), path.stat().st_mtime)


def anchors(height: int, width: int, device: torch.device) -> torch.Tensor:
    """[A, 4] anchors (cx, cy, w, h as fractions of the image) in the order the heads emit them:
    level, then row, then column, then anchor size."""
    out = []
    for sizes, step in zip(MIN_SIZES, STEPS, strict=True):
        rows, cols = -(-height // step), -(-width // step)
        cy = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) * step / height
        cx = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) * step / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        size = torch.tensor(sizes, device=device, dtype=torch.float32)
        per_cell = torch.stack(
            torch.broadcast_tensors(grid_x[..., None], grid_y[..., None], size / width, size / height), dim=-1
        )  # [rows, cols, len(sizes), 4]
        out.append(per_cell.reshape(-1, 4))
    return torch.cat(out)


def decode(loc: torch.Tensor, landm: torch.Tensor, priors: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw head outputs [B, A, 4] / [B, A, 10] -> boxes [B, A, 4] and landmarks [B, A, 5, 2] in pixels."""
    centre = priors[:, :2] + loc[..., :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * VARIANCE[1])
    scale = loc.new_tensor([width, height])
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1) * scale.repeat(2)
    points = priors[:, None, :2] + landm.unflatten(-1, (5, 2)) * VARIANCE[0] * priors[:, None, 2:]
    return boxes, points * scale


@torch.no_grad()
def detect_retinaface(
    images: torch.Tensor,
    model: torch.nn.Module,
    threshold: float,
    nms_threshold: float = NMS_THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Faces in images [B, 3, H, W] (RGB 0..1) -> (image_index, boxes, scores, landmarks)."""
    b, _, h, w = images.shape
    device = next(model.parameters()).device
    bgr = images.flip(1).to(device, torch.float32) * 255 - torch.tensor(BGR_MEAN, device=device)[:, None, None]
    loc, conf, landm = model(bgr)
    boxes, points = decode(loc.float(), landm.float(), anchors(h, w, device), h, w)
    scores = conf[..., 1].float()
    image_index, anchor = (scores > threshold).nonzero(as_tuple=True)
    boxes, points, scores = boxes[image_index, anchor], points[image_index, anchor], scores[image_index, anchor]
    keep = batched_nms(boxes, scores, image_index, nms_threshold)
    return image_index[keep], boxes[keep], scores[keep], points[keep]
