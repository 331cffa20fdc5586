"""facexlib RetinaFace from local folders only: found in a ComfyUI-style folder, loaded with
weights_only, never downloaded; missing / corrupt / wrong files give messages that say where
it looked and what is wrong. The checkpoint is written by the test in the real format (facexlib's
own state-dict keys, DataParallel "module." prefix, random weights)."""

import socket

import pytest
import torch

from face_fixtures import load_portrait
from lafr_core.face import detect_faces, resolve_detector
from lafr_core.face.errors import DetectorWeightsError
from lafr_core.face.retinaface import anchors, decode, find_retinaface_weights, load_retinaface


def write_real_format_checkpoint(path, network="mobile0.25", seed=0):
    retinaface = pytest.importorskip("facexlib.detection.retinaface")
    torch.manual_seed(seed)
    model = retinaface.RetinaFace(network_name=network, half=False, device=torch.device("cpu"))
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save(state, path)
    return model


def test_missing_weights_name_the_file_and_every_folder(comfy_home):
    with pytest.raises(DetectorWeightsError) as info:
        find_retinaface_weights("resnet50")
    message = str(info.value)
    assert "detection_Resnet50_Final.pth not found" in message
    assert str(comfy_home) in message
    assert "stable-diffusion-webui/models/GFPGAN" in message
    assert "detector='mtcnn'" in message
    assert resolve_detector("auto") == "mtcnn"  # auto falls back to the bundled detector


def test_loads_real_format_file_from_comfyui_folder_without_network(comfy_home, monkeypatch):
    reference = write_real_format_checkpoint(comfy_home / "detection_mobilenet0.25_Final.pth")

    def no_network(*args, **kwargs):
        raise AssertionError("RetinaFace tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model = load_retinaface("mobile0.25")
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # detection runs end to end through the public API (random weights: any count is fine)
    image = load_portrait("astronaut.png")[:, :256, :256]
    faces = detect_faces(image, detector="retinaface_mobile0.25", threshold=0.5)
    assert faces.detector == "retinaface_mobile0.25" and faces.landmarks.shape[1:] == (5, 2)


def test_batched_decoding_matches_facexlib(comfy_home):
    """Our vectorised anchors/decoding equal facexlib's PriorBox + decode for the same outputs."""
    utils = pytest.importorskip("facexlib.detection.retinaface_utils")
    from facexlib.detection.retinaface import generate_config

    write_real_format_checkpoint(comfy_home / "detection_mobilenet0.25_Final.pth", seed=1)
    model = load_retinaface("mobile0.25")
    h, w = 96, 160
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        loc, conf, landm = model(x)
    cfg = generate_config("mobile0.25")
    priors = utils.PriorBox(cfg, image_size=(h, w)).forward()
    ours_priors = anchors(h, w, torch.device("cpu"))
    assert torch.allclose(ours_priors, priors, atol=1e-6)
    boxes, points = decode(loc, landm, ours_priors, h, w)
    ref_boxes = utils.decode(loc[0], priors, cfg["variance"]) * torch.tensor([w, h, w, h])
    ref_points = utils.decode_landm(landm[0], priors, cfg["variance"]) * torch.tensor([w, h] * 5)
    assert torch.allclose(boxes[0], ref_boxes, atol=1e-3)
    assert torch.allclose(points[0].flatten(1), ref_points, atol=1e-3)


def test_auto_prefers_retinaface_when_its_weights_are_here(comfy_home):
    pytest.importorskip("facexlib.detection.retinaface")
    (comfy_home / "detection_Resnet50_Final.pth").write_bytes(b"placeholder: found, not loaded")
    assert resolve_detector("auto") == "retinaface_resnet50"


def test_corrupt_wrong_and_unsafe_files_are_refused(comfy_home, tmp_path):
    pytest.importorskip("facexlib.detection.retinaface")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DetectorWeightsError, match="corrupt.pth are unreadable or corrupt"):
        load_retinaface("mobile0.25", weights=corrupt)
    wrong = tmp_path / "mobile_for_resnet.pth"
    write_real_format_checkpoint(wrong)
    with pytest.raises(DetectorWeightsError, match=r"does not fit RetinaFace resnet50: .* missing keys"):
        load_retinaface("resnet50", weights=wrong)

    class Payload:  # an arbitrary pickled object: weights_only=True must refuse to build it
        def __reduce__(self):
            return (print, ("executed",))

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"body.x": Payload()}, unsafe)
    with pytest.raises(DetectorWeightsError, match="unsafe.pth are unreadable or corrupt"):
        load_retinaface("mobile0.25", weights=unsafe)


def test_explicit_folder_is_searched_for_the_file_name(tmp_path):
    with pytest.raises(DetectorWeightsError, match=r"detection_mobilenet0.25_Final.pth not found"):
        find_retinaface_weights("mobile0.25", tmp_path)
    (tmp_path / "detection_mobilenet0.25_Final.pth").write_bytes(b"x")
    assert find_retinaface_weights("mobile0.25", tmp_path) == tmp_path / "detection_mobilenet0.25_Final.pth"


def test_doctor_reports_the_detectors_it_finds(comfy_home):
    from lafr_core.doctor import face_detector_rows

    (comfy_home / "detection_mobilenet0.25_Final.pth").write_bytes(b"x")
    rows = "\n".join(face_detector_rows())
    assert "mtcnn: ok, bundled" in rows
    assert f"retinaface_mobile0.25: {comfy_home / 'detection_mobilenet0.25_Final.pth'}" in rows
    assert "retinaface_resnet50: detection_Resnet50_Final.pth not found" in rows
    assert "auto picks: mtcnn" in rows
    assert "parsenet paste mask: parsing_parsenet.pth not found" in rows
