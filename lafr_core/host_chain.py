"""The whole LAFR chain on a host's own VAE and UNet: detect -> align -> encode -> align latent ->
one UNet step -> decode -> paste back.

Why here: the A1111/Forge face restorer and Extras script (and any later host) run the same chain
as the ComfyUI "LAFR Restore Faces" node, only with different ways to call the VAE and the UNet.
A host lends those as three functions (:class:`HostModel`); everything else (face pipeline,
latent scaling, the adapter, chunking on out-of-memory, progress and interruption) is decided
once, here, without importing any host.

A second engine (InterLCM) plugs in as a :class:`CropEngine`, its own way to restore a chunk of
aligned crops; `restore_faces` runs the same face pipeline around any engine, and
`restore_images` is it with LAFR's engine on a HostModel.

Latents crossing the host boundary are RAW VAE latents (posterior mode, unscaled) for the VAE
functions and SCALED latents (x latent_scale, what the UNet sees) for the UNet step; the scale is
the LAFR file's own `lafr.latent_scale`, as in ComfyUI (DESIGN §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .batching import DEFAULT_OOM_ERRORS, run_in_chunks
from .face import DEFAULT_FEATHER, DEFAULT_MIN_SIZE, FaceSet, align_faces, detect_faces, paste_faces, resolve_detector
from .face.align import DEFAULT_CROP_SIZE
from .lafr_file import LafrWeights
from .latent_ops import align_raw_latent, require_unet_step

Tensor = torch.Tensor


class ChainInterrupted(Exception):
    """The host asked to stop (A1111 Interrupt/Skip): callers hand back their input unchanged."""


@dataclass(frozen=True)
class FaceOptions:
    """Detection and paste-back knobs; the defaults are lafr_core.face's."""

    detector: str = "auto"
    threshold: float | None = None
    min_size: float = DEFAULT_MIN_SIZE
    select: str | Sequence[int] = "all"
    strength: float = 1.0
    colour_correction: str = "none"
    feather: float = DEFAULT_FEATHER
    detector_weights: str | Path | None = None  # a RetinaFace file or folder (the host's model folder)
    crop_size: int = DEFAULT_CROP_SIZE
    mask: str = "landmarks"  # paste mask: "landmarks" (feathered ellipse) or "parsenet" (face parsing)
    mask_weights: str | Path | None = None  # ParseNet's file or folder; None: the face-model folders


@dataclass(frozen=True)
class HostModel:
    """What a host lends the chain, all on `device`:

    encode(crops [n, S, S, 3] float 0..1)   -> RAW latent [n, 4, S/8, S/8] (posterior mode)
    denoise(z_t [n, 4, h, w], SCALED, t=999) -> SCALED x0: one UNet step with the LAFR LoRA and prompt
    decode(RAW latent [n, 4, h, w])          -> crops [n, S, S, 3] float 0..1
    oom_errors: what the host raises when out of memory (the chunk is halved and retried);
    on_oom(new_chunk): free the host's caches before the retry.
    """

    encode: Callable[[Tensor], Tensor]
    denoise: Callable[[Tensor], Tensor]
    decode: Callable[[Tensor], Tensor]
    device: torch.device
    oom_errors: tuple[type[BaseException], ...] = DEFAULT_OOM_ERRORS
    on_oom: Callable[[int], None] | None = None


@dataclass(frozen=True)
class CropEngine:
    """One engine's way to restore aligned crops on a host, all the chain needs of it:

    restore(crops [n, S, S, 3] float 0..1 on `device`) -> restored crops, same shape, 0..1
    name: for messages ("LAFR", "InterLCM"); oom_errors / on_oom as in HostModel.

    LAFR's comes from lafr_engine(weights, host); InterLCM's from its host layer. Engines
    differ only in what happens to a chunk of crops: detection, alignment, chunking on
    out-of-memory, interruption, progress and paste-back are the chain's, shared."""

    restore: Callable[[Tensor], Tensor]
    device: torch.device
    name: str = "LAFR"
    oom_errors: tuple[type[BaseException], ...] = DEFAULT_OOM_ERRORS
    on_oom: Callable[[int], None] | None = None


def lafr_engine(weights: LafrWeights, host: HostModel) -> CropEngine:
    """LAFR's (and converted OSEDiff files') engine: restore_crops on the host's VAE and UNet."""
    require_unet_step(weights, "LAFR")
    return CropEngine(lambda crops: restore_crops(weights, crops, host), host.device, "LAFR", host.oom_errors, host.on_oom)


@dataclass(frozen=True)
class ChainResult:
    images: Tensor  # same shape, dtype and channels as the input images
    faces: FaceSet  # what was found (with affines when any face was)
    restored: Tensor | None = field(default=None, repr=False)  # restored crops, None without faces
    crops: Tensor | None = field(default=None, repr=False)  # the aligned crops that were restored


@torch.no_grad()
def restore_crops(weights: LafrWeights, crops: Tensor, host: HostModel) -> Tensor:
    """Aligned face crops -> restored crops through the host's VAE and UNet (one chunk).

    The adapter runs when the file has one (stage "1+2"); a stage-"2" file goes straight from the
    VAE latent to the UNet step, as the ComfyUI node does."""
    require_unet_step(weights, "LAFR")
    scale = weights.latent_scale
    raw = host.encode(crops.to(host.device)).float()
    if weights.aligner is not None:
        raw = align_raw_latent(weights, raw, host.device)
    x0 = host.denoise(raw * scale).float()
    return host.decode(x0 / scale).float().clamp(0, 1)


def face_detector(options: FaceOptions = FaceOptions(), select: str | Sequence[int] | None = None) -> Callable[[Tensor], FaceSet]:
    """images [b, H, W, C] -> FaceSet with the options' detector, threshold, min size and
    weights, resolved once (video calls it per chunk of frames). `select` overrides the options'
    (video detects "all": its tracks are selected later)."""
    detector = resolve_detector(options.detector, options.detector_weights)
    # a RetinaFace weights folder must not reach MTCNN ("auto" may fall back to it)
    weights = options.detector_weights if detector.startswith("retinaface") else None
    chosen = options.select if select is None else select

    @torch.no_grad()
    def detect(images: Tensor) -> FaceSet:
        return detect_faces(images, detector=detector, threshold=options.threshold, min_size=options.min_size,
                            select=chosen, weights=weights)

    return detect


@torch.no_grad()
def find_and_align(images: Tensor, options: FaceOptions = FaceOptions()) -> tuple[Tensor, FaceSet]:
    """Detect and align with the options' detector, on the images' device: (crops, faces)."""
    return align_faces(images, face_detector(options)(images), size=options.crop_size)


@torch.no_grad()
def restore_images(
    images: Tensor,
    weights: LafrWeights,
    host: HostModel,
    options: FaceOptions = FaceOptions(),
    chunk: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    faces: FaceSet | None = None,
) -> ChainResult:
    """restore_faces with LAFR's engine on the host's VAE and UNet (see restore_faces)."""
    return restore_faces(images, lafr_engine(weights, host), options, chunk, should_stop, progress, faces)


@torch.no_grad()
def restore_faces(
    images: Tensor,
    engine: CropEngine,
    options: FaceOptions = FaceOptions(),
    chunk: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    faces: FaceSet | None = None,
) -> ChainResult:
    """Restore every face of images [B, H, W, C] float 0..1 (C in 1, 3, 4) with `engine`.

    All faces go to the engine together (chunk None), halved on the host's out-of-memory error.
    `should_stop()` is asked before detection and before every chunk; when it says stop,
    ChainInterrupted is raised and nothing is pasted. `progress(done, total)` counts faces. No
    face found: the images come back unchanged (a clone), never an error.

    `faces`: detections made already (e.g. lafr_core.video.temporal_faces on a frame batch, or
    one window of a stream), used instead of detecting: they are aligned on these images, so
    the crops and paste masks follow the given (smoothed) landmarks."""
    stop = should_stop or (lambda: False)

    def check_stop() -> None:
        if stop():
            raise ChainInterrupted(f"{engine.name}: stopped by the host")

    check_stop()
    pixels = images.to(engine.device)
    if faces is None:
        crops, faces = find_and_align(pixels, options)
    else:
        if faces.num_images != pixels.shape[0]:
            raise ValueError(f"{engine.name}: the faces given are for {faces.num_images} images, the batch has {pixels.shape[0]}")
        crops, faces = align_faces(pixels, faces.to(pixels.device), size=options.crop_size)
    if len(faces) == 0:
        return ChainResult(images.clone(), faces.to(images.device))

    total = len(faces)
    restored = run_in_chunks(
        engine.restore,
        crops,
        chunk=chunk,
        oom_errors=engine.oom_errors,
        before_chunk=check_stop,
        after_chunk=(lambda done: progress(done, total)) if progress is not None else None,
        on_oom=engine.on_oom,
    )
    check_stop()
    out = paste_faces(
        pixels, restored, faces, strength=options.strength, colour_correction=options.colour_correction,
        feather=options.feather, source_crops=crops, mask=options.mask, mask_weights=options.mask_weights,
    )
    return ChainResult(out.to(images.device), faces.to(images.device), restored.to(images.device), crops.to(images.device))
