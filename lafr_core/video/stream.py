"""Streaming temporal mode: frames in one at a time, smoothed faces out after a fixed lookahead.

    stream = FaceStream(sigma=5, max_gap=5, select="all")
    for frame in frames:                          # any iterable: a decoder, an IMAGE batch
        for out in stream.push(detect(frame), payload=frame):
            crops, faces = align_faces(out.payload, out.faces)   # unchanged lafr_core.face
            ...restore, paste_faces(out.payload, restored, faces)...
    for out in stream.flush(): ...

Frame t is handed back once frame t + lookahead has been pushed, lookahead = R + max_gap
(R = the smoothing window's half width): by then every track's samples in t - R .. t + R are
final (a face missed for up to max_gap frames after t + R is either re-detected, and the gap
filled, or its track has ended). So at most lookahead + 1 frames (their payloads: images,
crops, whatever the caller pushes) are held at any time, whatever the clip's length, and the
per-track samples kept are pruned to the window: peak memory does not grow with the clip.

The result per frame is a one-image FaceSet built from the smoothed track landmarks, boxes and
scores, without affines: what detect_faces returns, so align_faces and paste_faces (and the
paste mask and colour-correction statistics they derive from the landmarks) take it
unchanged. Faces are ordered by track id (0 = the first face to appear), not by size, so a face
keeps its slot while two faces cross; `track_ids` (of the frame and of its FaceSet) names them.

The numbers equal the whole-clip computation (link_tracks, then smooth_series per track): the
same fit_at on the same samples.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..face.faceset import FaceSet
from .smoothing import DEFAULT_SIGMA, fit_at, window_radius
from .tracks import DEFAULT_MAX_GAP, FaceTracker, Observation, check_selection

# A face filled in across a missed detection is left out of its frame (its track goes on) when
# a face detected in that frame covers more than this fraction of its box: it was missed because
# it is behind that face, and pasting it would paint it over the face in front.
OCCLUDED_COVERAGE = 0.5


@dataclass(frozen=True)
class TemporalFrame:
    """One frame's smoothed faces. faces: one-image FaceSet (no affines; align_faces sets them),
    ordered by track id; track_ids and observed (False: this frame's face was interpolated
    across a missed detection) per face; payload: what was pushed with the frame. A face
    interpolated while a detected face covers it (OCCLUDED_COVERAGE) is left out."""

    index: int
    faces: FaceSet
    track_ids: tuple[int, ...]
    observed: tuple[bool, ...]
    payload: Any = None


@dataclass(frozen=True)
class _Pending:
    index: int
    image_sizes: tuple[tuple[int, int], ...]
    skipped_small: tuple[int, ...]
    detector: str
    device: torch.device
    payload: Any


class FaceStream:
    """Online tracking + temporal smoothing with a bounded lookahead (see the module docstring).

    sigma: smoothing strength in frames (0: tracking and gap filling only, no smoothing).
    max_gap: frames a face may go undetected and keep its track (gaps are interpolated).
    select: "all", "largest" (per frame, the present track with the largest mean face size seen
    so far, lookahead included) or track ids (0 = first face to appear). tracker_options go to
    FaceTracker (gate, max_size_ratio, history)."""

    def __init__(
        self,
        sigma: float = DEFAULT_SIGMA,
        max_gap: int = DEFAULT_MAX_GAP,
        select: str | Sequence[int] = "all",
        **tracker_options,
    ) -> None:
        self.sigma = float(sigma)
        self.radius = window_radius(self.sigma)
        self.select = check_selection(select)
        self.tracker = FaceTracker(max_gap=max_gap, **tracker_options)
        self.lookahead = self.radius + self.tracker.max_gap
        self._samples: dict[int, dict[int, Observation]] = {}
        self._size_sum: dict[int, list[float]] = {}  # track id -> [sum of observed sizes, count]
        self._pending: deque[_Pending] = deque()
        self._next = 0
        self.max_held = 0

    @property
    def held(self) -> int:
        """Frames pushed and not yet handed back."""
        return len(self._pending)

    def push(self, faces: FaceSet, payload: Any = None) -> list[TemporalFrame]:
        """The next frame's detections (a one-image FaceSet) and anything to hand back with it
        (the frame itself). Returns the frames that are now final (possibly none)."""
        index = self._next
        self._next += 1
        for track_id, observations in self.tracker.update(index, faces)[1]:
            store = self._samples.setdefault(track_id, {})
            stats = self._size_sum.setdefault(track_id, [0.0, 0])
            for obs in observations:
                store[obs.frame] = obs
                if obs.observed:
                    stats[0] += obs.size
                    stats[1] += 1
        self._pending.append(_Pending(index, faces.image_sizes, faces.skipped_small, faces.detector, faces.image_index.device, payload))
        self.max_held = max(self.max_held, len(self._pending))
        ready = []
        while self._pending and self._pending[0].index <= index - self.lookahead:
            ready.append(self._emit(self._pending.popleft()))
        return ready

    def flush(self) -> list[TemporalFrame]:
        """The clip has ended: every frame still held, now final."""
        ready = [self._emit(p) for p in list(self._pending)]
        self._pending.clear()
        return ready

    def _selected(self, ids: list[int]) -> list[int]:
        """The tracks `select` keeps among those present in the frame (`ids`, ascending)."""
        if self.select == "all":
            return ids
        if self.select == "largest":
            if not ids:
                return []
            mean = {tid: self._size_sum[tid][0] / max(self._size_sum[tid][1], 1) for tid in ids}
            return [max(ids, key=lambda tid: (mean[tid], -tid))]
        return [tid for tid in ids if tid in self.select]

    def _emit(self, pending: _Pending) -> TemporalFrame:
        t = pending.index
        ids = sorted(tid for tid, store in self._samples.items() if t in store)
        landmarks, boxes, scores, observed = [], [], [], []
        for tid in ids:
            store = self._samples[tid]
            frames = [f for f in range(t - self.radius, t + self.radius + 1) if f in store]
            offsets = np.array(frames, dtype=np.float64) - t
            landmarks.append(fit_at(np.stack([store[f].landmarks for f in frames]), offsets, self.sigma))
            boxes.append(fit_at(np.stack([store[f].box for f in frames]), offsets, self.sigma))
            scores.append(store[t].score)
            observed.append(store[t].observed)
        self._prune(t + 1 - self.radius)
        selected = set(self._selected(ids))  # after the occlusion test, which needs every face present
        keep = [k and tid in selected for tid, k in zip(ids, _not_occluded(boxes, observed))]
        ids = [i for i, k in zip(ids, keep) if k]
        landmarks, boxes, scores, observed = ([v for v, k in zip(seq, keep) if k] for seq in (landmarks, boxes, scores, observed))
        faces = _one_image_faceset(landmarks, boxes, scores, ids, pending)
        return TemporalFrame(t, faces, tuple(ids), tuple(observed), pending.payload)

    def _prune(self, oldest: int) -> None:
        """Drop samples no later frame's window reaches, and tracks with none left."""
        for tid in list(self._samples):
            store = self._samples[tid]
            for f in [f for f in store if f < oldest]:
                del store[f]
            if not store:
                del self._samples[tid]
                del self._size_sum[tid]


def _not_occluded(boxes: list[np.ndarray], observed: list[bool]) -> list[bool]:
    """Per face: False for an interpolated face whose box a detected face covers by more than
    OCCLUDED_COVERAGE (see there)."""
    keep = []
    for i, box in enumerate(boxes):
        area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
        covered = 0.0
        for j, other in enumerate(boxes):
            if j != i and observed[j] and not observed[i]:
                w = min(box[2], other[2]) - max(box[0], other[0])
                h = min(box[3], other[3]) - max(box[1], other[1])
                covered = max(covered, max(w, 0.0) * max(h, 0.0) / area)
        keep.append(covered <= OCCLUDED_COVERAGE)
    return keep


def _one_image_faceset(landmarks: list, boxes: list, scores: list, ids: list[int], pending: _Pending) -> FaceSet:
    n, device = len(landmarks), pending.device
    if n == 0:
        return FaceSet.empty(pending.image_sizes, pending.detector, device).with_track_ids(torch.zeros(0, dtype=torch.long))
    return FaceSet(
        image_index=torch.zeros(n, dtype=torch.long, device=device),
        boxes=torch.from_numpy(np.stack(boxes)).float().to(device),
        scores=torch.tensor(scores, dtype=torch.float32, device=device),
        landmarks=torch.from_numpy(np.stack(landmarks)).float().to(device),
        image_sizes=pending.image_sizes,
        skipped_small=pending.skipped_small,
        detector=pending.detector,
        track_ids=torch.tensor(ids, dtype=torch.long, device=device),
    )


def smooth_stream(
    detections: Iterable[FaceSet | tuple[FaceSet, Any]],
    sigma: float = DEFAULT_SIGMA,
    max_gap: int = DEFAULT_MAX_GAP,
    select: str | Sequence[int] = "all",
    **tracker_options,
) -> Iterator[TemporalFrame]:
    """Iterator form of FaceStream: one-image FaceSets (or (FaceSet, payload) pairs) in frame
    order -> TemporalFrames in frame order, each after the lookahead."""
    stream = FaceStream(sigma=sigma, max_gap=max_gap, select=select, **tracker_options)
    for item in detections:
        faces, payload = item if isinstance(item, tuple) else (item, None)
        yield from stream.push(faces, payload)
    yield from stream.flush()


def stream_frames(
    frames: Iterable[torch.Tensor],
    detect: Callable[[torch.Tensor], FaceSet],
    batch: int = 8,
    sigma: float = DEFAULT_SIGMA,
    max_gap: int = DEFAULT_MAX_GAP,
    select: str | Sequence[int] = "all",
    **tracker_options,
) -> Iterator[TemporalFrame]:
    """Frames [H, W, C] (or [1, H, W, C]) float 0..1 one at a time -> TemporalFrames whose
    payload is the frame [1, H, W, C]. `detect(images [b, H, W, C]) -> FaceSet` runs on `batch`
    frames at a time (e.g. lambda x: detect_faces(x, detector="mtcnn", select="all")), so at
    most batch + lookahead frames are held."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1 frame, got {batch}")
    stream = FaceStream(sigma=sigma, max_gap=max_gap, select=select, **tracker_options)
    waiting: list[torch.Tensor] = []

    def run() -> Iterator[TemporalFrame]:
        found = split_frames(detect(torch.cat(waiting)))
        for image, faces in zip(waiting, found):
            yield from stream.push(faces, image)
        waiting.clear()

    for frame in frames:
        waiting.append(frame if frame.ndim == 4 else frame[None])
        if len(waiting) == batch:
            yield from run()
    if waiting:
        yield from run()
    yield from stream.flush()


def split_frames(faces: FaceSet) -> list[FaceSet]:
    """A batch FaceSet (detect_faces on B frames) -> B one-image FaceSets, faces in order."""
    out = []
    for b in range(faces.num_images):
        one = faces.subset((faces.image_index == b).nonzero()[:, 0])
        out.append(
            FaceSet(
                image_index=torch.zeros_like(one.image_index),
                boxes=one.boxes,
                scores=one.scores,
                landmarks=one.landmarks,
                image_sizes=(faces.image_sizes[b],),
                skipped_small=(faces.skipped_small[b],) if faces.skipped_small else (),
                detector=faces.detector,
                affines=one.affines,
                inverses=one.inverses,
                crop_size=faces.crop_size,
                track_ids=one.track_ids,
            )
        )
    return out


def merge_frames(frames: Sequence[FaceSet]) -> FaceSet:
    """One-image (or any) FaceSets of consecutive frames -> one batch FaceSet, faces sorted by
    frame and kept in order within it (what align_faces and paste_faces take for a batch)."""
    if not frames:
        raise ValueError("merge_frames needs at least one frame")
    offsets = np.cumsum([0] + [f.num_images for f in frames[:-1]])
    aligned = all(f.aligned for f in frames)
    sizes = {f.crop_size for f in frames}
    if aligned and len(sizes) > 1:
        raise ValueError(f"cannot merge FaceSets aligned at different crop sizes {sorted(sizes)}")
    device = frames[0].image_index.device
    skipped = [f.skipped_small or (0,) * f.num_images for f in frames]
    tracked = all(f.track_ids is not None for f in frames)
    return FaceSet(
        image_index=torch.cat([f.image_index.to(device) + int(o) for f, o in zip(frames, offsets)]),
        boxes=torch.cat([f.boxes.to(device) for f in frames]),
        scores=torch.cat([f.scores.to(device) for f in frames]),
        landmarks=torch.cat([f.landmarks.to(device) for f in frames]),
        image_sizes=tuple(s for f in frames for s in f.image_sizes),
        skipped_small=tuple(c for s in skipped for c in s),
        detector=frames[0].detector,
        affines=torch.cat([f.affines.to(device) for f in frames]) if aligned else None,
        inverses=torch.cat([f.inverses.to(device) for f in frames]) if aligned else None,
        crop_size=sizes.pop() if aligned else None,
        track_ids=torch.cat([f.track_ids.to(device) for f in frames]) if tracked else None,
    )


def temporal_faces(
    faces: FaceSet,
    sigma: float = DEFAULT_SIGMA,
    max_gap: int = DEFAULT_MAX_GAP,
    select: str | Sequence[int] = "all",
    **tracker_options,
) -> tuple[FaceSet, torch.Tensor]:
    """A batch of frames' detections (ComfyUI IMAGE batch through detect_faces with
    select="all") -> (the smoothed FaceSet for the same batch, track id of each face [N]).
    The FaceSet carries the same ids in its `track_ids`. The whole batch is in memory already,
    so this is smooth_stream collected."""
    out = list(smooth_stream(split_frames(faces), sigma=sigma, max_gap=max_gap, select=select, **tracker_options))
    merged = merge_frames([f.faces for f in out])
    return merged, merged.track_ids
