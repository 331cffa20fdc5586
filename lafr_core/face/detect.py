"""detect_faces: pick a detector, run it on the batch, filter and select faces -> FaceSet.

Detectors: "mtcnn" (bundled weights, always available offline), "retinaface_resnet50" and
"retinaface_mobile0.25" (facexlib's network with weights from local folders), and "auto":
RetinaFace ResNet-50 when facexlib and its weights are both present here, else MTCNN. The
detector used is recorded in the FaceSet, so a preview or log says which one ran.

Faces are sorted per image by box area, largest first: select="largest" and index 0 are the same
face, and a small false positive gets a high index.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from .align import check_images, rgb_view, slot_in_image
from .errors import DetectorWeightsError, FaceError
from .faceset import FaceSet

DETECTORS = ("auto", "mtcnn", "retinaface_resnet50", "retinaface_mobile0.25")
# Confidence defaults: RetinaFace 0.97 as facexlib's FaceRestoreHelper uses for restoration;
# MTCNN 0.9: real faces in our test photos score > 0.99 at O-Net, while the textured background
# patches the reference's 0.7 lets through score 0.7..0.9.
DEFAULT_THRESHOLDS = {"mtcnn": 0.9, "retinaface": 0.97}
# Faces smaller than this (longer box side, pixels) are skipped and counted: MTCNN's smallest
# searched face (20 px, reference default); a 20 px face is a 25x upscale to LAFR's 512 crop.
DEFAULT_MIN_SIZE = 20


def detector_status(name: str, weights: str | Path | None = None) -> str | None:
    """None when `name` can run here, else why not (used by "auto", doctor and the CLI)."""
    if name == "mtcnn":
        from .mtcnn import WEIGHTS

        return None if Path(weights or WEIGHTS).is_file() else f"MTCNN weights missing: {weights or WEIGHTS}"
    from .retinaface import facexlib_problem, find_retinaface_weights

    problem = facexlib_problem()
    if problem is not None:
        return problem
    try:
        find_retinaface_weights(name.removeprefix("retinaface_"), weights)
    except DetectorWeightsError as exc:
        return str(exc)
    return None


def resolve_detector(detector: str, weights: str | Path | None = None) -> str:
    """The concrete detector name for `detector` ("auto" -> RetinaFace if usable, else MTCNN)."""
    if detector not in DETECTORS:
        raise FaceError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if detector != "auto":
        return detector
    return "retinaface_resnet50" if detector_status("retinaface_resnet50", weights) is None else "mtcnn"


def _run_detector(name: str, rgb: torch.Tensor, threshold: float, min_size: float, weights: str | Path | None):
    """(image_index, boxes, scores, landmarks) from detector `name` on rgb [B, 3, H, W] 0..1."""
    device = str(rgb.device)
    if name == "mtcnn":
        from .mtcnn import MIN_FACE, PNET_CELL, STAGE_THRESHOLDS, WEIGHTS, detect_mtcnn, load_mtcnn

        model = load_mtcnn(str(weights or WEIGHTS), device)
        # search down to MTCNN's default (or a smaller min_size, not below P-Net's 12 px window),
        # so that faces below a larger min_size are still seen and counted as skipped
        thresholds = (*STAGE_THRESHOLDS[:2], threshold)
        min_face = max(PNET_CELL, min(MIN_FACE, min_size))
        return detect_mtcnn(rgb * 255, model, min_face=min_face, thresholds=thresholds)
    from .retinaface import detect_retinaface, load_retinaface

    model = load_retinaface(name.removeprefix("retinaface_"), weights, device)
    return detect_retinaface(rgb, model, threshold)


def _sort_by_image_then_area(image_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Order: image ascending, then box area descending (ties keep detector order)."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    by_area = torch.argsort(area, descending=True, stable=True)
    by_image = torch.argsort(image_index[by_area], stable=True)
    return by_area[by_image]


def parse_select(text: str, name: str = "select") -> str | tuple[int, ...]:
    """Text a user typed (a node widget, --select) -> select_faces' argument: "all" (also
    empty), "largest", or comma-separated per-image indices like "0,2". Case and spaces do not
    matter; `name` is how the error calls the option."""
    words = text.strip().lower()
    if words in ("", "all", "largest"):
        return words or "all"
    try:
        return tuple(int(part) for part in words.replace(" ", "").split(",") if part)
    except ValueError:
        raise FaceError(f"{name} takes 'all', 'largest' or face indices like 0,2 (0 = largest); got {text!r}") from None


def select_faces(faces: FaceSet, select: str | Sequence[int] = "all") -> FaceSet:
    """Keep "all", the "largest" per image, or the given per-image indices (0 = largest).

    Indices an image does not have are ignored, so one list works on a batch of photos with
    different face counts."""
    if isinstance(select, str):
        if select == "all":
            return faces
        if select != "largest":
            raise FaceError(f"select must be 'all', 'largest' or a list of face indices, got {select!r}")
        wanted = {0}
    else:
        wanted = {int(i) for i in select}
        if any(i < 0 for i in wanted):
            raise FaceError(f"face indices start at 0 (largest face of each image), got {sorted(wanted)}")
    if len(faces) == 0:
        return faces
    slot = slot_in_image(faces.image_index)
    keep = torch.isin(slot, torch.tensor(sorted(wanted), device=slot.device, dtype=slot.dtype))
    return faces.subset(keep)


@torch.no_grad()
def detect_faces(
    images: torch.Tensor,
    detector: str = "auto",
    threshold: float | None = None,
    min_size: float = DEFAULT_MIN_SIZE,
    select: str | Sequence[int] = "all",
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
) -> FaceSet:
    """Find faces in images [B, H, W, C] float 0..1 (C in 1, 3, 4).

    threshold: minimum confidence (None: the detector's default, DEFAULT_THRESHOLDS).
    min_size: faces whose longer box side is below this many pixels are dropped and counted in
    FaceSet.skipped_small. select: "all", "largest" or per-image indices (0 = largest).
    weights: a detector weights file or folder (default: the bundled / searched ones).
    device: where the detector runs (default: the images' device).
    Returns a FaceSet on the images' device; no face is an empty FaceSet, never an error."""
    check_images(images)
    name = resolve_detector(detector, weights)
    family = "mtcnn" if name == "mtcnn" else "retinaface"
    threshold = DEFAULT_THRESHOLDS[family] if threshold is None else float(threshold)
    if not 0.0 <= threshold < 1.0:
        raise FaceError(f"threshold must be in [0, 1), got {threshold}")
    if min_size < 0:
        raise FaceError(f"min_size must be >= 0 pixels, got {min_size}")
    sizes = tuple((int(images.shape[1]), int(images.shape[2])) for _ in range(images.shape[0]))
    run_device = torch.device(device) if device is not None else images.device
    rgb = rgb_view(images).permute(0, 3, 1, 2).to(run_device, torch.float32)
    image_index, boxes, scores, landmarks = _run_detector(name, rgb, threshold, min_size, weights)

    faces = FaceSet(
        image_index=image_index.long(),
        boxes=boxes.float(),
        scores=scores.float(),
        landmarks=landmarks.float(),
        image_sizes=sizes,
        skipped_small=(0,) * len(sizes),
        detector=name,
    )
    big = faces.face_sizes() >= min_size
    skipped = torch.bincount(faces.image_index[~big].cpu(), minlength=len(sizes)).tolist()
    faces = faces.subset(big)
    faces = faces.subset(_sort_by_image_then_area(faces.image_index, faces.boxes))
    faces = replace(faces, skipped_small=tuple(skipped))
    return select_faces(faces, select).to(images.device)
