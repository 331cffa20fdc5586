"""lafr_core.video.stream: the streamed result equals the whole-clip one, the frames held never
exceed the lookahead window, batch helpers round-trip into align_faces."""

import pytest
import torch

from lafr_core.face import align_faces
from lafr_core.video import FaceStream, link_tracks, merge_frames, smooth_series, smooth_stream, split_frames, stream_frames, temporal_faces
from video_fixtures import clip


def busy_clip(frames=120):
    """Two faces crossing at frame 60 (one missed for 3 frames before), a third appearing late,
    noise."""
    paths = [
        lambda t: ((100 + 3.0 * t, 240.0), 80.0 + 0.2 * t),
        lambda t: ((460 - 3.0 * t, 252.0), 70.0),
        lambda t: ((320.0, 100.0), 50.0),
    ]
    missing = {(1, t) for t in range(20, 23)} | {(2, t) for t in range(70)}
    return clip(paths, frames, missing=missing, noise=1.0, seed=11)


@pytest.mark.parametrize("sigma", [0.0, 2.0, 5.0])
def test_stream_equals_whole_clip(sigma):
    detections = busy_clip()
    tracks = link_tracks(detections)
    expected = {}  # (frame, track id) -> smoothed landmarks, boxes
    for track in tracks:
        lm, box = smooth_series(track.landmarks, sigma), smooth_series(track.boxes, sigma)
        for i, frame in enumerate(track.frames):
            expected[frame, track.id] = (lm[i], box[i])
    out = list(smooth_stream(detections, sigma=sigma))
    assert [f.index for f in out] == list(range(len(detections)))
    got = {(f.index, tid) for f in out for tid in f.track_ids}
    assert got == set(expected)
    for f in out:
        assert list(f.track_ids) == sorted(f.track_ids)
        for i, tid in enumerate(f.track_ids):
            lm, box = expected[f.index, tid]
            assert torch.equal(f.faces.landmarks[i], torch.from_numpy(lm).float())
            assert torch.equal(f.faces.boxes[i], torch.from_numpy(box).float())
    observed = {(f.index, tid): obs for f in out for tid, obs in zip(f.track_ids, f.observed)}
    assert [observed[t, 1] for t in range(19, 24)] == [True, False, False, False, True]


def test_frames_held_never_exceed_the_window():
    stream = FaceStream(sigma=5.0, max_gap=5)
    assert stream.lookahead == 15 + 5
    emitted, samples = [], []
    for faces in busy_clip(300):
        emitted += [f.index for f in stream.push(faces, payload=object())]
        assert stream.held <= stream.lookahead + 1
        samples.append(max((len(s) for s in stream._samples.values()), default=0))
    assert stream.max_held == stream.lookahead + 1
    assert max(samples) <= 2 * stream.radius + stream.tracker.max_gap + 2  # per track, not per clip
    emitted += [f.index for f in stream.flush()]
    assert emitted == list(range(300)) and stream.held == 0


def test_stream_frames_batches_detection_and_hands_frames_back():
    detections = busy_clip(40)
    images = [torch.full((1, 48, 64, 3), t / 40) for t in range(40)]
    produced = []

    def frames():
        for t, image in enumerate(images):
            produced.append(t)
            yield image[0]  # [H, W, C] is accepted too

    def detect(batch):
        first = len(produced) - batch.shape[0]
        return merge_frames(detections[first : first + batch.shape[0]])

    out = []
    for f in stream_frames(frames(), detect, batch=4):
        assert len(produced) - f.index <= 4 + 20 + 1  # batch + lookahead + this frame
        out.append(f)
    assert [f.index for f in out] == list(range(40))
    assert all(torch.equal(f.payload, images[f.index]) for f in out)
    reference = list(smooth_stream(detections))
    assert all(torch.equal(a.faces.landmarks, b.faces.landmarks) for a, b in zip(out, reference))


def test_largest_and_index_selection_per_frame():
    detections = busy_clip()
    largest = list(smooth_stream(detections, select="largest"))
    assert all(f.track_ids == (0,) for f in largest)  # the growing 80 px face
    second = list(smooth_stream(detections, select=[1]))
    assert {f.track_ids for f in second} == {(1,)}
    with pytest.raises(ValueError, match="largest"):
        FaceStream(select="big")


def test_batch_helpers_round_trip_into_align_faces():
    detections = busy_clip(30)
    batch = merge_frames(detections)
    assert batch.num_images == 30 and len(batch) == sum(len(f) for f in detections)
    assert all(torch.equal(a.landmarks, b.landmarks) for a, b in zip(split_frames(batch), detections))
    smoothed, ids = temporal_faces(batch)
    assert smoothed.num_images == 30 and ids.shape == (len(smoothed),)
    images = torch.rand(30, 480, 640, 3)
    crops, aligned = align_faces(images, smoothed, size=64)
    assert crops.shape == (len(smoothed), 64, 64, 3) and aligned.aligned


def test_frames_without_faces_and_an_empty_clip():
    empty = clip([], 5)
    out = list(smooth_stream(empty))
    assert [len(f.faces) for f in out] == [0] * 5 and out[0].faces.image_sizes == ((480, 640),)
    assert list(smooth_stream([])) == []


def test_a_face_hidden_behind_another_is_not_pasted_while_missed():
    # face 1 passes behind face 0 and is not detected for 4 frames there
    paths = [lambda t: ((300.0, 240.0), 90.0), lambda t: ((180 + 6.0 * t, 245.0), 80.0)]
    missing = {(1, t) for t in range(18, 22)}
    out = list(smooth_stream(clip(paths, 40, missing=missing)))
    present = [1 in f.track_ids for f in out]
    assert present == [t not in range(18, 22) for t in range(40)]  # same track before and after
    assert {tid for f in out for tid in f.track_ids} == {0, 1}
    # a face missed in the open is still filled in
    alone = list(smooth_stream(clip(paths[1:], 40, missing={(0, t) for t in range(18, 22)})))
    assert all(f.track_ids == (0,) for f in alone)


def test_a_selected_face_hidden_behind_an_unselected_one_is_left_out():
    paths = [lambda t: ((300.0, 240.0), 70.0), lambda t: ((180 + 6.0 * t, 245.0), 90.0)]
    missing = {(1, t) for t in range(18, 22)}
    out = list(smooth_stream(clip(paths, 40, missing=missing), select="largest"))
    assert [f.track_ids for f in out] == [() if t in range(18, 22) else (0,) for t in range(40)]
