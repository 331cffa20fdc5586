"""One LAFR run inside the webui: check the loaded model, load the file, run the chain, clean up.

Both entry points (face restorer, Extras) call `restore`. The chosen file's `lafr.engine` picks
the engine: a converted InterLCM file runs the standalone InterLCM pipeline on the user's LCM
Dreamshaper v7 and CLIP ViT-B/16 folders (lafr_webui.interlcm: no checkpoint is needed or checked,
the file's wavelet colour fix is "file default", the seed is Settings > LAFR's); every other file
runs LAFR's engine on the loaded checkpoint, and switching to one frees the InterLCM pipeline.
For LAFR's engine `restore` never loads or swaps a checkpoint:
the user's loaded model must be SD2.1-base (SD2.x eps), otherwise the image comes back unchanged
with a message shown once. Any LAFR file runs, LAFR's own and converted OSEDiff ones: the prompt
is the file's embedding, or text the loaded checkpoint encodes (lafr_webui.prompt); the colour fix
"file default" is the file's `lafr.colour_fix`; a file asking for a sampled VAE latent gets the
posterior mode, as in ComfyUI, said once. Progress goes to shared.state (textinfo and the step
counters, put back afterwards), Interrupt/Skip stop it between face chunks (image unchanged), and
devices.torch_gc() runs at the end whatever happened. The webui's modules are imported inside the
functions, so this module imports without the webui.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from lafr_core.base_model import BaseModelError, require_sd2_epsilon
from lafr_core.host_chain import ChainInterrupted, CropEngine, FaceOptions, lafr_engine, restore_faces
from lafr_core.face import COLOUR_CORRECTIONS
from lafr_core.lafr_file import LafrWeights, load_lafr

from . import interlcm
from .args import RestoreArgs
from .messages import log_once, notify, notify_once
from .model_check import checkpoint_label, is_forge, loaded_model_info
from .prompt import with_run_prompt
from .settings import detector_weights, models_path, resolve_lafr_file

_cache: dict[str, Any] = {}


@dataclass(frozen=True)
class Outcome:
    images: torch.Tensor  # [B, H, W, C] float 0..1: restored, or the input when skipped
    faces: int = 0
    lafr_file: str | None = None  # the file's name in models/LAFR
    skipped: str | None = None  # why nothing was restored (refused model, interrupted)
    no_face: str | None = None  # the chain ran and found no face: what was said (images = input)
    engine: str = "LAFR"  # the engine that ran: LAFR_ENGINE (LAFR and OSEDiff files) or "InterLCM"
    seed: int | None = None  # InterLCM's noise seed (LAFR's engine draws none)


NO_FACE = "no face found (image passed through unchanged)"
LAFR_ENGINE = "LAFR"  # Outcome.engine of LAFR and OSEDiff files (InterLCM's is lafr_core.interlcm.engine.ENGINE_NAME)


def cached_weights(path: Path) -> LafrWeights:
    """load_lafr(path), kept while the file is unchanged (one file cached: they are ~30 MB)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if _cache.get("key") != key:
        _cache.clear()
        _cache.update(key=key, weights=load_lafr(path))
    return _cache["weights"]


class _StateProgress:
    """Progress and stop requests through shared.state, restoring what it changes."""

    FIELDS = ("textinfo", "sampling_step", "sampling_steps")

    def __init__(self, state: Any, label: str) -> None:
        self.state, self.label = state, label
        self.saved = {name: getattr(state, name, None) for name in self.FIELDS}

    def __enter__(self) -> "_StateProgress":
        self.state.textinfo = f"{self.label}: detecting faces"
        return self

    def __exit__(self, *exc_info) -> None:
        for name, value in self.saved.items():
            setattr(self.state, name, value)

    def should_stop(self) -> bool:
        return bool(getattr(self.state, "interrupted", False) or getattr(self.state, "skipped", False))

    def __call__(self, done: int, total: int) -> None:
        self.state.sampling_steps, self.state.sampling_step = total, done
        self.state.textinfo = f"{self.label}: {done}/{total} faces"


def loaded_sd_model(shared: Any) -> Any:
    """shared.sd_model. A1111 loads the selected checkpoint on first access by itself; Forge loads
    lazily, so there the user's selected checkpoint is loaded the way every Forge generation starts
    (sd_models.forge_model_reload). Either way it is the user's choice, never one LAFR picks."""
    sd_model = shared.sd_model
    if sd_model is None:
        try:
            from modules import sd_models
        except ImportError:
            return None
        reload = getattr(sd_models, "forge_model_reload", None)
        if reload is not None:
            reload()
            sd_model = shared.sd_model
    return sd_model


def run_colour(args: RestoreArgs, weights: LafrWeights, name: str) -> str:
    """The colour correction of this run: the setting's, or the file's own for FILE_COLOUR; one
    this version of lafr_core.face lacks is said once and skipped."""
    return file_run_colour(args, weights.colour_fix, name)


def file_run_colour(args: RestoreArgs, file_colour_fix: str, name: str) -> str:
    """run_colour for a file whose own colour fix is `file_colour_fix` (any engine's file)."""
    colour = args.colour_for(file_colour_fix)
    if colour not in COLOUR_CORRECTIONS:
        log_once(("colour", name, colour), f"{name} asks for the {colour!r} colour fix, which this LAFR version does not "
                                           f"have; its faces get none (choose one in Settings > LAFR)")
        return "none"
    return colour


def _host_model(sd_model: Any, weights: LafrWeights, devices: Any):
    """(the model adapter, its cleanup) for the webui that is running."""
    if is_forge(sd_model):
        from .forge import ForgeModel

        model = ForgeModel(sd_model, weights)
        return model, model.restore_user_weights
    from .a1111 import A1111Model

    return A1111Model(sd_model, weights, devices.device, devices.dtype_vae), (lambda: None)


def _interlcm_file(args: RestoreArgs, file_setting: str) -> Path | None:
    """The chosen file when it is a converted InterLCM file; None for a LAFR-format file and for
    a missing one (then LAFR's path reports it, after the checkpoint, as before InterLCM)."""
    try:
        path = resolve_lafr_file(args.lafr_file, setting=file_setting)
    except FileNotFoundError:
        return None
    return path if interlcm.is_interlcm_file(path) else None


def restore(images: torch.Tensor, args: RestoreArgs, label: str = "LAFR", file_setting: str = "Settings > LAFR") -> Outcome:
    """Restore the faces of images [B, H, W, C] float 0..1 with the chosen file's engine.

    LAFR's engine runs on the loaded checkpoint: the input comes back unchanged (with `skipped`
    set) when it is not SD2.x eps. Either engine: an interrupt skips, no face is said (one line
    per call) and returns the input. File, detector, base-model and argument problems raise
    (callers report them); a missing file's message sends the user to `file_setting`, where the
    file was chosen."""
    from modules import devices, shared

    interlcm_path = _interlcm_file(args, file_setting)
    if interlcm_path is not None:
        return _restore_interlcm(images, args, interlcm_path, label, devices, shared)
    if interlcm.release():  # the user switched from an InterLCM file to a LAFR one
        devices.torch_gc()

    sd_model = loaded_sd_model(shared)
    if sd_model is None:
        message = "no checkpoint is loaded yet: load SD2.1-base (v2-1_512-ema-pruned) and run again"
        notify_once(("model", None), message)
        return Outcome(images, skipped=message)
    checkpoint = checkpoint_label(sd_model)
    try:
        require_sd2_epsilon(loaded_model_info(sd_model), f"the loaded checkpoint {checkpoint}")
    except BaseModelError as exc:
        notify_once(("model", checkpoint), f"{exc} Images pass through unchanged; LAFR never switches checkpoints itself.")
        return Outcome(images, skipped=str(exc))

    path = resolve_lafr_file(args.lafr_file, setting=file_setting)
    name = path.name
    autocast = nullcontext if is_forge(sd_model) else getattr(devices, "autocast", nullcontext)  # as A1111 encodes prompts
    weights = with_run_prompt(cached_weights(path), sd_model, args.prompt, autocast)
    if weights.latent_rule != "mode":
        log_once(("latent", name), f"{name} asks for a sampled VAE latent (seed {weights.latent_seed}); the webui "
                                   "encodes to the posterior mode, as ComfyUI does")
    options = FaceOptions(detector=args.detector, strength=args.strength, colour_correction=run_colour(args, weights, name),
                          detector_weights=detector_weights(args.detector))
    model, cleanup = _host_model(sd_model, weights, devices)

    def on_oom(chunk: int) -> None:
        devices.torch_gc()
        notify(f"out of memory; retrying with {chunk} face(s) per forward")

    return _run_chain(images, lambda: lafr_engine(weights, model.host_model(on_oom)), options, Outcome(images, lafr_file=name),
                      label, shared, devices, cleanup)


def _restore_interlcm(images: torch.Tensor, args: RestoreArgs, path: Path, label: str, devices: Any, shared: Any) -> Outcome:
    """An InterLCM file: its pipeline (cached) on the webui's device, seed and colour from Settings."""
    from lafr_core.interlcm.engine import ENGINE_NAME, file_colour_fix, interlcm_engine

    name = path.name
    if args.prompt:
        log_once(("prompt", name), f"{name} is an InterLCM file: it takes no text prompt, so Settings > LAFR's prompt is not used")
    device, dtype = interlcm.run_device(devices)
    pipe = interlcm.cached_pipeline(path, interlcm.find_base_models(path, models_path()), device, dtype, args.seed)
    options = FaceOptions(detector=args.detector, strength=args.strength,
                          colour_correction=file_run_colour(args, file_colour_fix(path), name),
                          detector_weights=detector_weights(args.detector))
    return _run_chain(images, lambda: interlcm_engine(pipe), options, Outcome(images, lafr_file=name, engine=ENGINE_NAME, seed=args.seed),
                      label, shared, devices)


def _run_chain(images: torch.Tensor, make_engine: Callable[[], CropEngine], options: FaceOptions, base: Outcome, label: str,
               shared: Any, devices: Any, cleanup: Callable[[], None] = lambda: None) -> Outcome:
    """restore_faces on make_engine()'s engine with the webui's progress and stop buttons; `base`
    carries the file, engine and seed into whichever Outcome comes back. cleanup and
    devices.torch_gc() run whatever happens, also when the engine cannot be made."""
    try:
        with _StateProgress(shared.state, label) as progress:
            result = restore_faces(images, make_engine(), options, should_stop=progress.should_stop, progress=progress)
    except ChainInterrupted:
        return replace(base, skipped="interrupted")
    finally:
        cleanup()
        devices.torch_gc()
    if len(result.faces) == 0:
        small = sum(result.faces.skipped_small)
        message = f"{NO_FACE}; {small} too small to restore" if small else NO_FACE
        notify(message)
        return replace(base, no_face=message)
    return replace(base, images=result.images, faces=len(result.faces))
