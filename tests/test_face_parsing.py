"""Paste masks other than the landmark ellipse: crop-space mask tensors and facexlib's ParseNet,
whose weights come only from local folders (the test writes a real-format file, random weights)."""

import pytest
import torch

from face_fixtures import load_portrait, psnr
from lafr_core.face import align_faces, detect_faces, paste_faces
from lafr_core.face.errors import DetectorWeightsError
from lafr_core.face.parsing import FACE_CLASSES, face_mask_from_logits, find_parsenet_weights


@pytest.fixture(scope="module")
def astronaut():
    image = load_portrait("astronaut.png")
    crops, faces = align_faces(image, detect_faces(image, detector="mtcnn"))
    return image, crops, faces


def test_parse_labels_become_a_soft_face_mask():
    logits = torch.zeros(1, 19, 512, 512)
    logits[:, 0] = 1  # background everywhere...
    logits[:, 1, 150:400, 150:350] = 5  # ...skin in the middle
    logits[:, 17, 60:150, 150:350] = 5  # hair above it (not face)
    mask = face_mask_from_logits(logits, 256)
    assert mask.shape == (1, 256, 256) and 0 <= float(mask.min()) and float(mask.max()) <= 1
    assert mask[0, 137, 125] > 0.95  # centre of the skin block (at half size)
    assert mask[0, 50, 125] < 0.05 and mask[0, 5, 5] == 0  # hair and the crop's border stay the photo's
    assert 1 in FACE_CLASSES and 17 not in FACE_CLASSES


def test_mask_tensor_decides_where_the_crop_goes(astronaut):
    image, crops, faces = astronaut
    white = torch.ones_like(crops)
    nothing = paste_faces(image, white, faces, mask=torch.zeros(1, 512, 512))
    assert torch.equal(nothing, image)
    square = torch.zeros(1, 512, 512)
    square[:, 128:384, 128:384] = 1
    out = paste_faces(image, white, faces, mask=square)
    centre = torch.tensor([255.5, 255.5, 1.0], dtype=torch.float64)
    x, y = (faces.inverses[0] @ centre).round().long().tolist()
    assert torch.allclose(out[0, y, x], torch.ones(3), atol=1e-3)
    corner = (faces.inverses[0] @ torch.tensor([20.0, 20.0, 1.0], dtype=torch.float64)).round().long().tolist()
    assert torch.equal(out[0, corner[1], corner[0]], image[0, corner[1], corner[0]])
    # unmodified crops with a full mask still give the photo back
    full = paste_faces(image, crops, faces, mask=torch.ones(1, 512, 512))
    x1, y1, x2, y2 = faces.boxes[0].round().long().tolist()
    assert psnr(full[0, y1:y2, x1:x2], image[0, y1:y2, x1:x2]) > 40
    with pytest.raises(ValueError, match=r"mask tensor must be \[1, 512, 512\]"):
        paste_faces(image, crops, faces, mask=torch.ones(2, 512, 512))
    with pytest.raises(ValueError, match="mask must be one of landmarks, parsenet"):
        paste_faces(image, crops, faces, mask="box")


def test_missing_parsenet_weights_name_file_and_folders(comfy_home, astronaut):
    with pytest.raises(DetectorWeightsError, match=r"parsing_parsenet.pth not found") as info:
        find_parsenet_weights()
    assert str(comfy_home) in str(info.value) and "mask='landmarks'" in str(info.value)
    image, crops, faces = astronaut
    with pytest.raises(DetectorWeightsError, match="parsing_parsenet.pth not found"):
        paste_faces(image, crops, faces, mask="parsenet")


def test_parsenet_mask_from_a_real_format_file(comfy_home, astronaut):
    parsenet = pytest.importorskip("facexlib.parsing.parsenet")
    torch.manual_seed(0)
    model = parsenet.ParseNet(in_size=512, out_size=512, parsing_ch=19)
    torch.save(model.state_dict(), comfy_home / "parsing_parsenet.pth")
    image, crops, faces = astronaut
    out = paste_faces(image, torch.ones_like(crops), faces, mask="parsenet")
    assert out.shape == image.shape and torch.isfinite(out).all()
    far = out[0, 350:, :]  # far below the face: untouched whatever random weights parse
    assert torch.equal(far, image[0, 350:, :])
    (comfy_home / "parsing_parsenet.pth").write_bytes(b"garbage")
    with pytest.raises(DetectorWeightsError, match="ParseNet weights .* are unreadable or corrupt"):
        paste_faces(image, crops, faces, mask="parsenet")
