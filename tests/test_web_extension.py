"""The frontend extension's drawing logic runs under node's own test runner (tests/web/)."""

import os
import shutil
import subprocess

import pytest

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
