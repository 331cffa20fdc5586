"""Helpers to use a real ComfyUI checkout from tests: import it as a library, load this pack the
way ComfyUI does (a package under another name), build SD2.x stand-ins.

Which ComfyUI: COMFYUI_DIR, else the ComfyUI this pack is installed in (the repository sits in
ComfyUI/custom_nodes/, as for a user running the tests from their own install). Without either
the host tests skip, so the plain test command stays ComfyUI-free."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def find_comfyui(repo: Path = REPO, environ=os.environ) -> str | None:
    """COMFYUI_DIR, else the ComfyUI whose custom_nodes/ holds `repo`; None when neither."""
    if environ.get("COMFYUI_DIR"):
        return environ["COMFYUI_DIR"]
    home = repo.parent.parent
    if repo.parent.name == "custom_nodes" and (home / "main.py").is_file() and (home / "comfy").is_dir():
        return str(home)
    return None


COMFYUI_DIR = find_comfyui()
needs_comfyui = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout (or install the pack in ComfyUI/custom_nodes) to run host tests")


def import_comfy():
    """ComfyUI as a library, CPU only (its own documented way: args parsing switched on)."""
    if COMFYUI_DIR not in sys.path:
        sys.path.insert(0, COMFYUI_DIR)
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401
        import comfy.sd  # noqa: F401
        import folder_paths  # noqa: F401
    finally:
        sys.argv = argv
    return sys.modules["comfy.sd"]


def load_pack(name: str = "ComfyUI_LAFR_under_test"):
    """Import the repository root as ComfyUI's loader does: a package with a foreign name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
