"""Temp preview images and face geometry sent to the frontend extension (web/) as UI output.

Saved like ComfyUI's own preview nodes (PNG in the temp folder, {"filename", "subfolder",
"type": "temp"}), downscaled to PREVIEW_MAX_SIDE so a 4K batch does not flood the browser.
The extension draws a before/after split (with each face's identity distance input -> output
when an identity model is installed) or the detected faces; its setting "LAFR: show previews"
turns the drawing off.
"""

from __future__ import annotations

import logging
import os
import uuid

import torch
from PIL import Image

from ..lafr_core.face import FaceSet
from ..lafr_core.face_identity import IdentityReport, host_identity_model, measure_faces
from ..lafr_core.image_io import to_uint8_rgb

log = logging.getLogger("ComfyUI-LAFR")

PREVIEW_MAX_SIDE = 1024  # big enough to judge a face, small enough for a browser tab
MAX_PREVIEW_IMAGES = 8  # of a batch, the first few are shown


def save_temp_images(images: torch.Tensor, prefix: str) -> list[dict]:
    """images [B, H, W, C] 0..1 -> ComfyUI image records of temp PNGs (first MAX_PREVIEW_IMAGES)."""
    import folder_paths

    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    records = []
    for image in images[:MAX_PREVIEW_IMAGES]:
        picture = Image.fromarray(to_uint8_rgb(image.cpu()))
        picture.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
        name = f"{prefix}_{uuid.uuid4().hex[:12]}.png"
        picture.save(os.path.join(folder, name), compress_level=1)
        records.append({"filename": name, "subfolder": "", "type": "temp"})
    return records


def before_after(before: torch.Tensor, after: torch.Tensor, identity: list[dict] | None = None) -> dict:
    """UI output for the split view: pairs of the same images before and after restoration, and
    (`identity`, from identity_records) each shown face's identity distance, a record per pair
    from the first. The key is always there, empty without distances: ComfyUI merges the ui of a
    node run over a list by the FIRST run's keys (execution.py), so keys must not come and go."""
    return {"lafr_before": save_temp_images(before, "lafr_before"), "lafr_after": save_temp_images(after, "lafr_after"),
            "lafr_identity": identity or []}


def insightface_folders() -> list[str]:
    """ComfyUI's models/insightface (and any path extra_model_paths.yaml gives "insightface"):
    where ReActor, InstantID and IPAdapter FaceID users keep buffalo_l's w600k_r50.onnx."""
    import folder_paths

    paths = list(folder_paths.folder_names_and_paths.get("insightface", ([], set()))[0])
    default = os.path.join(folder_paths.models_dir, "insightface")
    return paths if default in paths else [default, *paths]


def identity_records(faces: FaceSet, report: IdentityReport, num_images: int) -> list[dict]:
    """One record per previewed image (the order of lafr_before): its size in pixels, how to read
    the numbers, and its measured faces' boxes (image pixels) with their distances."""
    where = dict(zip(report.face_index, report.distances))
    records = []
    for index in range(min(num_images, MAX_PREVIEW_IMAGES)):
        height, width = faces.image_sizes[index]
        mine = [i for i in (faces.image_index == index).nonzero()[:, 0].tolist() if i in where]
        records.append({
            "width": width,
            "height": height,
            "model": report.model,
            "legend": report.legend,
            "threshold": report.threshold,
            "faces": [{"index": i, "box": [round(v, 2) for v in faces.boxes[i].tolist()], "distance": round(where[i], 4)} for i in mine],
        })
    return records


def face_identity(image: torch.Tensor, faces: FaceSet | None, crops: torch.Tensor | None, restored: torch.Tensor | None) -> list[dict] | None:
    """identity_records of the previewed images' faces and one log line, or None (no face, or no
    identity model: then nothing but a directory check and an import-spec lookup ran).

    Photos: the faces of the first MAX_PREVIEW_IMAGES images. Video frames (temporal mode, the
    faces carry track ids): the first frame's only; the next frames hold the same people, and
    each face costs two descriptor passes (dlib: ~0.35 s a face on 2 CPU cores)."""
    if faces is None or restored is None or len(faces) == 0:
        return None
    model = host_identity_model(insightface_folders(), notify=lambda message: log.info("LAFR: %s", message))
    if model is None:
        return None
    video = faces.track_ids is not None
    shown = 1 if video else min(image.shape[0], MAX_PREVIEW_IMAGES)
    report = measure_faces(model, faces, restored, crops, image, max_images=shown)
    which = (" (the first frame's faces)" if video else f" (faces of the first {shown} images)") if image.shape[0] > shown else ""
    log.info("LAFR: %s%s", report.line(), which)
    return identity_records(faces, report, shown)


def restore_preview(image: torch.Tensor, out: torch.Tensor, faces: FaceSet | None, crops: torch.Tensor | None,
                    restored: torch.Tensor | None) -> dict:
    """The ui of a node that restores faces: before/after of `image` -> `out`, with each shown
    face's identity distance aligned input crop (`crops`; None: cut again from `image`) ->
    `restored` crop when an identity model is installed.

        return {"ui": restore_preview(image, out, result.faces, result.crops, result.restored), "result": ...}"""
    return before_after(image, out, face_identity(image, faces, crops, restored))


def face_overlay(images: torch.Tensor, faces: FaceSet) -> dict:
    """UI output for the detection overlay: each image with its faces in image pixels (and, for
    video frames in temporal mode, each face's track id, so a face can be followed)."""
    records = save_temp_images(images, "lafr_detect")
    overlays = []
    for index, record in enumerate(records):
        mine = (faces.image_index == index).nonzero()[:, 0].tolist()
        height, width = faces.image_sizes[index]
        overlays.append({
            "image": record,
            "width": width,
            "height": height,
            "skipped_small": faces.skipped_small[index] if faces.skipped_small else 0,
            "faces": [{"box": [round(v, 2) for v in faces.boxes[i].tolist()],
                       "landmarks": [[round(x, 2), round(y, 2)] for x, y in faces.landmarks[i].tolist()],
                       "score": round(float(faces.scores[i]), 4),
                       **({"track": int(faces.track_ids[i])} if faces.track_ids is not None else {})} for i in mine],
        })
    return {"lafr_overlay": overlays, "lafr_face_count": [len(faces)]}
