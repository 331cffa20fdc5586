"""Converted InterLCM files in the webui: the standalone InterLCMPipeline on the user's local files.

Why not the loaded checkpoint, as LAFR files do: InterLCM runs on LCM Dreamshaper v7 (an SD1.5
UNet with LCM's guidance embedding, and its VAE) plus CLIP ViT-B/16's image tower, neither of
which the webui has loaded. So an InterLCM file brings its own models, found where the webui
keeps diffusers-format folders:
  * LCM Dreamshaper v7: <models>/diffusers (that folder or a direct subfolder with unet/ + vae/);
  * CLIP ViT-B/16: <models>/clip_vision (a transformers folder: config.json + weights);
then lafr_core.model_paths' other places (LAFR_LCM_MODEL / LAFR_CLIP_VISION first when set,
ComfyUI's folders, A1111_DIR / FORGE_DIR, the hub cache) through restore_cli.find_weights. A
folder counts only when its config says it is that model (model_paths.is_lcm_folder /
is_clip_b16_folder), so an SD1.5 folder beside it is passed over.

The pipeline (~2.8 GB in fp16: UNet, ControlNet, VAE, CLIP) is loaded once and kept while the
file and both folders are unchanged (their files' mtimes and sizes are in the key), on the webui's
device: fp32 on CPU (half precision is slow or missing there), the webui's dtype elsewhere.
`release` drops it: service calls it when the user switches to a LAFR file, so the two engines
never hold memory together. The seed is applied per run on a shallow copy (the modules are
shared), so changing it never reloads anything.

What the user can fix (no LCM or CLIP folder, diffusers missing from the webui's Python, a folder
diffusers cannot read) is an InterlcmSetupError: one line, the image passes through unchanged
(report.image_kept). diffusers / transformers are imported only when a pipeline is loaded.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lafr_core.interlcm.weights import ENGINE  # lafr.engine of a converted InterLCM file
from lafr_core.model_paths import CLIP_B16_HUB_ID, LCM_HUB_ID, file_engine, is_clip_b16_folder, is_lcm_folder, search_folders

LCM_FOLDER = "diffusers"  # <models>/diffusers/<LCM Dreamshaper v7>
CLIP_FOLDER = "clip_vision"  # <models>/clip_vision/<CLIP ViT-B/16>
LCM_ENV, CLIP_ENV = "LAFR_LCM_MODEL", "LAFR_CLIP_VISION"
HALF_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the pipeline runs in (not Forge's fp8 storage types)

_cache: dict[str, Any] = {}


class InterlcmSetupError(RuntimeError):
    """InterLCM cannot run in this webui as set up: the message says what to install or put where."""


def is_interlcm_file(path: Path) -> bool:
    """The file's header says `lafr.engine` "interlcm" (an unreadable header: not InterLCM; the
    LAFR loader then names the problem)."""
    return file_engine(Path(path)) == ENGINE


@dataclass(frozen=True)
class BaseModels:
    lcm: str  # LCM Dreamshaper v7: a diffusers folder (or LAFR_LCM_MODEL's hub id)
    clip_vision: str  # CLIP ViT-B/16: a transformers folder (or LAFR_CLIP_VISION's hub id)


def _first_accepted(root: Path, accept: Callable[[Path], bool]) -> Path | None:
    """`root` itself or its first direct subfolder (by name) that `accept` passes."""
    if not root.is_dir():
        return None
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if accept(folder):
            return folder
    return None


def _places(webui_root: Path, env: str, roots: tuple[Path, ...], hub_id: str) -> str:
    """Every place looked, in order, for the one-line message."""
    places = [f"{webui_root} (and its subfolders)", f"{env} ({os.environ.get(env) or 'not set'})"]
    places += [str(root) for root in roots if root != webui_root]
    places.append(f"the hub cache {search_folders().hub_cache} ({hub_id})")
    return ", ".join(places)


def find_base_models(file: Path, models: Path) -> BaseModels:
    """LCM Dreamshaper v7 and CLIP ViT-B/16 for `file`: the environment variable when set, else
    the webui's models/diffusers and models/clip_vision, else the rest of lafr_core's places.
    InterlcmSetupError (one line: what is missing, every place looked, how to get it) otherwise."""
    from lafr_core.restore_cli import find_weights

    lookup = find_weights(None, str(file), engine=ENGINE)  # env var, ComfyUI, A1111_DIR / FORGE_DIR, hub cache
    webui_lcm, webui_clip = models / LCM_FOLDER, models / CLIP_FOLDER
    lcm = lookup.lcm if os.environ.get(LCM_ENV) else (_first_accepted(webui_lcm, is_lcm_folder) or lookup.lcm)
    clip = lookup.clip_vision if os.environ.get(CLIP_ENV) else (_first_accepted(webui_clip, is_clip_b16_folder) or lookup.clip_vision)
    problems = []
    folders = search_folders()
    if lcm is None:
        problems.append(
            "LCM Dreamshaper v7 (a diffusers folder with unet/ and vae/) not found in "
            f"{_places(webui_lcm, LCM_ENV, folders.lcm, LCM_HUB_ID)}; "
            f"get it with `hf download {LCM_HUB_ID} --include 'unet/config.json' 'unet/*.safetensors' 'vae/config.json' "
            f"'vae/*.safetensors' --local-dir {webui_lcm / 'LCM_Dreamshaper_v7'}`")
    if clip is None:
        problems.append(
            "CLIP ViT-B/16 (a transformers folder) not found in "
            f"{_places(webui_clip, CLIP_ENV, folders.clip_vision, CLIP_B16_HUB_ID)}; "
            f"get it with `hf download {CLIP_B16_HUB_ID} config.json pytorch_model.bin --local-dir {webui_clip / 'clip-vit-base-patch16'}`")
    if problems:
        raise InterlcmSetupError(f"the InterLCM file {Path(file).name} needs " + "; and ".join(problems))
    return BaseModels(str(lcm), str(clip))


def run_device(devices: Any) -> tuple[torch.device, torch.dtype]:
    """The webui's device; fp32 on CPU, else the webui's dtype (fp16 when it is none the pipeline runs in)."""
    device = torch.device(devices.device)
    if device.type == "cpu":
        return device, torch.float32
    dtype = getattr(devices, "dtype", None)
    return device, dtype if dtype in HALF_DTYPES else torch.float16


def _fingerprint(source: str) -> tuple | None:
    """What changes when a model folder's files are replaced: each file's (path, mtime, size);
    None for a hub id (its snapshot is resolved by from_pretrained)."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def cache_key(file: Path, models: BaseModels, device: torch.device, dtype: torch.dtype) -> tuple:
    stat = Path(file).stat()
    return (str(file), stat.st_mtime_ns, stat.st_size, models.lcm, _fingerprint(models.lcm),
            models.clip_vision, _fingerprint(models.clip_vision), str(device), dtype)


def release() -> bool:
    """Drop the cached pipeline (the caller then empties the device cache); True when one was held."""
    held = bool(_cache)
    _cache.clear()
    if held:
        gc.collect()
    return held


def _load(file: Path, models: BaseModels, device: torch.device, dtype: torch.dtype):
    from lafr_core.interlcm.engine import load_interlcm_pipeline

    try:
        return load_interlcm_pipeline(models.lcm, models.clip_vision, file, device=device, dtype=dtype)
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise InterlcmSetupError(f"InterLCM files need {missing} in the webui's Python (A1111 ships without diffusers): "
                                 f"run `<webui>/venv/bin/python -m pip install diffusers` (LAFR files need nothing more)") from None
    except ValueError as exc:  # a folder diffusers / transformers cannot read, or another model than InterLCM's
        raise InterlcmSetupError(str(exc)) from None


def cached_pipeline(file: Path, models: BaseModels, device: torch.device, dtype: torch.dtype, seed: int):
    """The InterLCMPipeline for (file, folders, device, dtype), loaded once; with `seed` (a shallow
    copy: same modules). The previous pipeline is dropped before another is loaded."""
    key = cache_key(file, models, device, dtype)
    if _cache.get("key") != key:
        release()
        _cache.update(key=key, pipe=_load(file, models, device, dtype))
    pipe = _cache["pipe"]
    return pipe if pipe.seed == seed else dataclasses.replace(pipe, seed=seed)
