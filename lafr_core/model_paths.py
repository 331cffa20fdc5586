"""Where users keep their models, and finding SD2.1-base and LAFR files there — offline.

Searched in this order (first hit wins for defaults; `doctor` lists everything):
  1. explicit environment variables: LAFR_BASE_MODEL (a file, diffusers folder or hub id),
     LAFR_MODEL (a LAFR file), LAFR_MODELS_DIR (a folder of LAFR files);
  2. a ComfyUI install (COMFYUI_DIR, else ~/ComfyUI): models/checkpoints, models/lafr;
  3. an A1111/Forge install (A1111_DIR / FORGE_DIR, else ~/stable-diffusion-webui):
     models/Stable-diffusion, models/LAFR;
  4. the Hugging Face hub cache (HF_HUB_CACHE / HF_HOME), for stabilityai/stable-diffusion-2-1-base.
InterLCM's two base models, as the folders diffusers / transformers load:
  * LCM Dreamshaper v7 (unet/ and vae/): LAFR_LCM_MODEL, ComfyUI's models/diffusers/<any>,
    A1111/Forge's models/diffusers/<any>, the hub cache (SimianLuo/LCM_Dreamshaper_v7);
  * CLIP ViT-B/16 (config.json + weights): LAFR_CLIP_VISION, ComfyUI's models/clip_vision/<any>,
    A1111/Forge's models/clip_vision/<any>, the hub cache (openai/clip-vit-base-patch16).
  A folder counts only when its config says it is that model (an SD1.5 or ViT-H folder beside it
  is passed over), so the first hit is usable.
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
LCM_HUB_ID = "SimianLuo/LCM_Dreamshaper_v7"
CLIP_B16_HUB_ID = "openai/clip-vit-base-patch16"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class SearchFolders:
    base: list[Path]  # folders of SD checkpoints
    lafr: list[Path]  # folders of LAFR files
    hub_cache: Path
    face: tuple[Path, ...] = ()  # folders of face-detector / parsing weights (facexlib files)
    lcm: tuple[Path, ...] = ()  # folders holding diffusers model folders (LCM Dreamshaper v7)
    clip_vision: tuple[Path, ...] = ()  # folders holding transformers CLIP vision folders


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
    lcm = [comfy / "models" / "diffusers"] + [w / "models" / "diffusers" for w in webuis]
    clip = [comfy / "models" / "clip_vision"] + [w / "models" / "clip_vision" for w in webuis]
    return SearchFolders(base=base, lafr=lafr, hub_cache=hub_cache, face=tuple(face), lcm=tuple(lcm), clip_vision=tuple(clip))


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


def hub_snapshot(hub_id: str = SD21_HUB_ID, cache: Path | None = None, marker: str = "unet/config.json") -> Path | None:
    """The newest local snapshot folder of a hub model, if the cache has one with `marker` (a
    diffusers model's UNet config by default; "config.json" for a transformers model)."""
    cache = cache or search_folders().hub_cache
    snapshots = cache / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = [s for s in snapshots.iterdir() if (s / marker).is_file()]
    return max(candidates, key=lambda s: s.stat().st_mtime) if candidates else None


def looks_like_hub_id(text: str) -> bool:
    """"owner/name": not a path a user would type for a local folder (absolute, ./, ../)."""
    return "/" in text and not Path(text).is_absolute() and not text.startswith((".", "~"))


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


# --------------------------------------------------------------------------- InterLCM's base models


def _json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def is_lcm_folder(folder: Path) -> bool:
    """A diffusers folder of LCM Dreamshaper v7: an SD1.5 UNet (cross-attention 768) with LCM's
    256-d guidance embedding, and a VAE. Read from the configs only (no weights)."""
    unet = _json(Path(folder) / "unet" / "config.json")
    return (unet.get("cross_attention_dim") == 768 and unet.get("time_cond_proj_dim") == 256
            and (Path(folder) / "vae" / "config.json").is_file())


def is_clip_b16_folder(folder: Path) -> bool:
    """A transformers folder of CLIP ViT-B/16's image tower: a whole CLIPModel (its
    vision_config) or a saved CLIPVisionModel; CLIPVisionConfig's defaults fill what is absent."""
    cfg = _json(Path(folder) / "config.json")
    if cfg.get("model_type") == "clip":
        cfg = cfg.get("vision_config") or {}
    elif cfg.get("model_type") != "clip_vision_model":
        return False
    return (cfg.get("hidden_size", 768), cfg.get("patch_size", 32), cfg.get("image_size", 224)) == (768, 16, 224)


def _model_folders(explicit_env: str, roots: tuple[Path, ...], hub_id: str, marker: str, accept) -> list[Path | str]:
    """The env var's value (a folder or hub id, unchecked: the user chose it), then each root
    and its direct subfolders that `accept` passes, then the hub cache's snapshot."""
    found: list[Path | str] = []
    explicit = os.environ.get(explicit_env)
    if explicit:
        found.append(explicit)
    for root in roots:
        if root.is_dir():
            found += [f for f in [root, *sorted(p for p in root.iterdir() if p.is_dir())] if accept(f)]
    snapshot = hub_snapshot(hub_id, marker=marker)
    if snapshot is not None and accept(snapshot):
        found.append(snapshot)
    return found


def lcm_candidates() -> list[Path | str]:
    """LCM Dreamshaper v7 folders (or LAFR_LCM_MODEL's hub id), best first."""
    return _model_folders("LAFR_LCM_MODEL", search_folders().lcm, LCM_HUB_ID, "unet/config.json", is_lcm_folder)


def clip_vision_candidates() -> list[Path | str]:
    """CLIP ViT-B/16 folders (or LAFR_CLIP_VISION's hub id), best first."""
    return _model_folders("LAFR_CLIP_VISION", search_folders().clip_vision, CLIP_B16_HUB_ID, "config.json", is_clip_b16_folder)


def local_source(value: str, marker: str) -> str | None:
    """What a --lcm / --clip-vision value loads from: an existing path as given; a hub id from
    its hub-cache snapshot when there is one (so it runs offline), else the id itself (loaded
    online); None for a path that does not exist."""
    if Path(value).expanduser().exists():
        return str(Path(value).expanduser())
    if looks_like_hub_id(value):
        snapshot = hub_snapshot(value, marker=marker)
        return str(snapshot) if snapshot is not None else value
    return None


def file_engine(path: Path) -> str | None:
    """A weights file's `lafr.engine` from its header ("lafr" for a format-1 LAFR file), or None
    when the header cannot be read (the loader then names the problem)."""
    from .lafr_file import LafrFileError, read_header_metadata

    try:
        meta = read_header_metadata(path)
    except (LafrFileError, OSError):
        return None
    return meta.get("lafr.engine", "lafr" if "lafr.format" in meta else None)
