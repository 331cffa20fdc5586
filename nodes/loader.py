"""LAFR Loader: a file from models/lafr -> LAFR (a validated lafr_core.LafrWeights)."""

from __future__ import annotations

import os

from ..lafr_core.lafr_file import LafrWeights, load_lafr
from . import comfy_host

_CACHE: dict[str, tuple[float, LafrWeights]] = {}


def load_cached(path: str) -> LafrWeights:
    """One load per file version: the cache key is the path and its modification time, so a
    retrained file replaced under the same name is picked up without restarting ComfyUI."""
    mtime = os.path.getmtime(path)
    cached = _CACHE.get(path)
    if cached is None or cached[0] != mtime:
        _CACHE[path] = (mtime, load_lafr(path))
    return _CACHE[path][1]


class LAFRLoader:
    DESCRIPTION = "Loads a LAFR file (alignment adapter, conv LoRA and prompt embedding for SD2.1-base) from models/lafr."
    CATEGORY = "LAFR"
    RETURN_TYPES = ("LAFR",)
    RETURN_NAMES = ("lafr",)
    OUTPUT_TOOLTIPS = ("The LAFR weights, validated: feed LAFR Latent Align, LAFR Pruned UNet Step or LAFR Restore Faces.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lafr_name": (comfy_host.lafr_filenames("lafr"), {"tooltip": "A LAFR .safetensors in models/lafr (train one with `python -m train`)."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, lafr_name):
        try:
            return os.path.getmtime(comfy_host.lafr_full_path(lafr_name))
        except Exception:  # noqa: BLE001 - a missing file is reported by load()
            return float("nan")

    def load(self, lafr_name: str):
        return (load_cached(comfy_host.lafr_full_path(lafr_name)),)
