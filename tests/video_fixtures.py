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


# ---------------------------------------------------------------- real-photo clips (bench, real test)

def shake_path(frames: int, amplitude: float = 2.0, seed: int = 0, min_period: float = 40.0, max_period: float = 120.0) -> np.ndarray:
    """[frames, 2] a known hand-held sway in pixels: three sinusoids per axis with random
    periods (min_period .. max_period frames) and phases, scaled so its largest excursion is
    `amplitude` (a sub-pixel to 2 px shake: most frames are off by a fraction of a pixel)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64)[:, None]
    out = np.zeros((frames, 2))
    for _ in range(3):
        period = rng.uniform(min_period, max_period, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        out += rng.uniform(0.5, 1.0, size=2) * np.sin(2 * np.pi * t / period + phase)
    return out * (amplitude / max(np.abs(out).max(), 1e-9))


def similarity(scale: float, src_point, dst_point) -> np.ndarray:
    """[2, 3] source pixel -> frame pixel: uniform `scale` taking src_point to dst_point."""
    sx, sy = src_point
    dx, dy = dst_point
    return np.array([[scale, 0.0, dx - scale * sx], [0.0, scale, dy - scale * sy]])


def render(layers, size, background: float = 0.45) -> np.ndarray:
    """[H, W, 3] float32 frame: each layer (source [h, w, 3] float32 0..1, affine [2, 3] source
    pixel -> frame pixel, cut_out) warped with bicubic resampling, the source pre-blurred
    against aliasing when it shrinks; a cut_out layer (a head region) is pasted over what lies
    below with a 2-px feathered edge, a full layer fills the frame (mirrored past its edge)."""
    import cv2

    h, w = size
    frame = np.full((h, w, 3), background, dtype=np.float32)
    for source, affine, cut_out in layers:
        scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
        if scale < 1:
            blur = 0.5 * np.sqrt(1 / scale**2 - 1)
            source = cv2.GaussianBlur(source, (0, 0), blur)
        warped = cv2.warpAffine(source, affine, (w, h), flags=cv2.INTER_CUBIC,
                                borderMode=cv2.BORDER_CONSTANT if cut_out else cv2.BORDER_REFLECT_101)
        if not cut_out:
            frame = warped
            continue
        alpha = np.zeros(source.shape[:2], np.float32)
        alpha[2:-2, 2:-2] = 1
        alpha = cv2.warpAffine(cv2.GaussianBlur(alpha, (0, 0), 1.0), affine, (w, h), flags=cv2.INTER_LINEAR)[..., None]
        frame = frame * (1 - alpha) + warped * alpha
    return np.clip(frame, 0, 1)


def degrade(frame: np.ndarray, rng: np.random.Generator, noise: float = 0.02, jpeg: int = 70) -> np.ndarray:
    """Sensor noise (Gaussian, std `noise`) then JPEG at quality `jpeg`: float32 [H, W, 3]."""
    import cv2

    noisy = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 1)
    bgr = (noisy[..., ::-1] * 255 + 0.5).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255


def transform_points(affine: np.ndarray, points) -> np.ndarray:
    """Source pixel coordinates [..., 2] through affine [2, 3] (pixel centres at integers)."""
    p = np.asarray(points, dtype=np.float64)
    return p @ affine[:, :2].T + affine[:, 2]
