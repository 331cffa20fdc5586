"""The LAFR chain over a stream of frames: per frame, or with faces tracked and smoothed over time.

    for restored in restore_frames(frames, lafr_engine(weights, host), FaceOptions(), VideoOptions()):
        ...                                            # [1, H, W, C], in order, one per frame

Temporal (the default for videos): frames are detected `window` at a time (select "all"),
linked into tracks and smoothed by lafr_core.video.stream_frames, then each window of smoothed
frames goes through host_chain.restore_faces(..., faces=...) as one batch: the crops, paste
masks and colour statistics follow the smoothed landmarks. Per-frame: each window is detected
and restored as a batch of photos. Either way at most window + the stream's lookahead frames
are held, whatever the clip's length, and restoration is deterministic (the chain draws no
noise; a file's seeded "sample" latent rule is reseeded at every call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..face import FaceSet
from ..host_chain import CropEngine, FaceOptions, face_detector, restore_faces
from .smoothing import DEFAULT_SIGMA
from .stream import merge_frames, stream_frames
from .tracks import DEFAULT_MAX_GAP

Tensor = torch.Tensor


@dataclass(frozen=True)
class VideoOptions:
    """temporal: track + smooth (FaceOptions.select then picks tracks: "largest" or track ids,
    0 = the first face to appear); sigma, max_gap: lafr_core.video's; window: frames per
    detection batch and per restore batch (memory grows with it, not with the clip)."""

    temporal: bool = True
    sigma: float = DEFAULT_SIGMA
    max_gap: int = DEFAULT_MAX_GAP
    window: int = 8


@dataclass
class FrameCounts:
    """Filled in while frames stream through (the report after the run)."""

    frames: int = 0
    with_faces: int = 0
    faces: int = 0

    def add(self, faces: FaceSet) -> None:
        self.frames += faces.num_images
        per_image = torch.bincount(faces.image_index.cpu(), minlength=faces.num_images)
        self.with_faces += int((per_image > 0).sum())
        self.faces += len(faces)


def frame_detector(options: FaceOptions):
    """images [b, H, W, C] -> every face (select "all": the stream selects tracks) with the
    options' detector, threshold and min size."""
    return face_detector(options, select="all")


def _windows(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def restore_frames(
    frames: Iterable[Tensor],
    engine: CropEngine,
    options: FaceOptions = FaceOptions(),
    video: VideoOptions = VideoOptions(),
    chunk: int | None = None,
    counts: FrameCounts | None = None,
) -> Iterator[Tensor]:
    """Frames [1, H, W, C] (or [H, W, C]) float 0..1 -> restored frames [1, H, W, C], in order,
    by any engine (host_chain.lafr_engine for LAFR files)."""
    if video.window < 1:
        raise ValueError(f"the window must be >= 1 frame, got {video.window}")
    counts = counts if counts is not None else FrameCounts()
    if video.temporal:
        on_device = (f.to(engine.device) for f in frames)  # detection and paste where the model runs
        smoothed = stream_frames(on_device, frame_detector(options), batch=video.window, sigma=video.sigma,
                                 max_gap=video.max_gap, select=options.select)
        for window in _windows(smoothed, video.window):
            images = torch.cat([f.payload for f in window])
            result = restore_faces(images, engine, options, chunk=chunk, faces=merge_frames([f.faces for f in window]))
            counts.add(result.faces)
            yield from result.images.split(1)
        return
    for window in _windows(frames, video.window):
        images = torch.cat([f if f.ndim == 4 else f[None] for f in window])
        result = restore_faces(images, engine, options, chunk=chunk)  # detects with options.select
        counts.add(result.faces)
        yield from result.images.split(1)
