"""`python -m lafr_core doctor`: what this machine can run, and which models it found.

The first thing to run after installing: it answers "why doesn't it restore?" without a
traceback: devices, library versions, SD2.1-base checkpoints (identified from their headers,
so SD1.5/SDXL/v-prediction files are flagged), LAFR files (validated by the real loader) and
the face detectors this machine can run (bundled MTCNN; RetinaFace files in the usual folders).
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

from .base_model import UNET_PREFIX, V_PRED_SENTINEL, BaseModelError, identify_ldm_checkpoint, require_sd2_epsilon
from .lafr_file import LafrFileError, read_lafr_metadata
from .model_paths import (
    CLIP_B16_HUB_ID,
    LCM_HUB_ID,
    SD21_HUB_ID,
    base_model_candidates,
    clip_vision_candidates,
    file_engine,
    lafr_file_candidates,
    lcm_candidates,
    search_folders,
)

PACKAGES = ("torch", "torchvision", "safetensors", "numpy", "einops", "diffusers", "peft", "transformers",
            "accelerate", "facexlib", "opencv-python-headless")


def package_versions() -> list[tuple[str, str]]:
    rows = []
    for name in PACKAGES:
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return rows


def devices() -> list[str]:
    found = [f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16"
            found.append(f"cuda:{i} {props.name}, {props.total_memory / 2**30:.0f} GiB, {bf16}")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_base_checkpoint(path: Path | str) -> str:
    """'ok: ...' or the reason it cannot be used, from the file header (no full load)."""
    path = Path(path)
    if path.is_dir():
        return "diffusers folder (checked when loaded)"
    if path.suffix.lower() != ".safetensors":
        return "pickle checkpoint (.ckpt): identified only when loaded (weights_only=True)"
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys() if k.startswith(UNET_PREFIX) or k.startswith("conditioner.")}
            std = float(f.get_tensor(V_PRED_SENTINEL).float().std()) if V_PRED_SENTINEL in shapes else None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not raised
        return f"unreadable: {exc}"
    info = identify_ldm_checkpoint(shapes, v_pred_bias_std=std)
    try:
        require_sd2_epsilon(info, path.name)
    except BaseModelError:
        return f"not usable by LAFR ({info.describe()})"
    return f"ok: {info.describe()}"


def check_lafr_file(path: Path) -> str:
    """ok (with what the file is) or invalid (why), for LAFR, OSEDiff and InterLCM files."""
    from .interlcm.weights import read_interlcm_metadata

    try:
        if file_engine(path) == "interlcm":
            meta = read_interlcm_metadata(path)
            return f"ok: InterLCM, {meta['lafr.steps']} step(s), needs LCM Dreamshaper v7 + CLIP ViT-B/16 ({meta.get('lafr.licence', '')})"
        meta = read_lafr_metadata(path)
    except LafrFileError as exc:
        return f"invalid: {exc}"
    engine = meta.get("lafr.engine", "lafr")
    return f"ok: stages {meta.get('lafr.stages')}" + ("" if engine == "lafr" else f" ({engine})")


def face_detector_rows() -> list[str]:
    """One line per detector: usable (and from which file) or why not. Reads no weights."""
    from .face.detect import DETECTORS, detector_status, resolve_detector
    from .face.mtcnn import WEIGHTS as MTCNN_WEIGHTS
    from .face.retinaface import NETWORKS, facexlib_problem
    from .model_paths import find_face_model

    rows = []
    for name in DETECTORS[1:]:
        if name == "mtcnn":
            problem = detector_status(name)
            rows.append(f"  mtcnn: {'ok, bundled ' + str(MTCNN_WEIGHTS) if problem is None else problem}")
            continue
        file_name = NETWORKS[name.removeprefix("retinaface_")]
        found, _ = find_face_model(file_name)
        problem = facexlib_problem()
        if found is None:
            rows.append(f"  {name}: {file_name} not found" + (f" (and {problem})" if problem else ""))
        else:
            rows.append(f"  {name}: {found}" + (f", but {problem}" if problem else ""))
    rows.append(f"  auto picks: {resolve_detector('auto')}")
    from .face.parsing import PARSENET_FILE

    found, _ = find_face_model(PARSENET_FILE)
    rows.append(f"  parsenet paste mask: {found if found is not None else PARSENET_FILE + ' not found (the landmark mask needs no weights)'}")
    return rows


def report() -> list[str]:
    folders = search_folders()
    lines = ["devices:"] + [f"  {d}" for d in devices()]
    lines += ["packages:"] + [f"  {name:<24} {version}" for name, version in package_versions()]
    lines += ["SD2.1-base checkpoints (searched: LAFR_BASE_MODEL, " + ", ".join(map(str, folders.base)) + f", hub cache {folders.hub_cache}):"]
    bases = base_model_candidates()
    lines += [f"  {p}: {check_base_checkpoint(p)}" for p in bases] or [
        f"  none found: put v2-1_512-ema-pruned.safetensors in one of those folders, set LAFR_BASE_MODEL, "
        f"or set LAFR_BASE_MODEL={SD21_HUB_ID} with internet access"
    ]
    lines += ["LAFR files (searched: LAFR_MODEL, " + ", ".join(map(str, folders.lafr)) + "):"]
    lafr = lafr_file_candidates()
    lines += [f"  {p}: {check_lafr_file(p)}" for p in lafr] or [
        "  none found: train one with `python -m train stage1 ...` / `stage2 ...` (no pretrained LAFR weights "
        "are published) and put the .safetensors in one of those folders"
    ]
    lines += ["InterLCM's LCM Dreamshaper v7 (searched: LAFR_LCM_MODEL, " + ", ".join(map(str, folders.lcm)) + ", hub cache):"]
    lines += [f"  {p}" for p in lcm_candidates()] or [f"  none found (only InterLCM files need it): `hf download {LCM_HUB_ID}` or a diffusers folder in models/diffusers"]
    lines += ["InterLCM's CLIP ViT-B/16 (searched: LAFR_CLIP_VISION, " + ", ".join(map(str, folders.clip_vision)) + ", hub cache):"]
    lines += [f"  {p}" for p in clip_vision_candidates()] or [f"  none found (only InterLCM files need it): `hf download {CLIP_B16_HUB_ID}` or a transformers folder in models/clip_vision"]
    lines += ["face detectors (searched: LAFR_FACE_MODELS_DIR, " + ", ".join(map(str, folders.face)) + "):"]
    lines += face_detector_rows()
    return lines
