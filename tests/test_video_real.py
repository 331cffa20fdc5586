"""lafr_core.video on real detections: the bundled MTCNN on shaken, noisy, JPEG'd frames of a
real photo gives one track, smoothed landmarks nearer the truth than the per-frame ones, and a
FaceSet that align_faces and paste_faces take unchanged."""

import numpy as np
import torch

from face_fixtures import DATA, HAND_LANDMARKS, load_portrait
from lafr_core.face import align_faces, detect_faces, paste_faces
from lafr_core.face.align import alignment_affines
from lafr_core.video import stream_frames
from video_fixtures import degrade, render, shake_path, similarity, transform_points


def test_real_detector_on_shaken_frames():
    frames_n, size = 24, (192, 192)
    source = load_portrait("grace_hopper.jpg")[0].numpy()
    truth_src = np.array(HAND_LANDMARKS["grace_hopper.jpg"], dtype=np.float64)
    centre = truth_src.mean(axis=0)
    shake = shake_path(frames_n, amplitude=1.5, seed=4, min_period=12, max_period=30)
    rng = np.random.default_rng(0)
    affines = [similarity(0.45, centre, (96 + shake[t, 0], 100 + shake[t, 1])) for t in range(frames_n)]
    frames = [torch.from_numpy(degrade(render([(source, a, False)], size), rng)) for a in affines]
    truth = np.stack([transform_points(a, truth_src) for a in affines])  # [T, 5, 2]

    per_frame = []

    def detect(batch):
        found = detect_faces(batch, detector="mtcnn")
        per_frame.append(found)
        return found

    out = list(stream_frames(frames, detect, batch=8, sigma=3.0))
    assert [f.index for f in out] == list(range(frames_n))
    assert all(f.track_ids == (0,) and f.observed == (True,) for f in out)

    def jitter(landmarks):
        """std over frames of the true eyes' positions in the 512 crop the landmarks align to."""
        affine = alignment_affines(torch.as_tensor(landmarks, dtype=torch.float64), 512)[0].numpy()
        eyes = np.einsum("nij,nkj->nki", affine[:, :, :2], truth[:, :2]) + affine[:, None, :, 2]
        return float(np.sqrt(eyes.var(axis=0).sum(axis=-1).mean()))

    detected = torch.cat([f.landmarks for f in per_frame]).numpy()
    smoothed = torch.cat([f.faces.landmarks for f in out]).numpy()
    assert jitter(smoothed) < jitter(detected)
    assert np.abs(smoothed - detected).max() < 3.0

    image = out[5].payload
    crops, faces = align_faces(image, out[5].faces, size=128)
    pasted = paste_faces(image, crops, faces)
    assert crops.shape == (1, 128, 128, 3) and pasted.shape == image.shape
    assert (DATA / "grace_hopper.jpg").is_file()
