"""`python -m lafr_core restore INPUT... -o OUT`: detect -> align -> restore -> paste back, per photo
or per video frame (lafr_core.video: faces tracked and smoothed over time by default).

Two engines restore the aligned crops: LAFR's (LAFR and converted OSEDiff files, on SD2.1-base)
and InterLCM's (a converted InterLCM file, on LCM Dreamshaper v7 + CLIP ViT-B/16). The weights
file says which (`lafr.engine`); `--engine` only confirms it or picks the file from the model
folders. `find_weights` is the lookup both engines (and `lafr eval`) share.

Every photo goes through lafr_core.host_chain.restore_faces, the chain the ComfyUI node and the
A1111/Forge restorer run; the CLI's "host" is the standalone pipeline (LafrPipeline.host_model).
What restores is injected as a :class:`Restorer` (an engine of host_chain), so
tests (and other callers) run the whole flow with any model. Without SD2.1-base or LAFR weights
the command still detects and aligns every photo and writes the preview (the user sees what would
be restored), then exits non-zero with a message naming each missing weight and every place it
looked.

Videos stream through lafr_core.video.io.transcode (PyAV: frame rate, time base, size, pixel
format and audio packets kept; a temporary file replaced only when complete). Under
`accelerate launch` / `torchrun` each process restores its share of the items
(lafr_core.scale_out), on its own device.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from .face import (COLOUR_CORRECTIONS, DEFAULT_FEATHER, DEFAULT_MIN_SIZE, DETECTORS, FILE_COLOUR_FIX, MASKS, FaceError,
                   colour_for, parse_select)
from .host_chain import CropEngine, FaceOptions, HostModel, find_and_align, lafr_engine, restore_faces
from .interlcm.weights import DEFAULT_COLOUR_FIX as INTERLCM_COLOUR_FIX
from .image_io import IMAGE_SUFFIXES, ImageReadError, LoadedImage, output_format, read_image, write_image
from .lafr_file import ENGINES as FILE_ENGINES, LafrWeights
from .scale_out import ProcessSlot
from .video.io import VIDEO_SUFFIXES, VideoError, is_video
from .video.restore import FrameCounts, VideoOptions
from .model_paths import (CLIP_B16_HUB_ID, LCM_HUB_ID, SD21_HUB_ID, base_model_candidates, clip_vision_candidates, file_engine,
                          lafr_file_candidates, lcm_candidates, local_source, looks_like_hub_id, search_folders)

EXIT_MISSING_WEIGHTS = 2  # distinct from 1 (some image failed) so scripts can tell them apart
PREVIEW_SUFFIX = ".preview.png"
ENGINES = ("lafr", "interlcm")  # --engine: LAFR's runs LAFR and converted OSEDiff files, InterLCM's its converted files
FILE_COLOUR = "file"  # --colour-correction's spelling of FILE_COLOUR_FIX (the weights file's own)
INTERLCM_CONVERT = "`lafr convert visual_encoder_1step.pth spatial_encoder_1step.pth -o ~/ComfyUI/models/lafr/`"


@dataclass(frozen=True)
class RestoreOptions:
    """Every knob of the restore command: the chain's face options plus what only the CLI has."""

    face: FaceOptions = FaceOptions()
    device: str | None = None
    batch_size: int | None = None  # faces per UNet forward (None: all of a photo's faces at once)
    save_crops: bool = False
    save_preview: bool = False
    video: VideoOptions = VideoOptions()
    progress: bool = True  # tqdm bars (per video: frames/s and ETA)


@dataclass(frozen=True)
class Restorer:
    """What restores the faces: an engine of host_chain (LAFR's on a host's VAE and UNet, or
    another engine's); the face pipeline around it is the same for every engine."""

    engine: CropEngine
    colour_fix: str = "none"  # the weights file's own colour fix: what --colour-correction file runs

    @classmethod
    def lafr(cls, weights: LafrWeights, host: HostModel) -> "Restorer":
        """A LAFR (or converted OSEDiff) file on a host lending its VAE and UNet."""
        return cls(lafr_engine(weights, host), weights.colour_fix)

    @classmethod
    def interlcm(cls, pipe, batch_size: int | None = None, colour_fix: str = INTERLCM_COLOUR_FIX) -> "Restorer":
        """An InterLCMPipeline (lafr_core.interlcm.engine) with its file's colour fix."""
        from .interlcm.engine import interlcm_engine

        return cls(interlcm_engine(pipe, batch_size), colour_fix)


@dataclass
class ImageReport:
    source: Path
    output: Path | None = None
    faces: int = 0
    skipped_small: int = 0
    previews: list[Path] = field(default_factory=list)
    error: str | None = None
    frames: FrameCounts | None = None  # videos only
    note: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.source}: ERROR {self.error}"
        if self.frames is not None:
            f = self.frames
            text = f"{self.source}: {f.frames} frames, faces in {f.with_faces} ({f.faces} in all)"
            return text + (f" -> {self.output}" if self.output is not None else "") + (f" ({self.note})" if self.note else "")
        text = f"{self.source}: {self.faces} face{'s' if self.faces != 1 else ''}"
        if self.skipped_small:
            text += f", {self.skipped_small} too small skipped"
        if self.output is not None:
            text += " -> " + str(self.output) + (" (no face: copied unchanged)" if self.faces == 0 else "")
        return text


# --------------------------------------------------------------------------- inputs and outputs


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named directly, plus the images and videos directly inside named folders (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def output_paths(sources: Sequence[Path], out: Path) -> list[Path]:
    """Where each result goes: `out` itself for one input when `out` has an image (video) suffix
    and the input is an image (video), else out/<name> (a second input with the same name gets
    _2, _3...)."""
    if len(sources) == 1 and out.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES and not out.is_dir():
        if is_video(sources[0]) != is_video(out):
            kind = "a video" if is_video(sources[0]) else "an image"
            raise ValueError(f"{out}: {sources[0]} is {kind}; give -o {'a video file (.mp4, .mkv...)' if is_video(sources[0]) else 'an image file'} or a folder")
        targets = [out]
    else:
        seen: dict[str, int] = {}
        targets = []
        for src in sources:
            count = seen[src.name] = seen.get(src.name, 0) + 1
            name = src.name if count == 1 else f"{src.stem}_{count}{src.suffix}"
            targets.append(out / name)
    for src, dst in zip(sources, targets, strict=True):
        if src.resolve() == dst.resolve():
            raise ValueError(f"{dst}: the output would overwrite its input; choose another -o")
    return targets


# --------------------------------------------------------------------------- finding the weights


@dataclass(frozen=True)
class WeightsLookup:
    """What find_weights found for one engine. `lafr` is the weights file (a LAFR-format file, or a
    converted InterLCM file when engine is "interlcm"); `base` is SD2.1-base (LAFR's engine),
    `lcm` and `clip_vision` InterLCM's base models."""

    base: str | None
    lafr: Path | None
    missing: str | None  # the message when any is missing
    engine: str = "lafr"
    lcm: str | None = None
    clip_vision: str | None = None


def _usable_base(candidate: Path | str) -> bool:
    from .doctor import check_base_checkpoint

    status = check_base_checkpoint(candidate)
    return not status.startswith(("not usable", "unreadable"))


def engine_of(path: Path) -> str | None:
    """The --engine that runs a weights file: "interlcm" for a converted InterLCM file, "lafr" for
    any LAFR-format file (LAFR, OSEDiff), None when its header cannot be read (the loader says why)."""
    engine = file_engine(path)
    return None if engine is None else "interlcm" if engine == "interlcm" else "lafr"


def _find_weights_file(lafr: str | None, wanted: str | None, folders) -> tuple[Path | None, list[str]]:
    """(the file, the places looked). From the model folders: the first file of the `wanted`
    engine; with none wanted, the first LAFR-format file, else the first InterLCM one."""
    if lafr:
        return (Path(lafr) if Path(lafr).is_file() else None), [f"--lafr {lafr}"]
    places = [f"LAFR_MODEL ({os.environ.get('LAFR_MODEL') or 'not set'})"] + [str(p) for p in folders.lafr]
    candidates = lafr_file_candidates()
    engines = [engine_of(c) or "lafr" for c in candidates]  # unreadable: the LAFR loader names the problem
    for engine in [wanted] if wanted else list(ENGINES):
        for candidate, its in zip(candidates, engines):
            if its == engine:
                return candidate, places
    return None, places


def _describe_file_engine(path: Path) -> str:
    engine = file_engine(path)
    label = "a converted InterLCM file" if engine == "interlcm" else f"a {FILE_ENGINES.get(engine, engine)} file"
    return f"'{path}' is {label} (lafr.engine {engine!r})"


def choose_engine(requested: str | None, file: Path | None, lcm: str | None = None, clip_vision: str | None = None,
                  base: str | None = None) -> str:
    """The engine for these flags: the file's own; `requested` (--engine) must agree with it.
    Without a readable file: --engine, else what the model flags point at (--lcm / --clip-vision:
    InterLCM), else LAFR. A flag of the other engine is refused in one line."""
    found = engine_of(file) if file is not None else None
    if requested and found and requested != found:
        fix = ("give a converted InterLCM file (" + INTERLCM_CONVERT + ") or leave --engine out"
               if requested == "interlcm" else "leave --engine out (the file selects InterLCM) or give a LAFR file")
        raise ValueError(f"--engine {requested}: {_describe_file_engine(file)}; {fix}")
    engine = requested or found or ("interlcm" if lcm or clip_vision else "lafr")
    if engine == "interlcm" and base:
        raise ValueError("--base is SD2.1-base, LAFR's base model; InterLCM runs on LCM Dreamshaper v7: give --lcm (and --clip-vision) instead")
    if engine == "lafr" and (lcm or clip_vision):
        flag = "--lcm" if lcm else "--clip-vision"
        what = _describe_file_engine(file) + ", which runs" if file is not None and found else "LAFR runs"
        raise ValueError(f"{flag} is InterLCM's; {what} on SD2.1-base (--base). For InterLCM give a converted InterLCM file (--lafr) or --engine interlcm")
    return engine


def _find_base(base: str | None, folders) -> tuple[str | None, list[str]]:
    base_places = []
    if base:
        base_places.append(f"--base {base}")
        exists = Path(base).exists() or looks_like_hub_id(base)
        return (base if exists else None), base_places
    base_places.append(f"LAFR_BASE_MODEL ({os.environ.get('LAFR_BASE_MODEL') or 'not set'})")
    base_places += [str(p) for p in folders.base]
    base_places.append(f"hub cache {folders.hub_cache} ({SD21_HUB_ID})")
    usable = [c for c in base_model_candidates() if _usable_base(c)]
    return (str(usable[0]) if usable else None), base_places


def _find_model(flag: str, value: str | None, env: str, roots, hub_cache: Path, hub_id: str, marker: str,
                candidates, what: str) -> tuple[str | None, list[str]]:
    """An InterLCM base model: the flag's folder or hub id (a cached hub id from its snapshot),
    else the env var, the model folders and the hub cache (`candidates`, checked by config)."""
    if value:
        return local_source(value, marker), [f"{flag} {value}"]
    places = [f"{env} ({os.environ.get(env) or 'not set'})"]
    places += [f"{root} (and its subfolders: {what})" for root in roots]
    places.append(f"hub cache {hub_cache} ({hub_id})")
    found = candidates()
    return (str(found[0]) if found else None), places


def _missing(what: str, places: list[str], fix: str) -> str:
    return f"{what}: none found. Looked in:\n    " + "\n    ".join(places) + f"\n  {fix}"


def find_weights(base: str | None, lafr: str | None, engine: str | None = None, lcm: str | None = None,
                 clip_vision: str | None = None) -> WeightsLookup:
    """The weights file and its engine's base models from the flags, else env vars and the model
    folders. Raises ValueError (one line) when the flags and the file disagree on the engine."""
    folders = search_folders()
    wanted = engine or ("interlcm" if lcm or clip_vision else "lafr" if base else None)
    found_file, file_places = _find_weights_file(lafr, wanted, folders)
    chosen = choose_engine(engine, found_file, lcm, clip_vision, base)
    problems = []
    found_base = found_lcm = found_clip = None
    if chosen == "lafr":
        found_base, base_places = _find_base(base, folders)
        if found_base is None:
            problems.append(_missing("SD2.1-base weights", base_places,
                                     "Put v2-1_512-ema-pruned.safetensors in one of those folders or pass --base."))
        if found_file is None:
            problems.append(_missing("LAFR weights", file_places, "Train them with `python -m train` (none are published) and pass --lafr."))
    else:
        if found_file is None:
            problems.append(_missing("InterLCM weights", file_places,
                                     f"Convert InterLCM's release files (github.com/sen-mao/InterLCM, CC BY-NC 4.0): {INTERLCM_CONVERT}, or pass --lafr."))
        found_lcm, lcm_places = _find_model("--lcm", lcm, "LAFR_LCM_MODEL", folders.lcm, folders.hub_cache, LCM_HUB_ID,
                                            "unet/config.json", lcm_candidates, "a diffusers folder with unet/ and vae/")
        if found_lcm is None:
            problems.append(_missing("LCM Dreamshaper v7 (InterLCM's UNet and VAE)", lcm_places,
                                     f"Download its UNet and VAE (4 GB): `hf download {LCM_HUB_ID} --include 'unet/config.json' 'unet/*.safetensors' "
                                     "'vae/config.json' 'vae/*.safetensors'` (then found in the hub cache, offline too), or pass --lcm FOLDER."))
        found_clip, clip_places = _find_model("--clip-vision", clip_vision, "LAFR_CLIP_VISION", folders.clip_vision, folders.hub_cache,
                                              CLIP_B16_HUB_ID, "config.json", clip_vision_candidates, "a transformers CLIP ViT-B/16 folder")
        if found_clip is None:
            problems.append(_missing("CLIP ViT-B/16 (InterLCM's image encoder)", clip_places,
                                     f"Download it (600 MB): `hf download {CLIP_B16_HUB_ID} config.json pytorch_model.bin` (then found in the hub cache), "
                                     "or pass --clip-vision FOLDER."))
    missing = None
    if problems:
        missing = "missing weights: faces were detected and aligned (see the previews) but not restored.\n  " + "\n  ".join(problems)
    return WeightsLookup(found_base, found_file, missing, chosen, found_lcm, found_clip)


def lookup_for(args: argparse.Namespace) -> WeightsLookup:
    """find_weights for a parsed command line (restore's or eval's: add_engine_arguments)."""
    return find_weights(args.base, args.lafr, engine=args.engine, lcm=args.lcm, clip_vision=args.clip_vision)


def require_engine_flags(lookup: WeightsLookup, seed: int | None = None, prompt: str | None = None, seed_flag: str = "--seed") -> None:
    """Flags that only one engine has: --seed is InterLCM's noise, --prompt LAFR's text."""
    if lookup.engine == "lafr" and seed is not None:
        raise ValueError(f"{seed_flag} seeds InterLCM's noise; LAFR restores deterministically (a file's own draw is lafr.latent_seed)")
    if lookup.engine == "interlcm" and prompt is not None:
        raise ValueError("--prompt is LAFR's: InterLCM takes no text, its prompt tokens are made from the face by CLIP")


def pipeline_restorer(base: str, lafr: Path, device: str | None, prompt: str | None = None) -> Restorer:
    """A Restorer backed by the standalone diffusers pipeline (imported only here); `prompt`
    replaces the file's prompt (encoded by the base's text encoder)."""
    from .lafr_file import load_lafr
    from .pipeline import LafrPipeline

    from .text_encoder import TextEncoderUnavailable

    weights = load_lafr(lafr)
    try:
        pipe = LafrPipeline.from_pretrained(base, weights, device=device, prompt=prompt)
    except TextEncoderUnavailable as exc:
        raise ValueError(f"--prompt needs SD2.1's text encoder: {exc}" if prompt is not None else str(exc)) from None
    return Restorer.lafr(weights, pipe.host_model())


def interlcm_restorer(lookup: WeightsLookup, device: str | None, batch_size: int | None = None, seed: int | None = None) -> Restorer:
    """InterLCMPipeline on the found LCM Dreamshaper v7, CLIP ViT-B/16 and converted file, its
    noise seeded with `seed` (default 0); the file's own steps (its weights' schedule)."""
    from .interlcm.engine import file_colour_fix, load_interlcm_pipeline

    pipe = load_interlcm_pipeline(lookup.lcm, lookup.clip_vision, lookup.lafr, seed=seed or 0, device=device)
    return Restorer.interlcm(pipe, batch_size, file_colour_fix(lookup.lafr))


# --------------------------------------------------------------------------- one image


def process_image(source: Path, target: Path, options: RestoreOptions, restorer: Restorer | None) -> ImageReport:
    """Restore the faces of one photo into `target` (or only preview when restorer is None)."""
    report = ImageReport(source)
    try:
        image = read_image(source)
    except ImageReadError as exc:
        report.error = str(exc)
        return report
    device = restorer.engine.device if restorer is not None else torch.device(options.device or image.pixels.device)
    pixels = image.pixels.to(device)
    crops = restored = output = None
    if restorer is None:
        crops, faces = find_and_align(pixels, options.face)
    else:
        result = restore_faces(pixels, restorer.engine, options.face, chunk=options.batch_size)
        faces, restored, crops = result.faces, result.restored, result.crops
        if len(faces) == 0:
            _pass_through(source, target, image)
        else:
            output = result.images
            write_image(target, output.cpu(), image)
        report.output = target
    report.faces, report.skipped_small = len(faces), sum(faces.skipped_small)
    if crops is None:
        crops = pixels.new_zeros(0, options.face.crop_size, options.face.crop_size, 3)
    report.previews = _write_extras(image, target, faces, crops, restored, output, options, restorer is None)
    return report


def _pass_through(source: Path, target: Path, image: LoadedImage) -> None:
    """No face: the photo unchanged, byte for byte when -o keeps its format."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if output_format(target, image.format) == image.format:
        shutil.copyfile(source, target)
    else:
        write_image(target, image.pixels, image)  # only converted to the format -o asks for


def _write_extras(image: LoadedImage, target: Path, faces, crops, restored, output, options: RestoreOptions, no_model: bool) -> list[Path]:
    from PIL import Image

    from .image_io import to_uint8_rgb
    from .preview import preview_sheet

    written = []
    stem = target.parent / target.stem
    target.parent.mkdir(parents=True, exist_ok=True)
    if options.save_crops:
        for i, crop in enumerate(crops):
            path = Path(f"{stem}.face{i}.png")
            Image.fromarray(to_uint8_rgb(crop.cpu())).save(path)
            written.append(path)
            if restored is not None:
                path = Path(f"{stem}.face{i}.restored.png")
                Image.fromarray(to_uint8_rgb(restored[i].cpu())).save(path)
                written.append(path)
    if options.save_preview or no_model:
        path = Path(f"{stem}{PREVIEW_SUFFIX}")
        sheet = preview_sheet(image.pixels[0], faces.to("cpu"), 0, crops.cpu(), None if restored is None else restored.cpu(),
                              None if output is None else output[0].cpu())
        sheet.save(path)
        written.append(path)
    return written


# --------------------------------------------------------------------------- one video


def process_video(source: Path, target: Path, options: RestoreOptions, restorer: Restorer | None, position: int = 0) -> ImageReport:
    """Restore every frame of one video into `target` (streamed; nothing written on failure)."""
    from tqdm import tqdm

    from .video.io import probe, transcode
    from .video.restore import restore_frames

    report = ImageReport(source)
    if restorer is None:
        report.error = "not restored: the weights are missing (see below)"
        return report
    counts = FrameCounts()
    notes: list[str] = []
    try:
        info = probe(source)
        with tqdm(total=info.frames, unit="frame", desc=source.name, leave=False, position=position,
                  disable=not options.progress, dynamic_ncols=True) as bar:
            transcode(
                source, target,
                lambda frames: restore_frames(frames, restorer.engine, options.face, options.video,
                                              chunk=options.batch_size, counts=counts),
                on_frame=lambda _n: bar.update(1),
                on_note=notes.append,
            )
    except VideoError as exc:
        report.error = str(exc).removeprefix(f"{source}: ")
        return report
    report.output, report.frames = target, counts
    report.faces = counts.faces
    mode = "temporal" if options.video.temporal else "per frame"
    report.note = "; ".join([mode] + [n.removeprefix(f"{source}: ") for n in notes])
    return report


# --------------------------------------------------------------------------- the command


def run_restore(
    inputs: Sequence[str | Path],
    out: str | Path,
    options: RestoreOptions = RestoreOptions(),
    restorer: Restorer | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    slot: ProcessSlot | None = None,
) -> list[ImageReport]:
    """Every input photo through `process_image` and video through `process_video`, with tqdm
    bars; returns one report each. Under a launcher (`slot`, default from the environment) only
    this process's share of the items, with the output paths of the whole list."""
    from tqdm import tqdm

    slot = slot or ProcessSlot.from_env()
    sources = collect_inputs(inputs)
    pairs = slot.take(list(zip(sources, output_paths(sources, Path(out)), strict=True)))
    log = log or tqdm.write
    progress = progress and options.progress and slot.rank == 0  # one set of bars per terminal
    options = replace(options, progress=progress)
    reports = []
    for source, target in tqdm(pairs, unit="item", disable=not progress or len(pairs) < 2):
        if is_video(source):
            report = process_video(source, target, options, restorer, position=1 if len(pairs) > 1 else 0)
        else:
            report = process_image(source, target, options, restorer)
        log(slot.prefix() + report.line())
        reports.append(report)
    return reports


def select_argument(text: str) -> str | tuple[int, ...]:
    """--select's argparse type: lafr_core.face.parse_select, failing the argparse way."""
    try:
        return parse_select(text, name="--select")
    except FaceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (png, jpg, webp), videos (mp4, mov, mkv, webm, avi) or folders of them")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder (or a file name for one input)")
    parser.add_argument("--lafr", help="the weights: a LAFR .safetensors file, a converted OSEDiff file or a converted InterLCM file "
                                       "(default: LAFR_MODEL, then the model folders: the first LAFR-format file, else the first InterLCM one)")
    parser.add_argument("--base", help="LAFR / OSEDiff: SD2.1-base checkpoint, diffusers folder or hub id (default: LAFR_BASE_MODEL, model folders)")
    add_engine_arguments(parser, seed_flags=("--seed",))
    parser.add_argument("--detector", choices=DETECTORS, default="auto", help="face detector (auto: RetinaFace if its weights are here, else bundled MTCNN)")
    parser.add_argument("--detector-weights", help="folder (or file) of facexlib weights: RetinaFace, and ParseNet for --mask parsenet (default: the usual model folders)")
    parser.add_argument("--threshold", type=float, help="minimum detection confidence (default: the detector's)")
    parser.add_argument("--min-size", type=float, default=DEFAULT_MIN_SIZE, help="skip faces smaller than this many pixels")
    parser.add_argument("--select", type=select_argument, default="all",
                        help="all, largest, or face indices like 0,2: per photo 0 = largest; in a temporal video, track ids (0 = the first face to appear)")
    parser.add_argument("--strength", type=float, default=1.0, help="blend of the restored face, 0..1")
    parser.add_argument("--colour-correction", "--color-correction", dest="colour_correction", choices=(FILE_COLOUR, *COLOUR_CORRECTIONS),
                        default=FILE_COLOUR,
                        help="match the restored face's colours to the input face (file: the weights file's own: none for LAFR, "
                             "adain for OSEDiff, wavelet for InterLCM)")
    parser.add_argument("--feather", type=float, default=DEFAULT_FEATHER, help="soft edge of the face mask, fraction of the face radius")
    parser.add_argument("--mask", choices=MASKS, default="landmarks",
                        help="paste mask: landmarks (feathered ellipse, no weights) or parsenet (needs parsing_parsenet.pth locally)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=8, help="faces per network forward")
    parser.add_argument("--save-crops", action="store_true", help="also write the aligned (and restored) 512px crops")
    parser.add_argument("--save-preview", action="store_true", help="also write NAME.preview.png: detections, crops, result")
    parser.add_argument("--prompt", help="restore with this text instead of the file's prompt (encoded by the base's SD2.1 text encoder: "
                                         "--base must be a diffusers folder or hub id)")
    video = parser.add_argument_group("videos")
    video.add_argument("--temporal", action=argparse.BooleanOptionalAction, default=True,
                       help="track faces across frames and smooth their landmarks over time (default: on; --no-temporal: each frame on its own)")
    video.add_argument("--sigma", type=float, default=VideoOptions.sigma,
                       help="temporal smoothing strength in frames (Gaussian; 0: tracks and gap filling only)")
    video.add_argument("--max-gap", type=int, default=VideoOptions.max_gap, help="frames a face may go undetected and keep its track (filled in)")
    video.add_argument("--window", type=int, default=VideoOptions.window, help="frames detected and restored together (memory grows with it, not with the clip)")


def add_engine_arguments(parser: argparse.ArgumentParser, seed_flags: tuple[str, ...]) -> None:
    """--engine, --lcm, --clip-vision and InterLCM's noise seed (`seed_flags`: eval's --seed is
    its degradation seed), shared by `restore` and `eval` (read back by lookup_for)."""
    interlcm = parser.add_argument_group("engine (InterLCM)")
    interlcm.add_argument("--engine", choices=ENGINES, default=None,
                          help="which engine restores (default: the weights file's lafr.engine: a converted InterLCM file selects "
                               "interlcm by itself, LAFR and OSEDiff files lafr); given, it must match the file. The file's own "
                               "step count is used (its weights are trained for one schedule)")
    interlcm.add_argument("--lcm", metavar="FOLDER_OR_ID", help=f"InterLCM: LCM Dreamshaper v7 as a diffusers folder (unet/, vae/) or hub id {LCM_HUB_ID} "
                                        "(default: LAFR_LCM_MODEL, ComfyUI models/diffusers, A1111/Forge models/diffusers, the hub cache)")
    interlcm.add_argument("--clip-vision", metavar="FOLDER_OR_ID", help=f"InterLCM: CLIP ViT-B/16 as a transformers folder or hub id {CLIP_B16_HUB_ID} "
                                                "(default: LAFR_CLIP_VISION, ComfyUI models/clip_vision, A1111/Forge models/clip_vision, the hub cache)")
    interlcm.add_argument(*seed_flags, dest="noise_seed", type=int, default=None, metavar="N", help="InterLCM: the seed of its noise (default 0)")


def restore_options(args: argparse.Namespace, device: str, file_colour_fix: str = "none") -> RestoreOptions:
    """The parsed flags as RestoreOptions; --colour-correction file becomes `file_colour_fix`."""
    choice = FILE_COLOUR_FIX if args.colour_correction == FILE_COLOUR else args.colour_correction
    face = FaceOptions(
        detector=args.detector, threshold=args.threshold, min_size=args.min_size, select=args.select, strength=args.strength,
        colour_correction=colour_for(choice, file_colour_fix), feather=args.feather, detector_weights=args.detector_weights,
        # a --detector-weights folder is searched for ParseNet too (a file is RetinaFace's only)
        mask=args.mask, mask_weights=args.detector_weights if args.detector_weights and Path(args.detector_weights).is_dir() else None,
    )
    video = VideoOptions(temporal=args.temporal, sigma=args.sigma, max_gap=args.max_gap, window=args.window)
    return RestoreOptions(face=face, device=device, batch_size=args.batch_size, save_crops=args.save_crops,
                          save_preview=args.save_preview, video=video)


def process_device(requested: str | None, slot: ProcessSlot) -> str:
    """--device, with a bare 'cuda' meaning this process's GPU (LOCAL_RANK) under a launcher."""
    if requested is None:
        return slot.default_device()
    if requested == "cuda" and slot.distributed:
        return f"cuda:{slot.local_rank}"
    return requested


def build_restorer(args: argparse.Namespace, device: str) -> tuple[Restorer | None, WeightsLookup]:
    """What restores for these flags (None when weights are missing: the lookup says which).
    The one place a new way to restore (another engine, another host) is chosen."""
    lookup = lookup_for(args)
    require_engine_flags(lookup, seed=args.noise_seed, prompt=args.prompt)
    if lookup.missing is not None:
        return None, lookup
    if lookup.engine == "interlcm":
        return interlcm_restorer(lookup, device, args.batch_size, args.noise_seed), lookup
    return pipeline_restorer(lookup.base, lookup.lafr, device, prompt=args.prompt), lookup


def main(args: argparse.Namespace, restorer: Restorer | None = None) -> int:
    """The CLI: returns 0, 1 (an item failed), EXIT_MISSING_WEIGHTS or 130 (Ctrl-C)."""
    lookup = None
    try:
        slot = ProcessSlot.from_env()
        device = process_device(args.device, slot)
        if restorer is None:
            restorer, lookup = build_restorer(args, device)
        options = restore_options(args, device, restorer.colour_fix if restorer is not None else "none")
        reports = run_restore(args.inputs, args.output, options, restorer, slot=slot)
    except (FaceError, FileNotFoundError, ValueError) as exc:  # bad weights, detector, inputs: one clear line
        print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        print("interrupted: the item in progress was not written (finished items are kept)")
        return 130
    if lookup is not None and lookup.missing is not None:
        print(lookup.missing)
        return EXIT_MISSING_WEIGHTS
    return 1 if any(r.error for r in reports) else 0
