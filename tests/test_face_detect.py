"""Face detection on real photos with the bundled MTCNN: landmarks, several faces, none, tiny ones,
selection, batching, and errors that say what is wrong."""

import pytest
import torch
from safetensors.torch import save_file

from face_fixtures import CANVAS_FACES, HAND_LANDMARKS, PORTRAITS, Placed, compose_canvas, load_portrait
from lafr_core.face import FaceError, detect_faces, parse_select, select_faces
from lafr_core.face.errors import DetectorWeightsError
from lafr_core.face.mtcnn import load_mtcnn
from lafr_core.face.nms import batched_nms


def landmark_tolerance(landmarks: torch.Tensor) -> float:
    """'A few pixels': 3 px, or 5% of the eye distance for big faces."""
    return max(3.0, 0.05 * float((landmarks[1] - landmarks[0]).norm()))


@pytest.fixture(scope="module")
def canvas_faces():
    canvas = compose_canvas()
    return canvas, detect_faces(canvas, detector="mtcnn")


@pytest.mark.parametrize("name", PORTRAITS)
def test_mtcnn_landmarks_match_hand_checked_values(name):
    faces = detect_faces(load_portrait(name), detector="mtcnn")
    assert len(faces) == 1 and faces.counts() == [1] and faces.detector == "mtcnn"
    expected = torch.tensor(HAND_LANDMARKS[name], dtype=torch.float32)
    errors = (faces.landmarks[0] - expected).norm(dim=-1)
    assert errors.max() < 3.0, errors
    assert float(faces.scores[0]) > 0.99
    x1, y1, x2, y2 = faces.boxes[0].tolist()  # the box holds all five landmarks
    assert (x1 < expected[:, 0]).all() and (expected[:, 0] < x2).all() and (y1 < expected[:, 1]).all() and (expected[:, 1] < y2).all()


def test_canvas_with_faces_at_four_scales_finds_all(canvas_faces):
    _, faces = canvas_faces
    assert len(faces) == len(CANVAS_FACES) == 4
    for placed in CANVAS_FACES:
        expected = placed.landmarks()
        errors = (faces.landmarks - expected).norm(dim=-1).max(dim=-1).values
        assert errors.min() < landmark_tolerance(expected), (placed, errors)
    areas = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
    assert torch.all(areas[:-1] >= areas[1:]), "faces are sorted largest first"


@pytest.mark.parametrize("fill", ["grey", "black", "noise"])
def test_blank_image_finds_no_face_and_says_so(fill):
    gen = torch.Generator().manual_seed(0)
    image = {"grey": torch.full((1, 300, 400, 3), 0.5), "black": torch.zeros(1, 300, 400, 3),
             "noise": torch.rand(1, 300, 400, 3, generator=gen)}[fill]
    faces = detect_faces(image, detector="mtcnn")
    assert len(faces) == 0 and faces.counts() == [0] and faces.skipped_small == (0,)
    assert faces.image_sizes == ((300, 400),)
    assert faces.describe() == "0 faces in 1 image"


def test_tiny_faces_are_skipped_and_counted():
    canvas = compose_canvas([Placed("astronaut.png", 1.0, 20, 20), Placed("grace_hopper.jpg", 0.3, 300, 40)], size=(260, 420))
    everything = detect_faces(canvas, detector="mtcnn", min_size=0)
    assert len(everything) == 2
    small = float(everything.face_sizes().min())
    faces = detect_faces(canvas, detector="mtcnn", min_size=small + 1)
    assert len(faces) == 1 and faces.skipped_small == (1,)
    assert float(faces.face_sizes()[0]) > small + 1
    assert "1 too small skipped" in faces.describe()


def test_selection_all_largest_and_indices(canvas_faces):
    _, faces = canvas_faces
    largest = select_faces(faces, "largest")
    assert len(largest) == 1 and torch.equal(largest.boxes[0], faces.boxes[0])
    picked = select_faces(faces, [3, 1, 7])  # 7 does not exist: ignored
    assert torch.equal(picked.boxes, faces.boxes[[1, 3]])
    with pytest.raises(FaceError, match="'all', 'largest' or a list"):
        select_faces(faces, "biggest")
    with pytest.raises(FaceError, match="start at 0"):
        select_faces(faces, [-1])


def test_parse_select_reads_what_users_type(canvas_faces):
    """One parser for the node widget and --select: its results are select_faces' arguments."""
    _, faces = canvas_faces
    assert parse_select("") == parse_select(" ALL ") == "all"
    assert parse_select("Largest") == "largest"
    assert parse_select("3, 1,7,") == (3, 1, 7)
    assert torch.equal(select_faces(faces, parse_select("1,3")).boxes, faces.boxes[[1, 3]])
    with pytest.raises(FaceError, match=r"--select takes 'all', 'largest' or face indices like 0,2 .*got 'biggest'"):
        parse_select("biggest", name="--select")
    with pytest.raises(FaceError, match="start at 0"):  # syntax here, meaning in select_faces
        select_faces(faces, parse_select("-1"))


def test_batch_detection_equals_one_image_at_a_time():
    a, b = load_portrait("astronaut.png"), load_portrait("grace_hopper.jpg")[:, :512, :512]
    batch = detect_faces(torch.cat([a, b, torch.full_like(a, 0.5)]), detector="mtcnn")
    assert batch.counts() == [1, 1, 0] and batch.image_index.tolist() == [0, 1]
    for i, image in enumerate((a, b)):
        single = detect_faces(image, detector="mtcnn")
        assert torch.allclose(batch.landmarks[i], single.landmarks[0], atol=1e-3)
        assert torch.allclose(batch.boxes[i], single.boxes[0], atol=1e-3)


def test_grey_and_rgba_inputs_are_detected():
    rgb = load_portrait("astronaut.png")
    rgba = torch.cat([rgb, torch.rand(1, 512, 512, 1)], dim=-1)
    grey = (rgb * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    from_rgba = detect_faces(rgba, detector="mtcnn")
    assert torch.equal(from_rgba.landmarks, detect_faces(rgb, detector="mtcnn").landmarks)  # alpha ignored
    from_grey = detect_faces(grey, detector="mtcnn")
    expected = torch.tensor(HAND_LANDMARKS["astronaut.png"], dtype=torch.float32)
    assert len(from_grey) == 1 and (from_grey.landmarks[0] - expected).norm(dim=-1).max() < 4


def test_numpy_nms_matches_torchvision_and_min_mode():
    pytest.importorskip("torchvision")
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=gen) * 200
    boxes = torch.cat([xy, xy + 20 + torch.rand(300, 2, generator=gen) * 40], dim=1)
    scores = torch.rand(300, generator=gen)
    groups = torch.randint(0, 3, (300,), generator=gen)
    ours = batched_nms(boxes, scores, groups, 0.4, use_torchvision=False)
    theirs = batched_nms(boxes, scores, groups, 0.4, use_torchvision=True)
    assert ours.tolist() == theirs.tolist()
    nested = torch.tensor([[0.0, 0, 100, 100], [10, 10, 40, 40]])  # small box inside a big one
    assert batched_nms(nested, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long), 0.7).tolist() == [0, 1]
    assert batched_nms(nested, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long), 0.7, mode="min").tolist() == [0]


def test_corrupt_or_wrong_detector_weights_give_clear_errors(tmp_path):
    corrupt = tmp_path / "mtcnn.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DetectorWeightsError, match=r"mtcnn.safetensors are unreadable or corrupt"):
        load_mtcnn(str(corrupt))
    wrong = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(3)}, str(wrong))
    with pytest.raises(DetectorWeightsError, match="is not an MTCNN weights file"):
        detect_faces(load_portrait("astronaut.png"), detector="mtcnn", weights=wrong)
    with pytest.raises(DetectorWeightsError, match="MTCNN weights not found"):
        load_mtcnn(str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(1, 0, 64, 3), "zero-size image"),
        (torch.zeros(1, 64, 0, 3), "zero-size image"),
        (torch.zeros(1, 64, 64, 2), "1, 3 or 4 channels"),
        (torch.zeros(64, 64, 3), r"float tensor \[batch, height, width, channels\]"),
        (torch.zeros(1, 64, 64, 3, dtype=torch.uint8), "must be float 0..1"),
    ],
)
def test_bad_images_are_refused_with_the_reason(images, message):
    with pytest.raises(ValueError, match=message):
        detect_faces(images, detector="mtcnn")


def test_unknown_detector_and_bad_options():
    image = torch.zeros(1, 32, 32, 3)
    with pytest.raises(FaceError, match="detector must be one of auto, mtcnn"):
        detect_faces(image, detector="dlib")
    with pytest.raises(FaceError, match="threshold must be in"):
        detect_faces(image, detector="mtcnn", threshold=1.5)


def test_face_path_runs_without_diffusers_peft_or_torchvision():
    """The node path has torch but not diffusers/peft (DESIGN §6); torchvision is optional too."""
    import subprocess
    import sys

    from conftest import REPO

    code = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"diffusers", "peft", "transformers", "accelerate", "torchvision", "facexlib", "comfy", "modules", "gradio"}:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocker())
import torch
sys.path.insert(0, "tests")
from face_fixtures import load_portrait
from lafr_core.face import detect_faces, align_faces, paste_faces, detector_status
image = load_portrait("astronaut.png")
faces = detect_faces(image)  # auto -> mtcnn, NMS without torchvision
crops, faces = align_faces(image, faces)
out = paste_faces(image, crops, faces, colour_correction="lab")
print(faces.detector, len(faces), tuple(out.shape), "facexlib" in detector_status("retinaface_resnet50"))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["mtcnn", "1", "(1,", "512,", "512,", "3)", "True"]
