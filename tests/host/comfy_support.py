"""Helpers to use a real ComfyUI checkout (COMFYUI_DIR) from tests: import it as a library,
load this pack the way ComfyUI does (a package under another name), build SD2.x stand-ins.
Skipped when COMFYUI_DIR is unset, so CI stays offline and ComfyUI-free."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
needs_comfyui = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run host tests")


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
