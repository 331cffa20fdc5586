"""Each face's identity distance input -> output in the ComfyUI restore nodes' ui and log, with
the real dlib model on the real test portraits, the nodes run as ComfyUI calls them (the fake
host of test_video_nodes: CPU, a deterministic stand-in restorer).

What a user would notice: the numbers the before/after view shows are the distances
lafr_core.identity gives for the same crops (and land on the right face of the right image); an
output equal to the input reads ~0; without any identity model the view gets no numbers, the
images are the same and the run costs no measurable extra; an ArcFace recognizer in
models/insightface is preferred; a broken one is skipped for dlib with one log line."""

from __future__ import annotations

import logging
import sys
import time

import pytest
import torch

from face_fixtures import load_portrait
from test_identity import TinyArcFace, export
from test_video_nodes import DETECT, PACK, PASTE, host, pack  # noqa: F401 (fixtures)

from lafr_core.identity import dlib_problem

needs_dlib = pytest.mark.skipif(dlib_problem() is not None, reason=f"identity extra not installed: {dlib_problem()}")


@pytest.fixture(scope="module")
def portraits() -> torch.Tensor:
    """Two 512x512 photos, one face each (MTCNN finds the astronaut in image 0, Grace Hopper in 1)."""
    return torch.cat([load_portrait("astronaut.png"), load_portrait("grace_hopper.jpg")[:, :512]])


class SameVAE:
    """A stand-in VAE whose round trip gives the crops back exactly: 'restored' == input."""

    def encode(self, crops):
        chw = crops.movedim(-1, 1)
        return torch.cat([chw, torch.zeros_like(chw[:, :1])], dim=1)

    def decode(self, raw):
        return raw[:, :3].movedim(1, -1)


def ours(name: str):
    return sys.modules[f"{PACK}.{name}"]


@pytest.fixture
def no_arcface(pack, monkeypatch):
    """No ArcFace anywhere: no $LAFR_ARCFACE, an empty models/insightface, fresh 'told once' memory."""
    monkeypatch.delenv("LAFR_ARCFACE", raising=False)
    monkeypatch.setattr(ours("nodes.ui_preview"), "insightface_folders", lambda: [])
    monkeypatch.setattr(ours("lafr_core.face_identity"), "_TOLD", set())


def restore(pack, vae, weights, image, **extra):
    node = pack.NODE_CLASS_MAPPINGS["LAFRRestoreFaces"]()
    return node.restore(image, None, vae, weights, **DETECT, **PASTE, **extra)


def node_crops(pack, image):
    """The aligned crops the nodes restore (Face Detect & Align's output) and their FaceSet."""
    crops, faces, count = pack.NODE_CLASS_MAPPINGS["LAFRFaceDetectAlign"]().detect(image, **DETECT)["result"]
    return crops, faces, count


def shown_distances(ui) -> list[float]:
    return [face["distance"] for record in ui["lafr_identity"] for face in record["faces"]]


@needs_dlib
def test_restore_faces_reports_dlib_distances_equal_to_lafr_core_identity(pack, host, no_arcface, portraits, caplog):
    vae, weights = host
    with caplog.at_level(logging.INFO, logger="ComfyUI-LAFR"):
        out = restore(pack, vae, weights, portraits)
    restored = out["result"][1]
    crops, faces, count = node_crops(pack, portraits)
    assert count == 2 and restored.shape == crops.shape == (2, 512, 512, 3)

    direct = ours("lafr_core.identity").DlibIdentity().distances(crops, restored)
    records = out["ui"]["lafr_identity"]
    assert len(records) == len(out["ui"]["lafr_before"]) == 2  # one per before/after pair
    for image, record in enumerate(records):
        assert (record["width"], record["height"]) == (512, 512)
        assert record["model"] == "dlib ResNet descriptor" and record["threshold"] == 0.6 and record["legend"] == "same person < 0.6"
        (face,) = record["faces"]  # each photo's own face, at its detected box
        assert face["index"] == image and face["box"] == pytest.approx(faces.boxes[image].tolist(), abs=0.01)
    assert shown_distances(out["ui"]) == pytest.approx(direct.tolist(), abs=1e-4)
    # the stand-in's 8x8 cell blur keeps each person (dlib < 0.6) but is measurably not the input
    assert all(0.05 < d < 0.6 for d in shown_distances(out["ui"])), shown_distances(out["ui"])
    lines = [r.getMessage() for r in caplog.records if "identity distance" in r.getMessage()]
    expected = ", ".join(f"{d:.2f}" for d in direct.tolist())
    assert lines == [f"LAFR: identity distance input->output (dlib ResNet descriptor, same person < 0.6): {expected}"]


@needs_dlib
def test_identical_output_reads_zero_and_paste_back_measures_the_same_faces(pack, host, no_arcface, portraits):
    vae, weights = host
    same = restore(pack, SameVAE(), weights, portraits)
    assert shown_distances(same["ui"]) == pytest.approx([0.0, 0.0], abs=1e-6)

    # Face Paste Back gets only the FaceSet: it cuts the input crops again from the image, and
    # reports what Restore Faces reports for the same restored crops
    crops, faces, _ = node_crops(pack, portraits)
    paste = pack.NODE_CLASS_MAPPINGS["LAFRFacePasteBack"]()
    args = {k: PASTE[k] for k in ("strength", "colour_correction", "feather")}
    assert shown_distances(paste.paste(portraits, crops, faces, **args)["ui"]) == pytest.approx([0.0, 0.0], abs=1e-6)
    blurred = restore(pack, vae, weights, portraits)
    pasted = paste.paste(portraits, blurred["result"][1], faces, **args)
    assert shown_distances(pasted["ui"]) == pytest.approx(shown_distances(blurred["ui"]), abs=1e-4)
    assert pasted["ui"]["lafr_identity"][1]["faces"][0]["box"] == blurred["ui"]["lafr_identity"][1]["faces"][0]["box"]


def test_without_a_model_no_distances_same_images_one_log_line(pack, host, no_arcface, portraits, monkeypatch, caplog):
    vae, weights = host
    face_identity = ours("lafr_core.face_identity")

    def refuse():
        raise AssertionError("no model may be loaded when none is installed")

    with monkeypatch.context() as m, caplog.at_level(logging.INFO, logger="ComfyUI-LAFR"):
        m.setattr(face_identity, "dlib_problem", lambda: "dlib is not installed: pip install face_recognition_models dlib-bin")
        m.setattr(face_identity, "DlibIdentity", refuse)
        first, second = restore(pack, vae, weights, portraits), restore(pack, vae, weights, portraits)
    for out in (first, second):
        assert out["ui"]["lafr_identity"] == [] and len(out["ui"]["lafr_before"]) == 2
    notices = [r.getMessage() for r in caplog.records if "identity" in r.getMessage()]
    assert notices == [f"LAFR: {face_identity.NO_MODEL}"]  # once per process, not per run

    if dlib_problem() is None:  # the same run with the model available gives the same images
        measured = restore(pack, vae, weights, portraits)
        assert len(measured["ui"]["lafr_identity"]) == 2
        assert torch.equal(measured["result"][0], first["result"][0]) and torch.equal(measured["result"][1], first["result"][1])
        assert measured["result"][2] == first["result"][2] == 2


def test_no_model_check_costs_well_under_a_millisecond_per_run(pack, monkeypatch, tmp_path):
    """What a run pays when nothing is installed: models/insightface checked, dlib's import spec
    looked up (dlib hidden the way test_identity hides it), no import, no model."""
    face_identity, identity = ours("lafr_core.face_identity"), ours("lafr_core.identity")
    real = identity.importlib.util.find_spec
    monkeypatch.setattr(identity.importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    monkeypatch.delenv("LAFR_ARCFACE", raising=False)
    monkeypatch.setattr(face_identity, "_TOLD", set())
    folders = [tmp_path / "models" / "insightface"]
    start = time.perf_counter()
    for _ in range(100):
        assert face_identity.host_identity_model(folders) is None
    per_call = (time.perf_counter() - start) / 100
    print(f"\nno identity model: {per_call * 1e6:.0f} us per run")
    assert per_call < 0.001


@needs_dlib
def test_broken_arcface_in_models_insightface_falls_back_to_dlib_with_one_line(pack, host, no_arcface, portraits, tmp_path, monkeypatch, caplog):
    vae, weights = host
    folder = tmp_path / "insightface" / "buffalo_l"
    folder.mkdir(parents=True)
    (folder / "w600k_r50.onnx").write_bytes(b"not an onnx graph")  # a truncated download
    monkeypatch.setattr(ours("nodes.ui_preview"), "insightface_folders", lambda: [str(tmp_path / "insightface")])
    with caplog.at_level(logging.INFO, logger="ComfyUI-LAFR"):
        runs = [restore(pack, vae, weights, portraits) for _ in range(2)]
    assert all(run["ui"]["lafr_identity"][0]["model"] == "dlib ResNet descriptor" for run in runs)
    skipped = [r.getMessage() for r in caplog.records if "identity model skipped" in r.getMessage()]
    assert len(skipped) == 1 and "w600k_r50.onnx" in skipped[0]


def test_arcface_in_comfyui_models_insightface_is_used(pack, host, portraits, tmp_path, monkeypatch):
    """The node layer passes ComfyUI's models/insightface (and extra_model_paths' "insightface");
    an ArcFace-signature recognizer there wins over dlib, numbers in degrees, no threshold."""
    pytest.importorskip("onnxruntime")
    vae, weights = host
    folder = tmp_path / "extra_insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    path = export(TinyArcFace().eval(), folder / "w600k_r50.onnx", (torch.zeros(2, 3, 112, 112),), ["input.1"])
    monkeypatch.delenv("LAFR_ARCFACE", raising=False)
    monkeypatch.setitem(sys.modules["folder_paths"].folder_names_and_paths, "insightface", ([str(tmp_path / "extra_insightface")], set()))
    assert str(tmp_path / "extra_insightface") in ours("nodes.ui_preview").insightface_folders()
    out = restore(pack, vae, weights, portraits)
    crops, _, _ = node_crops(pack, portraits)
    direct = ours("lafr_core.identity").ArcFaceOnnx(path).distances(crops, out["result"][1])
    record = out["ui"]["lafr_identity"][0]
    assert record["model"] == "ArcFace w600k_r50.onnx" and record["threshold"] is None and record["legend"] == "angle in degrees"
    assert shown_distances(out["ui"]) == pytest.approx(direct.tolist(), abs=1e-3)


class MeanColour:
    """An identity model stand-in for the selection logic: the crop's mean colour, L1 apart."""

    name, threshold, unit = "mean colour", None, "L1 of mean RGB"

    def distances(self, a, b):
        return (a.mean(dim=(1, 2)) - b.mean(dim=(1, 2))).abs().sum(dim=-1)


def test_only_the_previewed_images_faces_are_measured(pack, monkeypatch, caplog):
    """A 12-photo batch measures the faces of the 8 images the preview saves, in FaceSet order,
    one ui record per previewed image; a 12-frame clip (faces with track ids) only the first
    frame's (the same people follow, and every face costs two descriptor passes)."""
    from lafr_core.face import FaceSet

    face_identity, ui_preview = ours("lafr_core.face_identity"), ours("nodes.ui_preview")
    n = 12
    faces = FaceSet(image_index=torch.arange(n), boxes=torch.tensor([[10.0, 10, 50, 50]]).repeat(n, 1), scores=torch.ones(n),
                    landmarks=torch.zeros(n, 5, 2), image_sizes=((64, 96),) * n)
    crops = torch.zeros(n, 16, 16, 3)
    restored = torch.linspace(0, 1, n)[:, None, None, None].expand(n, 16, 16, 3)
    report = face_identity.measure_faces(MeanColour(), faces, restored, crops, max_images=ui_preview.MAX_PREVIEW_IMAGES)
    assert report.face_index == tuple(range(8))
    assert report.distances == pytest.approx((torch.linspace(0, 1, n)[:8] * 3).tolist())
    with pytest.raises(ValueError, match="3 restored crops for 12 faces"):
        face_identity.measure_faces(MeanColour(), faces, restored[:3], crops)

    monkeypatch.setattr(ui_preview, "host_identity_model", lambda folders, notify: MeanColour())
    monkeypatch.setattr(ui_preview, "insightface_folders", lambda: [])
    images = torch.zeros(n, 64, 96, 3)
    with caplog.at_level(logging.INFO, logger="ComfyUI-LAFR"):
        photos = ui_preview.face_identity(images, faces, crops, restored)
        frames = ui_preview.face_identity(images, faces.with_track_ids(torch.zeros(n, dtype=torch.long)), crops, restored)
    assert len(photos) == 8 and [r["faces"][0]["index"] for r in photos] == list(range(8))
    assert photos[0]["width"] == 96 and photos[0]["height"] == 64 and photos[0]["faces"][0]["box"] == [10, 10, 50, 50]
    assert len(frames) == 1 and frames[0]["faces"][0]["distance"] == 0
    assert [r.getMessage().split(": ", 2)[-1] for r in caplog.records] == [
        "0.00, 0.27, 0.55, 0.82, 1.09, 1.36, 1.64, 1.91 (faces of the first 8 images)", "0.00 (the first frame's faces)"]


def test_face_identity_imports_no_identity_backend():
    """lafr_core.face_identity (imported by the nodes) imports neither dlib nor onnxruntime: they load on the first
    measurement, and only when installed."""
    from test_host_free_imports import run_blocked

    out = run_blocked(
        "import lafr_core.face_identity\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dlib', 'onnxruntime', 'onnx', 'face_recognition_models'}))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
