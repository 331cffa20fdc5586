"""Temporal mode on frames already in memory (a ComfyUI IMAGE batch [F, H, W, C], one image per
frame): detect every frame, link and smooth the faces over time, then restore through the one
host chain with those faces instead of a fresh per-frame detection.

Why a module of its own: the ComfyUI nodes (Face Detect & Align, Restore Faces) and any host
that holds a clip's frames need the same three steps, and each of them must bound its memory
on a long batch: detection runs DETECT_CHUNK frames per detect_faces call, and restoration
RESTORE_WINDOW frames per restore_faces call (the smoothing is already done on the whole
batch, so the windows need no overlap; every face is restored, colour-corrected and pasted on
its own, so windows give the same pixels as one call). A clip too long for memory as a batch
goes through lafr_core.video.FaceStream instead (bounded lookahead).

Track selection happens after tracking (select "all" at detection): "largest" is the track
with the largest mean face over the batch, indices are track ids (0 = first face to appear),
so a selected face keeps its identity when another face passes in front of it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from ..face import FaceSet, align_faces
from ..host_chain import ChainInterrupted, ChainResult, CropEngine, FaceOptions, face_detector, restore_faces
from .smoothing import DEFAULT_SIGMA
from .stream import merge_frames, split_frames, temporal_faces
from .tracks import DEFAULT_MAX_GAP

# Frames per detect_faces call: MTCNN's image pyramid of 16 1080p frames stays near 1 GB, and
# the per-call overhead is already amortised at this size.
DETECT_CHUNK = 16
# Frames per restore_faces call: the aligned crops, latents and restored crops of one window
# (3 MB per 512-px face in float32, each several times over) are what the chain holds at once.
RESTORE_WINDOW = 16


def _check_frames(images: torch.Tensor, chunk: int) -> None:
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"frames must be an IMAGE batch [F, H, W, C] with at least one frame, got {tuple(images.shape)}")
    if chunk < 1:
        raise ValueError(f"frames per call must be >= 1, got {chunk}")


def detect_frames(
    images: torch.Tensor,
    options: FaceOptions = FaceOptions(),
    chunk: int = DETECT_CHUNK,
    should_stop: Callable[[], bool] | None = None,
) -> FaceSet:
    """Every face of every frame (select "all"), `chunk` frames per detector call, on the
    frames' device; the options' detector, threshold, min size and weights as host_chain uses
    them. `should_stop()` is asked before each chunk (a True raises host_chain.ChainInterrupted)."""
    _check_frames(images, chunk)
    detect = face_detector(options, select="all")
    found = []
    for start in range(0, images.shape[0], chunk):
        if should_stop is not None and should_stop():
            raise ChainInterrupted("LAFR: stopped by the host")
        found.append(detect(images[start : start + chunk]))
    return merge_frames(found)


def track_frames(
    images: torch.Tensor,
    options: FaceOptions = FaceOptions(),
    sigma: float = DEFAULT_SIGMA,
    max_gap: int = DEFAULT_MAX_GAP,
    chunk: int = DETECT_CHUNK,
    should_stop: Callable[[], bool] | None = None,
) -> FaceSet:
    """Frames [F, H, W, C] -> the smoothed faces of every frame (FaceSet without affines, with
    track_ids), the options' `select` applied to tracks (see the module docstring)."""
    faces = detect_frames(images, replace(options, select="all"), chunk, should_stop)
    smoothed, _ = temporal_faces(faces, sigma=sigma, max_gap=max_gap, select=options.select)
    return smoothed


def align_frames(images: torch.Tensor, options: FaceOptions = FaceOptions(), sigma: float = DEFAULT_SIGMA,
                 max_gap: int = DEFAULT_MAX_GAP, chunk: int = DETECT_CHUNK,
                 should_stop: Callable[[], bool] | None = None) -> tuple[torch.Tensor, FaceSet]:
    """track_frames, then align_faces: (crops [N, S, S, 3], faces with affines and track_ids)."""
    return align_faces(images, track_frames(images, options, sigma, max_gap, chunk, should_stop), size=options.crop_size)


def restore_frame_batch(
    images: torch.Tensor,
    engine: CropEngine,
    options: FaceOptions = FaceOptions(),
    sigma: float = DEFAULT_SIGMA,
    max_gap: int = DEFAULT_MAX_GAP,
    chunk: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    detect_chunk: int = DETECT_CHUNK,
    window: int = RESTORE_WINDOW,
) -> ChainResult:
    """Temporal-mode restore_faces (any engine) for frames [F, H, W, C]: faces tracked and smoothed over the
    whole batch, then restore_faces(..., faces=) `window` frames at a time (the same pixels as
    one call on the whole batch with the same faces). `chunk`, `should_stop` and `progress`
    (faces done over the whole batch) as in restore_faces. The result's faces carry track_ids."""
    _check_frames(images, window)
    faces = track_frames(images.to(engine.device), options, sigma, max_gap, detect_chunk, should_stop)
    if len(faces) == 0:
        return ChainResult(images.clone(), faces.to(images.device))
    per_frame = split_frames(faces)
    total, done = len(faces), 0
    outs, found, restored, crops = [], [], [], []
    for start in range(0, images.shape[0], window):
        stop = min(start + window, images.shape[0])
        here = merge_frames(per_frame[start:stop])
        tick = (lambda n, _, offset=done: progress(offset + n, total)) if progress is not None else None
        result = restore_faces(images[start:stop], engine, options, chunk=chunk, should_stop=should_stop,
                                progress=tick, faces=here)
        outs.append(result.images)
        found.append(result.faces)
        if result.restored is not None:
            restored.append(result.restored)
            crops.append(result.crops)
        done += len(here)
    faces = merge_frames(found)
    return ChainResult(torch.cat(outs), faces, torch.cat(restored), torch.cat(crops))
