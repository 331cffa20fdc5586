"""The host tests find ComfyUI by themselves when the pack sits in ComfyUI/custom_nodes/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "host"))
from comfy_support import find_comfyui  # noqa: E402


def _comfyui(tmp_path: Path) -> Path:
    home = tmp_path / "ComfyUI"
    (home / "comfy").mkdir(parents=True)
    (home / "main.py").write_text("")
    (home / "custom_nodes" / "ComfyUI-LAFR").mkdir(parents=True)
    return home


def test_pack_inside_custom_nodes_finds_its_comfyui(tmp_path):
    home = _comfyui(tmp_path)
    assert find_comfyui(home / "custom_nodes" / "ComfyUI-LAFR", {}) == str(home)


def test_environment_wins_and_a_plain_clone_finds_none(tmp_path):
    home = _comfyui(tmp_path)
    assert find_comfyui(home / "custom_nodes" / "ComfyUI-LAFR", {"COMFYUI_DIR": "/elsewhere"}) == "/elsewhere"
    assert find_comfyui(tmp_path / "src" / "ComfyUI-LAFR", {}) is None
    (home / "main.py").unlink()  # a folder called custom_nodes that is no ComfyUI
    assert find_comfyui(home / "custom_nodes" / "ComfyUI-LAFR", {}) is None
