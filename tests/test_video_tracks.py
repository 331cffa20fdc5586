"""lafr_core.video.tracks on synthetic detections: crossing faces keep their ids, short gaps are
bridged and interpolated, a new face starts a new track, selection modes."""

import numpy as np
import pytest

from lafr_core.video import FaceTracker, link_tracks, select_tracks
from video_fixtures import clip


def crossing_paths(speed=4.0, size=80.0, dy=12.0):
    return [
        lambda t: ((100 + speed * t, 240.0), size),  # left to right
        lambda t: ((500 - speed * t, 240.0 + dy), size * 0.9),  # right to left
    ]


def path_of(track, paths):
    """Which path each frame of the track follows (index of the nearest true centre)."""
    centres = track.landmarks.mean(axis=1)
    truth = np.array([[paths[i](t)[0] for i in range(len(paths))] for t in track.frames])  # [T, P, 2]
    return np.linalg.norm(truth - centres[:, None], axis=-1).argmin(axis=1)


@pytest.mark.parametrize("noise", [0.0, 1.5])
@pytest.mark.parametrize("occluded", [False, True])
def test_crossing_faces_keep_their_ids(noise, occluded):
    paths = crossing_paths()  # 12 px apart vertically, so the truth itself is never ambiguous
    # the faces meet at frame 50; occluded: the back face is not detected for 4 frames there
    missing = {(1, t) for t in range(48, 52)} if occluded else set()
    tracks = link_tracks(clip(paths, 100, missing=missing, noise=noise, seed=3))
    assert [t.id for t in tracks] == [0, 1]
    for track in tracks:
        assert (track.start, len(track)) == (0, 100)
        followed = path_of(track, paths)
        assert (followed == followed[0]).all(), f"track {track.id} swapped at frames {np.nonzero(followed != followed[0])[0]}"
    assert {int(path_of(t, paths)[0]) for t in tracks} == {0, 1}


def test_three_frame_gap_is_bridged_and_interpolated():
    paths = [lambda t: ((50 + 3.0 * t, 100 + 1.0 * t), 60 + 0.5 * t)]
    tracks = link_tracks(clip(paths, 30, missing={(0, 10), (0, 11), (0, 12)}))
    assert len(tracks) == 1
    track = tracks[0]
    assert len(track) == 30
    assert track.observed.tolist() == [t not in (10, 11, 12) for t in range(30)]
    # linear motion: the interpolated landmarks are where the face really was
    truth = np.stack([clip(paths, 30)[t].landmarks[0].double().numpy() for t in (10, 11, 12)])
    np.testing.assert_allclose(track.landmarks[10:13], truth, atol=1e-4)
    assert np.all((track.scores > 0) & (track.scores <= 1))


def test_gap_longer_than_max_gap_ends_the_track():
    paths = [lambda t: ((200.0, 200.0), 80.0)]
    missing = {(0, t) for t in range(10, 16)}  # 6 missed frames
    assert len(link_tracks(clip(paths, 30, missing=missing), max_gap=5)) == 2
    assert len(link_tracks(clip(paths, 30, missing=missing), max_gap=6)) == 1


def test_a_new_face_starts_a_new_track():
    paths = [lambda t: ((150.0, 200.0), 80.0), lambda t: ((450.0, 200.0), 70.0)]
    missing = {(1, t) for t in range(20)}
    tracks = link_tracks(clip(paths, 40, missing=missing))
    assert [(t.id, t.start, len(t)) for t in tracks] == [(0, 0, 40), (1, 20, 20)]


def test_a_face_that_changes_size_abruptly_is_a_new_face():
    frames = clip([lambda t: ((200.0, 200.0), 80.0 if t < 10 else 200.0)], 20)
    assert len(link_tracks(frames)) == 2


def test_selection_modes():
    paths = [lambda t: ((150.0, 200.0), 60.0), lambda t: ((450.0, 200.0), 90.0), lambda t: ((300.0, 400.0), 40.0)]
    tracks = link_tracks(clip(paths, 10))
    assert [t.id for t in select_tracks(tracks, "all")] == [0, 1, 2]
    # ids follow detect_faces' order in the first frame (largest first), so the 90 px face is 0
    assert select_tracks(tracks, "largest")[0].mean_size() == pytest.approx(90.0)
    assert [t.id for t in select_tracks(tracks, [2, 0])] == [0, 2]
    assert select_tracks(tracks, [7]) == []
    with pytest.raises(ValueError, match="all', 'largest"):
        select_tracks(tracks, "biggest")
    with pytest.raises(ValueError, match="start at 0"):
        select_tracks(tracks, [-1])


def test_frames_must_come_in_order():
    tracker = FaceTracker()
    frames = clip([lambda t: ((100.0, 100.0), 50.0)], 2)
    tracker.update(0, frames[0])
    with pytest.raises(ValueError, match="increasing order"):
        tracker.update(0, frames[1])


def test_a_second_partial_detection_of_a_tracked_face_is_not_a_new_track():
    from video_fixtures import face, frame_faces

    frames = []
    for t in range(20):
        faces = [face((200 + 2.0 * t, 200.0), 80.0)]
        if t in (8, 9):  # a half-face box next to the real one, as MTCNN gives for occluded faces
            faces.append(face((200 + 2.0 * t + 25, 190.0), 40.0))
        if t >= 12:  # a real new face, clear of the first
            faces.append(face((420.0, 210.0), 70.0))
        frames.append(frame_faces(faces))
    tracks = link_tracks(frames)
    assert [(t.id, t.start, len(t)) for t in tracks] == [(0, 0, 20), (1, 12, 8)]
