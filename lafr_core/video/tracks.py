"""Link per-frame face detections into tracks: position and size, a constant-velocity
prediction, short gaps bridged and interpolated.

Each frame's detections (a one-image FaceSet, as detect_faces returns per frame) are matched to
the live tracks by the distance between a detection's centre (the mean of its 5 landmarks) and
where the track is predicted to be in this frame, in units of the track's face size. The
prediction is a least-squares line through the track's last few observed centres and sizes
(constant velocity and constant zoom rate): two faces crossing each other are still where their
own motion takes them, so the nearer detection after the crossing is the right one, where
"nearest to the last position" would swap them. A fit over several frames, not the last
difference, keeps one jittery detection from throwing the velocity off.

Matching is greedy on the gated costs, cheapest pair first (deterministic: ties go to the lower
track id, then the earlier detection). With a handful of faces per frame and the gate at half a
face, a pair that greedy and optimal assignment would settle differently needs two faces within
half a face of both predictions, where no motion model can tell them apart anyway.

A detection left over whose centre lies inside a live track's predicted face is dropped, not
made a new track: a half-hidden face often gives the detector two partial boxes, and a second
track on one face would paste it twice. A new face therefore starts its track once it is clear
of the faces already tracked.

A track not matched in a frame is "missed"; after more than `max_gap` missed frames in a row it
ends. When it is matched again within the gap, the frames in between are filled by linear
interpolation of landmarks, box and score (marked not observed), so every track covers a
contiguous run of frames. Everything runs in float64 numpy: the same detections give the same
tracks on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..face.faceset import FaceSet

# Frames a face may go undetected (occlusion, a crossing face, motion blur, a missed detection)
# and still keep its track: 5 frames is 0.2 s at 25 fps, long enough for a face passing in front
# of another, short enough that a face leaving and a new one arriving are not joined.
DEFAULT_MAX_GAP = 5
# A detection joins a track when its centre is within this many face sizes of the prediction
# and its size within this ratio of the track's: half a face apart, two faces are two faces.
DEFAULT_GATE = 0.5
DEFAULT_MAX_SIZE_RATIO = 1.5
# Observed frames the velocity is fitted over (about 0.25 s at 25 fps): enough to average out
# detector jitter, few enough to follow a change of direction.
DEFAULT_HISTORY = 6


@dataclass(frozen=True)
class Observation:
    """One face in one frame, float64 numpy (image pixels)."""

    frame: int
    landmarks: np.ndarray  # [5, 2]
    box: np.ndarray  # [4] x1, y1, x2, y2
    score: float
    observed: bool = True  # False: interpolated across a gap

    @property
    def centre(self) -> np.ndarray:
        return self.landmarks.mean(axis=0)

    @property
    def size(self) -> float:
        """Geometric mean of the box sides: the face size the gate and 'largest' use."""
        w, h = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(np.sqrt(max(w, 1e-6) * max(h, 1e-6)))


@dataclass(frozen=True)
class Track:
    """A face over a contiguous run of frames start .. start + len - 1 (gaps interpolated).

    landmarks [T, 5, 2], boxes [T, 4], scores [T] float64; observed [T] bool (False where
    interpolated)."""

    id: int
    start: int
    landmarks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    observed: np.ndarray

    def __len__(self) -> int:
        return int(self.landmarks.shape[0])

    @property
    def end(self) -> int:
        """Last frame (inclusive)."""
        return self.start + len(self) - 1

    @property
    def frames(self) -> range:
        return range(self.start, self.end + 1)

    def mean_size(self) -> float:
        """Mean face size over the observed frames ('largest' compares this)."""
        sides = self.boxes[self.observed, 2:] - self.boxes[self.observed, :2]
        return float(np.sqrt(np.clip(sides, 1e-6, None).prod(axis=1)).mean())


def interpolate(a: Observation, b: Observation) -> list[Observation]:
    """The frames strictly between observations a and b, linearly interpolated."""
    out = []
    for frame in range(a.frame + 1, b.frame):
        u = (frame - a.frame) / (b.frame - a.frame)
        out.append(
            Observation(
                frame,
                (1 - u) * a.landmarks + u * b.landmarks,
                (1 - u) * a.box + u * b.box,
                (1 - u) * a.score + u * b.score,
                observed=False,
            )
        )
    return out


@dataclass
class _LiveTrack:
    id: int
    history: list[Observation] = field(default_factory=list)  # last observed frames, oldest first
    missed: int = 0

    def predict(self, frame: int) -> tuple[np.ndarray, float]:
        """(centre [2], size) expected at `frame`: a least-squares line through the history."""
        times = np.array([o.frame for o in self.history], dtype=np.float64)
        centres = np.stack([o.centre for o in self.history])
        sizes = np.array([o.size for o in self.history])
        if len(times) < 2:
            return centres[-1], float(sizes[-1])
        t = times - times.mean()
        denom = float((t**2).sum())
        dt = frame - times.mean()
        centre = centres.mean(axis=0) + dt * (t[:, None] * (centres - centres.mean(axis=0))).sum(axis=0) / denom
        log_size = np.log(sizes)  # zoom is multiplicative: a constant zoom rate is linear in log size
        size = float(np.exp(log_size.mean() + dt * (t * (log_size - log_size.mean())).sum() / denom))
        return centre, size


class FaceTracker:
    """Online tracker: feed it one frame's detections at a time, in frame order.

    update(frame, faces) -> (track id of each detection, in the FaceSet's order; list of
    (track id, observations) filled or added this frame, gap interpolations first). Ids count
    up from 0 in order of first appearance."""

    def __init__(
        self,
        max_gap: int = DEFAULT_MAX_GAP,
        gate: float = DEFAULT_GATE,
        max_size_ratio: float = DEFAULT_MAX_SIZE_RATIO,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0 frames, got {max_gap}")
        if gate <= 0 or max_size_ratio < 1 or history < 1:
            raise ValueError(f"gate must be > 0, max_size_ratio >= 1 and history >= 1; got {gate}, {max_size_ratio}, {history}")
        self.max_gap, self.gate, self.max_size_ratio, self.history = int(max_gap), float(gate), float(max_size_ratio), int(history)
        self.live: list[_LiveTrack] = []
        self.next_id = 0
        self.last_frame: int | None = None

    def update(self, frame: int, faces: FaceSet) -> tuple[list[int], list[tuple[int, list[Observation]]]]:
        if self.last_frame is not None and frame <= self.last_frame:
            raise ValueError(f"frames must come in increasing order: {frame} after {self.last_frame}")
        self.last_frame = frame
        detections = observations_of(frame, faces)
        pairs = []
        predictions = [track.predict(frame) for track in self.live]
        for ti, track in enumerate(self.live):
            centre, size = predictions[ti]
            for di, det in enumerate(detections):
                ratio = det.size / size
                cost = float(np.linalg.norm(det.centre - centre)) / size
                if cost < self.gate and 1 / self.max_size_ratio <= ratio <= self.max_size_ratio:
                    pairs.append((cost, track.id, ti, di))
        pairs.sort()
        ids = [-1] * len(detections)
        used_tracks: set[int] = set()
        added: list[tuple[int, list[Observation]]] = []
        for _, _, ti, di in pairs:
            if ti in used_tracks or ids[di] != -1:
                continue
            track = self.live[ti]
            used_tracks.add(ti)
            ids[di] = track.id
            added.append((track.id, [*interpolate(track.history[-1], detections[di]), detections[di]]))
            track.history = [*track.history, detections[di]][-self.history :]
            track.missed = 0
        for ti, track in enumerate(self.live):
            if ti not in used_tracks:
                track.missed += 1
        covered = [self._inside_a_track(det, predictions) for det in detections]
        self.live = [t for t in self.live if t.missed <= self.max_gap]
        for di, det in enumerate(detections):
            if ids[di] == -1 and not covered[di]:
                ids[di] = self.next_id
                self.live.append(_LiveTrack(self.next_id, [det]))
                added.append((self.next_id, [det]))
                self.next_id += 1
        return ids, added


    @staticmethod
    def _inside_a_track(det: Observation, predictions: list[tuple[np.ndarray, float]]) -> bool:
        """True when the detection's centre lies inside a live track's predicted face (half a
        size from its centre): a second, partial detection of a face already tracked (MTCNN
        gives those for a half-hidden face), not a new face."""
        return any(bool((np.abs(det.centre - centre) < size / 2).all()) for centre, size in predictions)


def observations_of(frame: int, faces: FaceSet) -> list[Observation]:
    """The faces of a one-image FaceSet as float64 Observations (detection order)."""
    if faces.num_images != 1:
        raise ValueError(f"one frame's detections must be a FaceSet of one image, got {faces.num_images} (split_frames splits a batch)")
    lm = faces.landmarks.detach().double().cpu().numpy()
    boxes = faces.boxes.detach().double().cpu().numpy()
    scores = faces.scores.detach().double().cpu().numpy()
    return [Observation(frame, lm[i], boxes[i], float(scores[i])) for i in range(len(faces))]


def link_tracks(detections: Iterable[FaceSet], **tracker_options) -> list[Track]:
    """Whole-clip tracking: one-image FaceSets, one per frame (frame 0, 1, ...) -> tracks by id.

    Runs FaceTracker over every frame and gathers what it observed and interpolated."""
    tracker = FaceTracker(**tracker_options)
    samples: dict[int, list[Observation]] = {}
    for frame, faces in enumerate(detections):
        for track_id, observations in tracker.update(frame, faces)[1]:
            samples.setdefault(track_id, []).extend(observations)
    return [_as_track(track_id, obs) for track_id, obs in sorted(samples.items())]


def _as_track(track_id: int, observations: Sequence[Observation]) -> Track:
    return Track(
        id=track_id,
        start=observations[0].frame,
        landmarks=np.stack([o.landmarks for o in observations]),
        boxes=np.stack([o.box for o in observations]),
        scores=np.array([o.score for o in observations], dtype=np.float64),
        observed=np.array([o.observed for o in observations], dtype=bool),
    )


SELECTIONS = ("all", "largest")


def check_selection(select: str | Sequence[int]) -> str | tuple[int, ...]:
    """'all', 'largest' or track ids (0 = the first face to appear) -> a normalised selection."""
    if isinstance(select, str):
        if select not in SELECTIONS:
            raise ValueError(f"track selection must be 'all', 'largest' or track indices (0 = first face to appear), got {select!r}")
        return select
    wanted = tuple(sorted({int(i) for i in select}))
    if any(i < 0 for i in wanted):
        raise ValueError(f"track indices start at 0 (the first face to appear), got {list(wanted)}")
    return wanted


def select_tracks(tracks: Sequence[Track], select: str | Sequence[int] = "all") -> list[Track]:
    """Whole-clip selection: 'all'; 'largest': the one track with the largest mean face size
    over its observed frames (ties: the earlier track); or track ids (0 = first to appear;
    ids a clip does not have are ignored, as select_faces ignores missing per-image indices)."""
    select = check_selection(select)
    if select == "all":
        return list(tracks)
    if select == "largest":
        if not tracks:
            return []
        best = max(tracks, key=lambda t: (t.mean_size(), -t.id))
        return [best]
    return [t for t in tracks if t.id in select]
