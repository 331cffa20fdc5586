"""Synthetic per-frame detections for the lafr_core.video tests: faces as 5 landmarks in FFHQ
layout around a centre, with a box and a score, one one-image FaceSet per frame."""

from __future__ import annotations

import numpy as np
import torch

from lafr_core.face import FaceSet

# FFHQ template offsets from its landmarks' mean, per unit face size (box side)
_TEMPLATE = np.array([[192.98, 239.95], [318.90, 240.19], [256.63, 314.02], [201.26, 371.41], [313.09, 371.15]])
UNIT_LANDMARKS = (_TEMPLATE - _TEMPLATE.mean(axis=0)) / 256.0


def face(centre, size) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks [5, 2], box [4]) of a face of `size` px whose landmarks' mean is `centre`."""
    c = np.asarray(centre, dtype=np.float64)
    landmarks = c + UNIT_LANDMARKS * size
    box = np.array([c[0] - size / 2, c[1] - size / 2, c[0] + size / 2, c[1] + size / 2])
    return landmarks, box


def frame_faces(faces: list[tuple[np.ndarray, np.ndarray]], image_size=(480, 640)) -> FaceSet:
    """One frame's FaceSet from (landmarks, box) pairs, largest first like detect_faces."""
    if not faces:
        return FaceSet.empty((tuple(image_size),))
    faces = sorted(faces, key=lambda f: -(f[1][2] - f[1][0]) * (f[1][3] - f[1][1]))
    n = len(faces)
    return FaceSet(
        image_index=torch.zeros(n, dtype=torch.long),
        boxes=torch.tensor(np.stack([b for _, b in faces]), dtype=torch.float32),
        scores=torch.full((n,), 0.99),
        landmarks=torch.tensor(np.stack([lm for lm, _ in faces]), dtype=torch.float32),
        image_sizes=(tuple(image_size),),
        skipped_small=(0,),
        detector="synthetic",
    )


def clip(paths, frames: int, missing=(), noise: float = 0.0, seed: int = 0) -> list[FaceSet]:
    """paths: functions frame -> (centre, size); missing: set of (path index, frame) not
    detected; noise: std (px) of Gaussian noise on every landmark and box coordinate."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(frames):
        faces = []
        for i, path in enumerate(paths):
            if (i, t) in missing:
                continue
            centre, size = path(t)
            lm, box = face(centre, size)
            if noise:
                lm = lm + rng.normal(0, noise, lm.shape)
                box = box + rng.normal(0, noise, box.shape)
            faces.append((lm, box))
        out.append(frame_faces(faces))
    return out
