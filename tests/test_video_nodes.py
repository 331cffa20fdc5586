"""The ComfyUI nodes in temporal mode, without ComfyUI: the node classes run as ComfyUI calls
them, with comfy_host's few ComfyUI calls (devices, interrupt, progress bar, the patched UNet
and VAE) replaced by a deterministic stand-in restorer, on a shaken, noisy, JPEG'd clip of a
real photo (the bundled MTCNN finds the faces).

What a user would notice: temporal=True steadies the aligned crops (the true eyes move far less
in crop pixels than with per-frame detection), Restore Faces gives exactly what
restore_images(..., faces=temporal_faces(...)) gives on the whole batch, the faces carry track
ids to Face Paste Back and the overlay, and a workflow saved before these inputs existed (no
temporal values, or None) runs as before."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent / "host"))
from comfy_support import load_pack  # noqa: E402
from face_fixtures import HAND_LANDMARKS, load_portrait  # noqa: E402
from video_fixtures import degrade, render, shake_path, similarity, transform_points

FRAMES, SIZE = 24, (192, 192)
PACK = "ComfyUI_LAFR_under_test"


@pytest.fixture(scope="module")
def clip():
    """(frames [F, H, W, 3], true landmarks [F, 5, 2]): Grace Hopper at 0.45x with a known
    hand-held sway (up to 2 px, periods 60..180 frames: bench_video's "still" clip), then sensor
    noise and JPEG on every frame, so each frame's detection jitters on its own."""
    source = load_portrait("grace_hopper.jpg")[0].numpy()
    truth_src = np.array(HAND_LANDMARKS["grace_hopper.jpg"], dtype=np.float64)
    shake = shake_path(FRAMES, amplitude=2.0, seed=1, min_period=60, max_period=180)
    rng = np.random.default_rng(0)
    affines = [similarity(0.45, truth_src.mean(axis=0), (96 + shake[t, 0], 100 + shake[t, 1])) for t in range(FRAMES)]
    frames = torch.stack([torch.from_numpy(degrade(render([(source, a, False)], SIZE), rng)) for a in affines])
    return frames, np.stack([transform_points(a, truth_src) for a in affines])


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    stub = types.ModuleType("folder_paths")  # the previews go to ComfyUI's temp folder
    stub.get_filename_list = lambda name: []
    stub.folder_names_and_paths, stub.models_dir = {}, str(tmp_path_factory.mktemp("models"))
    temp = tmp_path_factory.mktemp("temp")
    stub.get_temp_directory = lambda: str(temp)
    ours = "folder_paths" not in sys.modules
    sys.modules.setdefault("folder_paths", stub)
    yield load_pack(PACK)
    if ours:
        del sys.modules["folder_paths"]


@pytest.fixture
def host(pack, monkeypatch):
    """comfy_host without ComfyUI: CPU, no interrupt, no progress bar, and a stand-in restorer
    through the chain's three host functions: the crop averaged over 8x8 cells (encode), kept
    (denoise), blown up again (decode): deterministic, one face at a time, and it moves with the
    crop as a restorer's output does."""
    comfy_host = sys.modules[f"{PACK}.nodes.comfy_host"]

    class VAE:
        def encode(self, crops):
            cells = F.avg_pool2d(crops.movedim(-1, 1), 8)
            return torch.cat([cells, torch.zeros_like(cells[:, :1])], dim=1)

        def decode(self, raw):
            return F.interpolate(raw[:, :3], scale_factor=8, mode="nearest").movedim(1, -1)

    class UNet:
        def __init__(self, model, weights, strength, node):
            pass

        def denoise(self, z):
            return z

    cpu = torch.device("cpu")
    for name, value in {
        "compute_device": lambda: cpu, "intermediate_device": lambda: cpu, "check_interrupt": lambda: None,
        "Progress": lambda total: (lambda done: None), "PatchedUNet": UNet, "vae_with_encoder_lora": lambda vae, weights, node: vae,
        "with_conditioning": lambda weights, conditioning, node: weights, "oom_errors": lambda: (torch.cuda.OutOfMemoryError,),
        "free_memory_after_oom": lambda chunk: None,
    }.items():
        monkeypatch.setattr(comfy_host, name, value)
    lafr_file = sys.modules[f"{PACK}.lafr_core.lafr_file"]
    return VAE(), lafr_file.LafrWeights(aligner=None, kohya_lora=None, prompt_embeds=torch.zeros(1, 77, 1024))


DETECT = dict(detector="mtcnn", threshold=0.0, min_size=20, select="all")
PASTE = dict(strength=1.0, colour_correction="none", feather=0.3, lora_strength=1.0)


def eye_jitter(faces, truth: np.ndarray) -> tuple[float, float]:
    """The TRUE eye centres in the crops the faces were aligned to (crop pixels; the true motion
    moves the face and a perfect crop together, so only the crop's own shake counts): (std over
    frames, sqrt(var_x + var_y); frame to frame, RMS step / sqrt 2: what flickers), mean over
    both eyes; bench/bench_video.py's measures."""
    affine = faces.affines.double().numpy()  # [F, 2, 3] image -> crop
    eyes = np.einsum("nij,nkj->nki", affine[:, :, :2], truth[:, :2]) + affine[:, None, :, 2]
    std = np.sqrt(eyes.var(axis=0).sum(axis=-1)).mean()
    step = np.sqrt((np.diff(eyes, axis=0) ** 2).sum(axis=-1).mean(axis=0) / 2).mean()
    return float(std), float(step)


def test_temporal_detect_steadies_the_crops_and_carries_track_ids(pack, host, clip):
    frames, truth = clip
    node = pack.NODE_CLASS_MAPPINGS["LAFRFaceDetectAlign"]()
    per_frame = node.detect(frames, **DETECT)
    temporal = node.detect(frames, **DETECT, temporal=True, temporal_sigma=5.0, max_gap=5)
    (crops_pf, faces_pf, n_pf), (crops_t, faces_t, n_t) = per_frame["result"], temporal["result"]
    assert n_pf == n_t == FRAMES and crops_t.shape == (FRAMES, 512, 512, 3)
    assert faces_pf.track_ids is None and faces_t.track_ids.tolist() == [0] * FRAMES
    (std_pf, step_pf), (std_t, step_t) = eye_jitter(faces_pf, truth), eye_jitter(faces_t, truth)
    print(f"\neye jitter in the 512 crop, per-frame -> temporal: std {std_pf:.2f} -> {std_t:.2f} px ({std_pf / std_t:.1f}x), "
          f"frame to frame {step_pf:.2f} -> {step_t:.3f} px ({step_pf / step_t:.0f}x)")
    assert step_t < step_pf / 10 and std_t < std_pf / 2.5  # measured: 19x and 3.8x
    assert [f["track"] for image in temporal["ui"]["lafr_overlay"] for f in image["faces"]] == [0] * 8  # the first 8 previews

    paste = pack.NODE_CLASS_MAPPINGS["LAFRFacePasteBack"]()
    (out,) = paste.paste(frames, crops_t, faces_t, strength=1.0, colour_correction="lab", feather=0.3)["result"]
    assert out.shape == frames.shape and (out - frames).abs().max() < 0.2  # its own crops back: nearly the input

    def colour_flicker(crops, faces) -> float:
        """Mean |change| between frames of a flat grey face colour-corrected (lab) to each frame:
        the colour statistics' own flicker, 8-bit levels (mask and crop follow the landmarks)."""
        (pasted,) = paste.paste(frames, torch.full_like(crops, 0.5), faces, strength=1.0, colour_correction="lab", feather=0.3)["result"]
        inner = pasted[:, 84:116, 82:110].mean(dim=(1, 2)) * 255  # inside the face mask in every frame
        return float((inner[1:] - inner[:-1]).abs().mean())

    flicker_pf, flicker_t = colour_flicker(crops_pf, faces_pf), colour_flicker(crops_t, faces_t)
    print(f"lab colour-correction flicker, per-frame -> temporal: {flicker_pf:.3f} -> {flicker_t:.3f} levels")
    assert flicker_t < flicker_pf / 3 and flicker_t < 0.5


def test_temporal_restore_equals_restore_images_with_temporal_faces(pack, host, clip):
    frames, _ = clip
    vae, weights = host
    node = pack.NODE_CLASS_MAPPINGS["LAFRRestoreFaces"]()
    out, restored, count = node.restore(frames, None, vae, weights, **DETECT, **PASTE, temporal=True, temporal_sigma=5.0, max_gap=5)["result"]

    core = sys.modules[f"{PACK}.lafr_core.host_chain"]
    video = sys.modules[f"{PACK}.lafr_core.video"]
    face = sys.modules[f"{PACK}.lafr_core.face"]
    # the node detects 16 frames per call: the same calls here (one call on all 24 differs by ~1e-5 px: batch round-off)
    found = video.merge_frames([face.detect_faces(frames[i : i + 16], detector="mtcnn", select="all") for i in (0, 16)])
    smoothed, ids = video.temporal_faces(found, sigma=5.0, max_gap=5)
    host_model = core.HostModel(encode=vae.encode, denoise=lambda z: z, decode=vae.decode, device=torch.device("cpu"))
    direct = core.restore_images(frames, weights, host_model, core.FaceOptions(detector="mtcnn", min_size=20), faces=smoothed)
    assert count == len(smoothed) == FRAMES and ids.tolist() == [0] * FRAMES
    # the node restores 16 + 8 frames per restore_images call, all 24 in one call here: the same
    # crops and restored faces, the pasted frames to float round-off (the paste pads windows per call)
    assert torch.equal(restored, direct.restored)
    assert (out - direct.images).abs().max() < 1e-5
    assert (out - frames).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every frame's face was replaced


def test_a_workflow_saved_before_the_temporal_inputs_runs_per_frame(pack, host, clip):
    frames = clip[0][:4]
    vae, weights = host
    node = pack.NODE_CLASS_MAPPINGS["LAFRRestoreFaces"]()
    old = node.restore(frames, None, vae, weights, **DETECT, **PASTE)["result"]  # an old API prompt: the inputs absent
    nones = node.restore(frames, None, vae, weights, **DETECT, **PASTE, temporal=None, temporal_sigma=None, max_gap=None)["result"]
    off = node.restore(frames, None, vae, weights, **DETECT, **PASTE, temporal=False, temporal_sigma=5.0, max_gap=5)["result"]
    assert torch.equal(old[0], off[0]) and torch.equal(nones[0], off[0]) and old[2] == 4

    core = sys.modules[f"{PACK}.lafr_core.host_chain"]
    host_model = core.HostModel(encode=vae.encode, denoise=lambda z: z, decode=vae.decode, device=torch.device("cpu"))
    per_frame = core.restore_images(frames, weights, host_model, core.FaceOptions(detector="mtcnn", min_size=20))
    assert torch.equal(off[0], per_frame.images)

    detect = pack.NODE_CLASS_MAPPINGS["LAFRFaceDetectAlign"]()
    assert torch.equal(detect.detect(frames, **DETECT)["result"][0], detect.detect(frames, **DETECT, temporal=None)["result"][0])


def test_temporal_select_picks_tracks(pack, host, clip):
    frames = clip[0][:4]
    node = pack.NODE_CLASS_MAPPINGS["LAFRFaceDetectAlign"]()
    for select, expected in (("largest", 4), ("1", 0)):  # one face: track 0
        _, faces, count = node.detect(frames, **{**DETECT, "select": select}, temporal=True)["result"]
        assert count == expected, select
    with pytest.raises(ValueError, match="select takes 'all', 'largest' or face indices"):
        node.detect(frames, **{**DETECT, "select": "biggest"}, temporal=True)


def test_restore_faces_file_default_colour_is_the_files_own(pack, host, clip):
    """Restore Faces' default colour correction is the file's `lafr.colour_fix`: adain for an
    OSEDiff file (the same pixels as choosing adain), none for a LAFR file."""
    import dataclasses

    frames = clip[0][:2]
    vae, weights = host
    node = pack.NODE_CLASS_MAPPINGS["LAFRRestoreFaces"]()
    choices, spec = node.INPUT_TYPES()["required"]["colour_correction"]
    assert spec["default"] == "file default" and {"none", "lab", "wavelet", "adain"} < set(choices)
    osediff = dataclasses.replace(weights, meta={"lafr.engine": "osediff-face", "lafr.colour_fix": "adain"})

    def run(w, colour):
        return node.restore(frames, None, vae, w, **DETECT, **{**PASTE, "colour_correction": colour})["result"][0]

    assert torch.equal(run(osediff, "file default"), run(osediff, "adain"))
    assert not torch.equal(run(osediff, "file default"), run(osediff, "none"))
    assert torch.equal(run(weights, "file default"), run(weights, "none"))
