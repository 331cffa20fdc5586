"""lafr_core.video.frames (temporal mode on an in-memory frame batch) and FaceSet.track_ids.

The detector is replaced by a scripted one (each frame's faces follow from the frame index
written into its first pixel), so these run in a second and check the chunking and windowing
exactly: detection in chunks, restoration in windows, the same pixels as one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lafr_core.face import FaceSet
from lafr_core.host_chain import ChainInterrupted, FaceOptions, HostModel, lafr_engine, restore_images
from lafr_core.lafr_file import LafrWeights
from lafr_core.video import detect_frames, merge_frames, restore_frame_batch, split_frames, temporal_faces, track_frames
from lafr_core import host_chain
from video_fixtures import face, frame_faces

H, W = 96, 128


def scripted_clip(n: int, empty=()) -> torch.Tensor:
    """Frames [n, H, W, 3] of smooth noise; frame t's index sits in pixel (0, 0), red."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(n, H // 8, W // 8, 3, generator=gen).repeat_interleave(8, 1).repeat_interleave(8, 2)
    frames[:, 0, 0, 0] = torch.arange(n) / 255.0
    frames[list(empty), 0, 0, 1] = 1.0  # green in pixel (0, 0): no face in this frame
    return frames


@pytest.fixture
def scripted_detector(monkeypatch):
    """host_chain's detect_faces replaced: one face drifting right with +-0.8 px noise (a seeded function of
    the frame index), none where the frame says so; the calls' batch sizes are recorded."""
    calls: list[int] = []

    def detect(images, detector, threshold, min_size, select, weights):
        assert select == "all"  # the selection is applied to tracks, after tracking
        calls.append(images.shape[0])
        found = []
        for image in images:
            t = int(round(float(image[0, 0, 0]) * 255))
            noise = np.random.default_rng(t).normal(0, 0.8, 2)
            found.append(frame_faces([] if image[0, 0, 1] == 1.0 else [face((50 + t + noise[0], 48 + noise[1]), 40)], (H, W)))
        return merge_frames(found)

    monkeypatch.setattr(host_chain, "detect_faces", detect)  # host_chain.face_detector calls it
    return calls


def echo_host() -> HostModel:
    """The chain's host functions as a stand-in restorer: 8x8 cell means, blown up again."""
    def encode(crops):
        cells = torch.nn.functional.avg_pool2d(crops.movedim(-1, 1), 8)
        return torch.cat([cells, torch.zeros_like(cells[:, :1])], dim=1)

    def decode(raw):
        return torch.nn.functional.interpolate(raw[:, :3], scale_factor=8, mode="nearest").movedim(1, -1)

    return HostModel(encode=encode, denoise=lambda z: z, decode=decode, device=torch.device("cpu"))


WEIGHTS = LafrWeights(aligner=None, kohya_lora=None, prompt_embeds=torch.zeros(1, 77, 1024))
OPTIONS = FaceOptions(detector="mtcnn", crop_size=64)


def test_track_ids_ride_along_with_the_faces():
    faces = frame_faces([face((40, 40), 30), face((90, 50), 20)])
    with pytest.raises(ValueError, match=r"track_ids must have shape \(2,\)"):
        faces.with_track_ids(torch.tensor([0]))
    labelled = faces.with_track_ids(torch.tensor([3, 1]))
    assert labelled.subset(torch.tensor([1])).track_ids.tolist() == [1]
    assert labelled.to("cpu").track_ids.dtype == torch.long and labelled.describe().endswith("2 tracks")
    assert faces.track_ids is None and FaceSet.empty(((8, 8),)).track_ids is None
    batch = merge_frames([labelled, frame_faces([]).with_track_ids(torch.zeros(0, dtype=torch.long)), labelled])
    assert batch.track_ids.tolist() == [3, 1, 3, 1]
    assert [f.track_ids.tolist() for f in split_frames(batch)] == [[3, 1], [], [3, 1]]
    assert merge_frames([labelled, faces]).track_ids is None  # unknown for some faces: none claimed


def test_temporal_faces_labels_its_faceset():
    frames = [frame_faces([face((40 + 2 * t, 40), 30), face((100, 60), 20)]) for t in range(8)]
    smoothed, ids = temporal_faces(merge_frames(frames), sigma=2.0)
    assert torch.equal(ids, smoothed.track_ids) and ids.tolist() == [0, 1] * 8


def test_detection_runs_in_chunks_and_selection_picks_tracks(scripted_detector):
    clip = scripted_clip(10)
    faces = detect_frames(clip, OPTIONS, chunk=4)
    assert scripted_detector == [4, 4, 2] and faces.counts() == [1] * 10
    smoothed = track_frames(clip, FaceOptions(select="largest"), sigma=3.0, chunk=4)
    assert smoothed.track_ids.tolist() == [0] * 10
    assert len(track_frames(clip, FaceOptions(select=(1,)), chunk=4)) == 0  # no track 1 in this clip
    # smoothing: the drift is kept, the detector's noise is cut
    truth = 50 + np.arange(10) + frame_faces([face((0, 0), 40)]).landmarks[0, :, 0].mean().item()
    raw_err = np.abs(faces.landmarks[:, :, 0].mean(1).numpy() - truth).mean()
    smooth_err = np.abs(smoothed.landmarks[:, :, 0].mean(1).numpy() - truth).mean()
    assert smooth_err < raw_err / 1.5  # 10 frames, sigma 3: measured 0.62 -> 0.33 px


def test_frames_are_refused_with_a_message():
    with pytest.raises(ValueError, match="at least one frame"):
        detect_frames(torch.zeros(0, 8, 8, 3))
    with pytest.raises(ValueError, match="frames per call must be >= 1"):
        detect_frames(torch.zeros(2, 8, 8, 3), chunk=0)
    with pytest.raises(ChainInterrupted):
        detect_frames(torch.zeros(2, 8, 8, 3), should_stop=lambda: True)


def test_windows_give_the_pixels_of_one_call(scripted_detector):
    clip = scripted_clip(10, empty=(4, 5, 6))  # a whole window without a face
    whole = restore_images(clip, WEIGHTS, echo_host(), OPTIONS, faces=track_frames(clip, OPTIONS, sigma=3.0, max_gap=0))
    done = []
    windowed = restore_frame_batch(clip, lafr_engine(WEIGHTS, echo_host()), OPTIONS, sigma=3.0, max_gap=0, window=3, detect_chunk=4,
                              progress=lambda n, total: done.append((n, total)))
    assert windowed.faces.counts() == [1, 1, 1, 1, 0, 0, 0, 1, 1, 1] and windowed.faces.track_ids.tolist() == [0] * 4 + [1] * 3
    assert torch.equal(windowed.restored, whole.restored) and torch.equal(windowed.crops, whole.crops)
    assert (windowed.images - whole.images).abs().max() < 1e-5
    assert done[-1] == (7, 7) and [n for n, _ in done] == sorted(n for n, _ in done)
    assert torch.equal(windowed.images[4:7], clip[4:7])  # no face: the frames are untouched
