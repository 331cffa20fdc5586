"""Start-up checks: every input a run needs, checked in seconds, before any model loads.

Why one list: a user who starts `python -m train all` without the SD2.1 weights, the LPIPS trunk
and the D3DFR checkpoint should learn about all three at once, not one per attempt (and never
hours later, when stage 2 starts after stage 1). `check_inputs` collects every problem with the
way to fix it; the CLI prints them together and exits with code 2, no traceback.

What is checked (stage 2's encoders only when their lambda is non-zero):
  * the data folders exist and hold images (how many is reported);
  * the SD2.1-base model: a local single-file checkpoint, a diffusers folder (unet/, vae/), or a
    hub id, found in the Hugging Face cache or downloadable (not when HF_HUB_OFFLINE=1);
  * stage 2: the stage-1 adapter file (unless this run trains it), the prompt embedding's source
    (--prompt_embeds FILE, or a text encoder: a diffusers folder or hub id with text_encoder/ and
    tokenizer/), the LPIPS trunk, the CLIP image encoder and the D3DFR checkpoint.
Only presence and form are checked here; loading still validates content (shapes, keys) and
reports its own precise errors.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from lafr_core.text_encoder import SINGLE_FILE_SUFFIXES

from .config import DEFAULT_BASE, ConfigError, TrainConfig
from .data import IMAGE_EXTENSIONS, list_image_files
BASE_FORMS = (
    "--base_model takes one of: a local SD2.1-base single-file checkpoint (e.g. v2-1_512-ema-pruned.safetensors), "
    "a diffusers folder (with unet/ and vae/), or a hub id such as "
    f"'{DEFAULT_BASE}' (downloaded once into the Hugging Face cache; needs internet, not HF_HUB_OFFLINE=1)"
)


class PreflightError(ConfigError):
    """Inputs are missing; the message lists every one with its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) to fix before training can start:\n{lines}")


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was found (printed on success)
    image_count: int = 0

    def raise_if_any(self) -> None:
        if self.problems:
            raise PreflightError(self.problems)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (also set by TRANSFORMERS_OFFLINE)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _looks_like_hub_id(source: str) -> bool:
    path = Path(source)
    return source.count("/") == 1 and not path.is_absolute() and not source.startswith(".") and path.suffix.lower() not in SINGLE_FILE_SUFFIXES


def _in_hub_cache(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def _hub_problem(source: str, files: list[str], what: str, fix: str) -> str | None:
    """None when `files` of hub repo `source` are cached or can be downloaded; else the problem."""
    missing = [f for f in files if not _in_hub_cache(source, f)]
    if not missing or not hub_offline():
        return None
    return f"{what}: hub id '{source}' is not in the Hugging Face cache (missing {', '.join(missing)}) and HF_HUB_OFFLINE is set. {fix}"


def check_data(folders, report: Preflight) -> None:
    if not folders:
        report.problems.append("no data: pass --data FOLDER [FOLDER ...] (folders of HQ face images, searched recursively)")
        return
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            report.problems.append(f"data folder '{folder}' does not exist or is not a folder (--data)")
            continue
        count = len(list_image_files([path]))
        if count == 0:
            report.problems.append(f"data folder '{folder}' holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}, searched recursively)")
        report.image_count += count
    if report.image_count:
        report.notes.append(f"data: {report.image_count} image file(s) in {', '.join(map(str, folders))}")


def check_base_model(source: str, report: Preflight) -> None:
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            report.problems.append(f"base model '{source}' is not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}). {BASE_FORMS}")
        else:
            report.notes.append(f"base model: single file {source}")
        return
    if path.is_dir():
        absent = [p for p in ("unet/config.json", "vae/config.json") if not (path / p).is_file()]
        if absent:
            report.problems.append(f"base model folder '{source}' is not a diffusers model (no {', '.join(absent)}). {BASE_FORMS}")
        else:
            report.notes.append(f"base model: diffusers folder {source}")
        return
    if _looks_like_hub_id(source):
        problem = _hub_problem(source, ["unet/config.json", "vae/config.json"], "base model", BASE_FORMS)
        if problem:
            report.problems.append(problem)
        else:
            report.notes.append(f"base model: hub id {source}")
        return
    report.problems.append(f"base model '{source}' not found: no such file or folder, and not a hub id. {BASE_FORMS}")


def check_prompt_source(config: TrainConfig, report: Preflight) -> None:
    """The prompt embedding of stage 2: a file, the run's saved one, or a text encoder."""
    from .prompt import PROMPT_FILE, default_text_encoder_source

    s2 = config.stage2
    if s2.prompt_embeds:
        if not Path(s2.prompt_embeds).is_file():
            report.problems.append(f"prompt embedding file '{s2.prompt_embeds}' not found (--prompt_embeds)")
        return
    if (config.output_dir / PROMPT_FILE).is_file():
        return
    source = s2.text_encoder or default_text_encoder_source(config.run.base_model)
    fix = (
        "Stage 2 encodes the prompt once with SD2.1's text encoder: pass --text_encoder with a diffusers SD2.1-base folder "
        "(text_encoder/, tokenizer/) or a reachable hub id, or --prompt_embeds FILE (any LAFR file or a safetensors with "
        "'prompt_embeds' [1, 77, 1024])"
    )
    path = Path(source)
    if path.is_dir():
        if not ((path / "text_encoder").is_dir() and (path / "tokenizer").is_dir()):
            report.problems.append(f"text encoder: '{source}' has no text_encoder/ and tokenizer/. {fix}")
    elif _looks_like_hub_id(source):
        problem = _hub_problem(source, ["text_encoder/config.json", "tokenizer/vocab.json"], "text encoder", fix)
        if problem:
            report.problems.append(problem)
    else:
        report.problems.append(f"text encoder '{source}' not found. {fix}")


def check_loss_weights(config: TrainConfig, report: Preflight) -> None:
    s2 = config.stage2
    if s2.lambda_lpips > 0:
        from .losses import _torchvision_url, lpips_trunk_file

        if importlib.util.find_spec("lpips") is None:
            report.problems.append("LPIPS loss: the lpips package is missing: pip install lpips (or set --lambda_lpips 0)")
        elif s2.lpips_backbone:
            if not Path(s2.lpips_backbone).is_file():
                report.problems.append(f"LPIPS trunk weights '{s2.lpips_backbone}' not found (--lpips_backbone); download {_torchvision_url(s2.lpips_net)} or set --lambda_lpips 0")
        elif not lpips_trunk_file(s2.lpips_net).is_file() and hub_offline():
            report.problems.append(
                f"LPIPS ({s2.lpips_net}) needs torchvision's ImageNet weights at '{lpips_trunk_file(s2.lpips_net)}' (offline: no download). "
                f"Download {_torchvision_url(s2.lpips_net)} to that path, pass --lpips_backbone FILE, or set --lambda_lpips 0"
            )
    if s2.lambda_id > 0:
        source, sub = s2.clip_encoder, s2.clip_subfolder
        config_file = f"{sub}/config.json" if sub else "config.json"
        fix = "pass --clip_encoder FOLDER (a CLIPVisionModelWithProjection; --clip_subfolder '' if the folder itself holds config.json) or set --lambda_id 0"
        if Path(source).exists():
            if not (Path(source) / config_file).is_file():
                report.problems.append(f"CLIP image encoder: '{Path(source) / config_file}' not found; {fix}")
        elif _looks_like_hub_id(source):
            problem = _hub_problem(source, [config_file], "CLIP image encoder", f"Download it (huggingface-cli download {source} --include '{sub}/*'), or {fix}")
            if problem:
                report.problems.append(problem)
        else:
            report.problems.append(f"CLIP image encoder '{source}' not found: no such folder and not a hub id; {fix}")
    if s2.lambda_fs > 0:
        if not s2.fs_checkpoint:
            report.problems.append(
                "facial-structure loss: no D3DFR checkpoint; pass --fs_checkpoint (Deep3DFaceRecon_pytorch "
                "checkpoints/<name>/epoch_20.pth) or set --lambda_fs 0"
            )
        elif not Path(s2.fs_checkpoint).is_file():
            report.problems.append(f"facial-structure regressor '{s2.fs_checkpoint}' not found (--fs_checkpoint); fix the path or set --lambda_fs 0")


def check_inputs(
    config: TrainConfig,
    stages: tuple[str, ...],
    *,
    need_base: bool = True,
    need_prompt: bool = True,
    need_encoders: bool = True,
    adapter_from_stage1: bool = False,
) -> Preflight:
    """Every problem with the inputs of `stages` ("stage1", "stage2"); nothing is loaded.
    need_base / need_prompt / need_encoders=False when the caller injects those models (tests,
    programmatic use); adapter_from_stage1: stage 2's adapter is produced by this run's stage 1."""
    report = Preflight()
    check_data(config.data.data, report)
    if need_base:
        check_base_model(config.run.base_model, report)
    if "stage2" in stages:
        adapter = config.stage2.adapter
        if not adapter_from_stage1:
            if not adapter:
                report.problems.append("stage 2 needs the stage-1 file: pass --adapter RUN1/lafr_stage1.safetensors")
            elif not Path(adapter).is_file():
                report.problems.append(f"stage-1 adapter file '{adapter}' does not exist (--adapter)")
        if need_prompt:
            check_prompt_source(config, report)
        if need_encoders:
            check_loss_weights(config, report)
    return report
