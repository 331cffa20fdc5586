"""host_chain.restore_images with faces given (video's temporal mode): the crops and the paste
follow the given landmarks, not a fresh detection."""

import pytest
import torch

from lafr_core.face import align_faces, detect_faces
from lafr_core.host_chain import FaceOptions, HostModel, restore_images
from lafr_core.lafr_file import LafrWeights
from tests.face_fixtures import load_portrait


def _grey_host() -> HostModel:
    """A restorer stand-in: every restored crop is mid grey, so where it lands shows the paste."""
    return HostModel(
        encode=lambda crops: torch.zeros(crops.shape[0], 4, crops.shape[1] // 8, crops.shape[2] // 8),
        denoise=lambda z: z,
        decode=lambda raw: torch.full((raw.shape[0], raw.shape[2] * 8, raw.shape[3] * 8, 3), 0.5),
        device=torch.device("cpu"),
    )


def _weights() -> LafrWeights:
    return LafrWeights(aligner=None, kohya_lora=None, prompt_embeds=torch.zeros(1, 77, 1024))


def test_given_faces_are_used_instead_of_a_detection():
    image = load_portrait("astronaut.png")
    detected = detect_faces(image, detector="mtcnn")
    assert len(detected) == 1
    own = restore_images(image, _weights(), _grey_host(), FaceOptions(detector="mtcnn"))
    given = restore_images(image, _weights(), _grey_host(), FaceOptions(detector="mtcnn"), faces=detected)
    assert torch.equal(own.images, given.images)

    moved = detected.__class__(**{**detected.__dict__, "landmarks": detected.landmarks + 40.0, "boxes": detected.boxes + 40.0})
    shifted = restore_images(image, _weights(), _grey_host(), FaceOptions(detector="mtcnn"), faces=moved)
    expected_crops, _ = align_faces(image, moved)
    assert torch.allclose(shifted.crops, expected_crops)
    assert (shifted.images - own.images).abs().max() > 0.1  # the grey face landed 40 px lower-right


def test_faces_for_another_batch_size_are_refused():
    image = load_portrait("astronaut.png")
    faces = detect_faces(image, detector="mtcnn")
    with pytest.raises(ValueError, match="faces given are for 1 images, the batch has 2"):
        restore_images(image.repeat(2, 1, 1, 1), _weights(), _grey_host(), faces=faces)
