"""lafr_core.video: faces tracked across frames, landmarks smoothed over time, streamed.

    from lafr_core.video import FaceStream
    stream = FaceStream()                                   # sigma 5 frames, gaps up to 5 frames
    for frame in frames:                                    # [1, H, W, C] float 0..1
        for out in stream.push(detect_faces(frame, select="all"), payload=frame):
            crops, faces = align_faces(out.payload, out.faces)      # lafr_core.face, unchanged
    for out in stream.flush(): ...

tracks.py links detections into tracks (constant-velocity prediction, gaps interpolated),
smoothing.py fits a centred Gaussian-weighted line through each track's landmarks (zero lag for
steady motion), stream.py runs both with a bounded lookahead; frames.py is the temporal mode for
frames already in memory (a ComfyUI IMAGE batch): detect in chunks, track, restore through
host_chain with the smoothed faces. Host-free: torch and numpy only.
"""

from .frames import DETECT_CHUNK, RESTORE_WINDOW, align_frames, detect_frames, restore_frame_batch, track_frames
from .smoothing import DEFAULT_SIGMA, fit_at, noise_reduction, smooth_series, window_radius
from .stream import FaceStream, TemporalFrame, merge_frames, smooth_stream, split_frames, stream_frames, temporal_faces
from .tracks import DEFAULT_GATE, DEFAULT_MAX_GAP, FaceTracker, Track, link_tracks, select_tracks

__all__ = [
    "FaceStream",
    "TemporalFrame",
    "smooth_stream",
    "stream_frames",
    "temporal_faces",
    "split_frames",
    "merge_frames",
    "FaceTracker",
    "Track",
    "link_tracks",
    "select_tracks",
    "smooth_series",
    "fit_at",
    "noise_reduction",
    "window_radius",
    "DEFAULT_SIGMA",
    "DEFAULT_MAX_GAP",
    "DEFAULT_GATE",
    "detect_frames",
    "track_frames",
    "align_frames",
    "restore_frame_batch",
    "DETECT_CHUNK",
    "RESTORE_WINDOW",
]
