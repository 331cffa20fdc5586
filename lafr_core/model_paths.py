"""Where users keep their models, and finding SD2.1-base and LAFR files there — offline.

Searched in this order (first hit wins for defaults; `doctor` lists everything):
  1. explicit environment variables: LAFR_BASE_MODEL (a file, diffusers folder or hub id),
     LAFR_MODEL (a LAFR file), LAFR_MODELS_DIR (a folder of LAFR files);
  2. a ComfyUI install (COMFYUI_DIR, else ~/ComfyUI): models/checkpoints, models/lafr;
  3. an A1111/Forge install (A1111_DIR / FORGE_DIR, else ~/stable-diffusion-webui):
     models/Stable-diffusion, models/LAFR;
  4. the Hugging Face hub cache (HF_HUB_CACHE / HF_HOME), for stabilityai/stable-diffusion-2-1-base.
Face-detector weights (facexlib's RetinaFace / ParseNet files) are looked for in LAFR_FACE_MODELS_DIR,
ComfyUI's models/facedetection, A1111's models/GFPGAN and facexlib's own weights folder.
Nothing here downloads: a user with internet passes the hub id explicitly.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

SD21_HUB_ID = "stabilityai/stable-diffusion-2-1-base"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class SearchFolders:
    base: list[Path]  # folders of SD checkpoints
    lafr: list[Path]  # folders of LAFR files
    hub_cache: Path
    face: tuple[Path, ...] = ()  # folders of face-detector / parsing weights (facexlib files)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def search_folders() -> SearchFolders:
    home = Path.home()
    comfy = _env_path("COMFYUI_DIR") or home / "ComfyUI"
    webuis = [p for p in (_env_path("A1111_DIR"), _env_path("FORGE_DIR")) if p] or [home / "stable-diffusion-webui"]
    lafr = [p for p in (_env_path("LAFR_MODELS_DIR"),) if p]
    lafr += [comfy / "models" / "lafr"] + [w / "models" / "LAFR" for w in webuis]
    base = [comfy / "models" / "checkpoints"] + [w / "models" / "Stable-diffusion" for w in webuis]
    hf_home = _env_path("HF_HOME") or home / ".cache" / "huggingface"
    hub_cache = _env_path("HF_HUB_CACHE") or hf_home / "hub"
    face = [p for p in (_env_path("LAFR_FACE_MODELS_DIR"),) if p]
    face += [comfy / "models" / "facedetection"] + [w / "models" / "GFPGAN" for w in webuis]
    own = facexlib_weights_folder()
    face += [own] if own is not None else []
    return SearchFolders(base=base, lafr=lafr, hub_cache=hub_cache, face=tuple(face))


def facexlib_weights_folder() -> Path | None:
    """facexlib's own download folder (<package>/weights), found without importing facexlib."""
    try:
        spec = importlib.util.find_spec("facexlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights"


def find_face_model(file_name: str, explicit: str | Path | None = None) -> tuple[Path | None, list[Path]]:
    """(the file if found, the places searched): an explicit file or folder first, then the
    face-model folders. The caller turns a miss into a message that lists the places."""
    searched: list[Path] = []
    if explicit is not None:
        explicit = Path(explicit).expanduser()
        candidate = explicit / file_name if explicit.is_dir() else explicit
        searched.append(candidate)
        return (candidate if candidate.is_file() else None), searched
    for folder in search_folders().face:
        searched.append(folder)
        if (folder / file_name).is_file():
            return folder / file_name, searched
    return None, searched


def require_face_model(file_name: str, explicit: str | Path | None, what: str, fallback: str,
                       error: type[Exception] = FileNotFoundError) -> Path:
    """The face-model file, or `error` with a message naming the file, every place searched and
    `fallback` (what the user can do instead): one wording for RetinaFace and ParseNet."""
    found, searched = find_face_model(file_name, explicit)
    if found is None:
        places = "\n  ".join(map(str, searched))
        raise error(f"{what} weights {file_name} not found. Searched:\n  {places}\n{fallback}")
    return found


def _files_in(folders: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for folder in folders:
        if folder.is_dir():
            found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    return found


def hub_snapshot(hub_id: str = SD21_HUB_ID, cache: Path | None = None) -> Path | None:
    """The newest local snapshot folder of a hub model, if the cache has one with a UNet."""
    cache = cache or search_folders().hub_cache
    snapshots = cache / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = [s for s in snapshots.iterdir() if (s / "unet" / "config.json").is_file()]
    return max(candidates, key=lambda s: s.stat().st_mtime) if candidates else None


def base_model_candidates() -> list[Path | str]:
    """SD checkpoints and diffusers folders a user has (not yet checked to be SD2.1-base)."""
    explicit = os.environ.get("LAFR_BASE_MODEL")
    found: list[Path | str] = [explicit] if explicit else []
    found += _files_in(search_folders().base, CHECKPOINT_SUFFIXES)
    snapshot = hub_snapshot()
    if snapshot is not None:
        found.append(snapshot)
    return found


def lafr_file_candidates() -> list[Path]:
    explicit = _env_path("LAFR_MODEL")
    return ([explicit] if explicit else []) + _files_in(search_folders().lafr, (".safetensors",))
