"""The frontend extension's drawing logic runs under node's own test runner (tests/web/)."""

import os
import shutil
import subprocess

import pytest

from test_video_nodes import pack  # noqa: F401 (fixture: the pack loaded as ComfyUI loads it)

from conftest import REPO

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None and not os.environ.get("CI"), reason="node.js is not installed")
def test_web_drawing_logic_under_node_test_runner():
    assert NODE is not None, "CI must have node.js to test web/"
    out = subprocess.run([NODE, "--test", "tests/web/"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "# fail 0" in out.stdout and "# pass 0" not in out.stdout


def test_extension_files_are_plain_es_modules_without_network():
    for path in (REPO / "web").glob("*.js"):
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, f"{path.name} must not reach the network"
        assert "require(" not in text, f"{path.name} must be an ES module"
    extension = (REPO / "web" / "lafr_extension.js").read_text()
    assert 'from "../../scripts/app.js"' in extension and "app.registerExtension" in extension


@pytest.mark.skipif(NODE is None and not os.environ.get("CI"), reason="node.js is not installed")
def test_identity_ui_the_server_sends_is_what_the_view_draws(pack):
    """nodes/ui_preview.py's lafr_identity records, through JSON, into web/lafr_view.js: the view
    finds them for the first pair, labels each face with its distance and flags the one that is
    not under dlib's 0.6 (what a user sees under each face box)."""
    import importlib
    import json

    import torch

    face_identity, ui_preview, face = (importlib.import_module(f"{pack.__name__}.{name}")
                                       for name in ("lafr_core.face_identity", "nodes.ui_preview", "lafr_core.face"))
    faces = face.FaceSet(image_index=torch.tensor([0, 0, 1]), boxes=torch.tensor([[10.0, 20, 50, 60], [60, 20, 90, 50], [0, 0, 8, 8]]),
                              scores=torch.ones(3), landmarks=torch.zeros(3, 5, 2), image_sizes=((100, 200), (100, 200)))
    report = face_identity.IdentityReport("dlib ResNet descriptor", "same person < 0.6", 0.6, (0, 1, 2), (0.21344, 0.71, 0.05))
    output = json.loads(json.dumps({"lafr_identity": ui_preview.identity_records(faces, report, 2)}))
    script = (
        "import { identityFor, identityShapes } from './web/lafr_view.js';\n"
        f"const output = {json.dumps(output)};\n"
        "const record = identityFor(output, 0);\n"
        "const shapes = identityShapes(record, { x: 0, y: 0, w: 100, h: 50 });\n"
        "console.log(JSON.stringify(shapes));\n"
    )
    out = subprocess.run([NODE, "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shapes = json.loads(out.stdout)
    assert [f["label"] for f in shapes["faces"]] == ["ID 0.21", "ID 0.71"]  # image 0's two faces, not image 1's
    assert [f["far"] for f in shapes["faces"]] == [False, True]
    assert shapes["faces"][0]["box"] == {"x": 5, "y": 10, "w": 20, "h": 20}  # 200 px wide image drawn 100 wide
    assert shapes["caption"] == "ID input->output: dlib ResNet descriptor, same person < 0.6"


def test_split_view_draws_the_identity_layer():
    extension = (REPO / "web" / "lafr_extension.js").read_text()
    for name in ("identityFor", "identityShapes", "drawIdentity"):
        assert name in extension, f"lafr_extension.js must use {name} from lafr_view.js"
