"""Each restored face's identity distance to its input face, for the hosts' before/after view.

A restorer that sharpens a face into someone else's is worse than a blurry one, and a user cannot
always tell by looking. When an identity model is installed, the nodes measure every shown face
(aligned input crop -> restored crop) and show the number beside it.

Which model (lafr_core.identity): an ArcFace ONNX recognizer in the folders the host passes (for
ComfyUI its models/insightface, where ReActor / InstantID users already keep buffalo_l's
w600k_r50.onnx) or at $LAFR_ARCFACE, else dlib's descriptor when `face_recognition_models` and
`dlib` are installed, else none. No model is the common case and must cost nothing noticeable: a
directory check and an import-spec lookup (well under a millisecond), no import, no error; the
reason goes to `notify` once per process. A model is loaded once per process and kept. ArcFace
runs on the CPU (a few tens of ms a face): a session outside the host's memory manager would
hold GPU memory the host cannot free.

    model = host_identity_model([comfy_models / "insightface"], notify=log.info)
    if model is not None:
        report = measure_faces(model, faces, restored, crops)   # IdentityReport
        log.info("LAFR: %s", report.line())
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .face import FaceSet, align_faces
from .identity import (
    INSTALL_DLIB,
    ArcFaceOnnx,
    DlibIdentity,
    IdentityModel,
    IdentityModelError,
    dlib_problem,
    find_arcface,
    first_arcface,
)

NO_MODEL = (f"identity distances are not shown: no identity model ({INSTALL_DLIB}; "
            "or put insightface's w600k_r50.onnx in models/insightface)")

_MODELS: dict[tuple[str, str], IdentityModel] = {}  # loaded once per process: ("dlib", "") or ("arcface", path)
_BROKEN: set[tuple[str, str]] = set()  # found but failed to load: not retried on every run
_TOLD: set[str] = set()  # messages already given to a notify


@dataclass(frozen=True)
class IdentityReport:
    """Distances input -> output of some faces of a FaceSet, and how to read them.

    model: the model's name ("dlib ResNet descriptor", "ArcFace w600k_r50.onnx"); legend: what the
    number means in a few words; threshold: the same-person limit (None: the model has none);
    face_index[i]: which face of the FaceSet distances[i] belongs to."""

    model: str
    legend: str
    threshold: float | None
    face_index: tuple[int, ...]
    distances: tuple[float, ...]

    def line(self) -> str:
        """One log line: 'identity distance input->output (dlib ResNet descriptor, same person < 0.6): 0.21, 0.34'."""
        values = ", ".join(f"{d:.2f}" for d in self.distances) or "no face"
        return f"identity distance input->output ({self.model}, {self.legend}): {values}"


def legend(model: IdentityModel) -> str:
    if model.threshold is not None:
        return f"same person < {model.threshold:g}"
    return "angle in degrees" if isinstance(model, ArcFaceOnnx) else model.unit


def _tell(message: str, notify: Callable[[str], None] | None) -> None:
    if notify is not None and message not in _TOLD:
        _TOLD.add(message)
        notify(message)


def host_arcface(folders: Sequence[str | Path]) -> Path | None:
    """An ArcFace recognizer at $LAFR_ARCFACE (a file or a folder) or in the host's folders."""
    if os.environ.get("LAFR_ARCFACE"):
        found, _ = find_arcface()
        if found is not None:
            return found
    return first_arcface([Path(f) for f in folders])


def _candidates(folders: Sequence[str | Path]):
    """(key, loader) of the models that could run here, best first; dlib only asked for when needed."""
    arcface = host_arcface(folders)
    if arcface is not None:
        yield ("arcface", str(arcface)), lambda: ArcFaceOnnx(arcface)
    if dlib_problem() is None:
        yield ("dlib", ""), DlibIdentity


def host_identity_model(arcface_folders: Sequence[str | Path] = (), notify: Callable[[str], None] | None = None) -> IdentityModel | None:
    """The identity model to measure with, loaded once per process, or None when none can run.

    Never raises for a missing or broken model: a recognizer that cannot load (no onnxruntime,
    not a recognizer) is reported once and skipped for dlib; no model at all is reported once."""
    for key, load in _candidates(arcface_folders):
        if key in _MODELS:
            return _MODELS[key]
        if key in _BROKEN:
            continue
        try:
            _MODELS[key] = load()
        except IdentityModelError as exc:
            _BROKEN.add(key)
            _tell(f"identity model skipped: {exc}", notify)
            continue
        return _MODELS[key]
    _tell(NO_MODEL, notify)
    return None


def shown_faces(faces: FaceSet, max_images: int | None = None) -> torch.Tensor:
    """Indices of the faces in the first `max_images` images (all without a limit)."""
    keep = torch.ones(len(faces), dtype=torch.bool) if max_images is None else faces.image_index.cpu() < max_images
    return keep.nonzero()[:, 0]


@torch.no_grad()
def measure_faces(
    model: IdentityModel,
    faces: FaceSet,
    restored: torch.Tensor,
    crops: torch.Tensor | None = None,
    images: torch.Tensor | None = None,
    max_images: int | None = None,
) -> IdentityReport:
    """Distance between each face's aligned input crop and its restored crop (same order as `faces`).

    crops: the aligned crops that were restored, or None to cut them again from `images` with the
    faces' landmarks (Face Paste Back gets only the FaceSet; alignment is deterministic, so these
    are the crops Face Detect & Align gave). max_images: measure only the faces of the first
    images (the ones a preview shows), so a long video costs a few faces, not every frame's."""
    if restored.shape[0] != len(faces):
        raise ValueError(f"identity: {restored.shape[0]} restored crops for {len(faces)} faces")
    index = shown_faces(faces, max_images)
    if crops is None:
        if images is None or faces.crop_size is None:
            raise ValueError("identity: give the aligned crops, or the images and an aligned FaceSet to cut them from")
        crops, _ = align_faces(images, faces.subset(index).to(images.device), size=faces.crop_size)
    else:
        crops = crops[index.to(crops.device)]
    distances = model.distances(crops[..., :3], restored[index.to(restored.device)][..., :3]) if len(index) else torch.zeros(0)
    return IdentityReport(model.name, legend(model), model.threshold, tuple(index.tolist()), tuple(float(d) for d in distances))
