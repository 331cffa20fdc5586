"""Temp preview images and face geometry sent to the frontend extension (web/) as UI output.

Saved like ComfyUI's own preview nodes (PNG in the temp folder, {"filename", "subfolder",
"type": "temp"}), downscaled to PREVIEW_MAX_SIDE so a 4K batch does not flood the browser.
The extension draws a before/after split or the detected faces; its setting
"LAFR: show previews" turns the drawing off.
"""

from __future__ import annotations

import os
import uuid

import torch
from PIL import Image

from ..lafr_core.face import FaceSet
from ..lafr_core.image_io import to_uint8_rgb

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


def before_after(before: torch.Tensor, after: torch.Tensor) -> dict:
    """UI output for the split view: pairs of the same images before and after restoration."""
    return {"lafr_before": save_temp_images(before, "lafr_before"), "lafr_after": save_temp_images(after, "lafr_after")}


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
