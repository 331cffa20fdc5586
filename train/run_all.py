"""`python -m train all`: stage 1, stage 2 and export in one resumable command.

    python -m train all --data faces/ --output ComfyUI/models/lafr/mine.safetensors

Layout: the work folder (--output_dir, default lafr_runs/<output name>/) holds stage1/ and
stage2/, each an ordinary run folder (config.yaml, checkpoints/, validation/), and cache/ that
both stages share (aligned crops, stage 1's latents). The work folder is deliberately not next
to the output: hosts list every .safetensors under models/lafr, checkpoints included.

Why rerunning the same command is the resume: every stage runs with `--resume latest`, so it
continues from its newest complete (atomic) checkpoint, and a stage whose LAFR file exists is
finished and skipped, after checking that its saved settings are still the ones asked for (a
changed setting would silently not apply). Stage 2 degrades on the fly (train/data.py: pairs
seeded by (seed, image, epoch)), so its data, like stage 1's, resumes exactly.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .config import CONFIG_NAME, ConfigError, TrainConfig, config_differences, from_dict, load_yaml, merge, section_overrides
from .export import export_checkpoint
from .loop import LoopResult
from .losses import LossEncoders, load_loss_encoders
from .models import BaseModels
from .preflight import check_inputs
from .stage1 import STAGE1_FILE
from .stage2 import STAGE2_FILE

WORK_ROOT = "lafr_runs"


@dataclass
class AllResult:
    output: Path | None  # the final LAFR file (None when interrupted)
    interrupted: bool
    results: dict[str, LoopResult | None]  # per stage; None: skipped (finished before)


def stage_configs(config: TrainConfig, work: str | Path) -> tuple[TrainConfig, TrainConfig]:
    """The stage-1 and stage-2 run configs of `all` in work folder `work`."""
    work = Path(work)
    data = replace(config.data, cache_dir=config.data.cache_dir or str(work / "cache"))
    c1 = replace(config, stage="stage1", data=data, run=replace(config.run, output_dir=str(work / "stage1"), resume="latest"))
    c2 = replace(
        config, stage="stage2", data=data,
        run=replace(config.run, output_dir=str(work / "stage2"), resume="latest"),
        stage2=replace(config.stage2, adapter=str(work / "stage1" / STAGE1_FILE)),
    )  # fmt: skip
    return c1, c2


def default_work_dir(output: str | Path) -> Path:
    return Path(WORK_ROOT) / Path(output).stem


def _finished(config: TrainConfig, file_name: str) -> bool:
    """The stage wrote its LAFR file; refuses when its saved settings differ from `config`."""
    if not (config.output_dir / file_name).is_file():
        return False
    saved = config.output_dir / CONFIG_NAME
    if saved.is_file():
        diffs = config_differences(from_dict(TrainConfig, load_yaml(saved), str(saved)), config)
        if diffs:
            raise ConfigError(
                f"{config.output_dir} finished with other settings: " + "; ".join(diffs)
                + ". Rerun with the same settings, or choose another --output_dir to train with these"
            )
    return True


def train_all(
    config: TrainConfig,
    output: str | Path,
    *,
    base: BaseModels | None = None,
    prompt_embeds: torch.Tensor | None = None,
    encoder_factory: Callable[[object], LossEncoders] = load_loss_encoders,
    on_step: Callable[[str, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> AllResult:
    """Stage 1, stage 2, export to `output`, resuming/skipping per the module doc.
    `config.run.output_dir` is the work folder. `base`, `prompt_embeds` and `encoder_factory`
    inject models (tests); `on_step(stage, step)` is called after every optimizer step."""
    from .stage1 import train_stage1
    from .stage2 import train_stage2

    output = Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"--output must be a .safetensors file (hosts list only those), got '{output}'")
    c1, c2 = stage_configs(config, config.run.output_dir or default_work_dir(output))
    done1 = _finished(c1, STAGE1_FILE)
    done2 = done1 and _finished(c2, STAGE2_FILE)
    if not done2:  # everything stage 2 needs is checked before stage 1 spends hours
        report = check_inputs(
            c2, ("stage2",), need_base=base is None, need_prompt=prompt_embeds is None,
            need_encoders=encoder_factory is load_loss_encoders, adapter_from_stage1=True,
        )  # fmt: skip
        for c in (c1, c2):
            try:
                c.validate(check_inputs=False)
            except ConfigError as err:
                if str(err) not in report.problems:  # a shared setting fails in both stages
                    report.problems.append(str(err))
        report.raise_if_any()
        for note in report.notes:
            log(note)
    log(f"work folder: {Path(c1.output_dir).parent} (rerun the same command to resume after an interruption)")

    hook = (lambda stage: (lambda step: on_step(stage, step))) if on_step else (lambda stage: None)
    results: dict[str, LoopResult | None] = {"stage1": None, "stage2": None}
    if done1:
        log(f"stage 1/2: finished before ({c1.output_dir / STAGE1_FILE}), skipped")
    else:
        log("stage 1/2: the latent alignment adapter")
        vae = base.vae if base is not None else None
        results["stage1"] = result = train_stage1(c1, vae=vae, on_step=hook("stage1"))
        if result.interrupted:
            log("interrupted in stage 1: rerun the same command to continue from its last checkpoint")
            return AllResult(None, True, results)
    if done2:
        log(f"stage 2/2: finished before ({c2.output_dir / STAGE2_FILE}), skipped")
    else:
        log("stage 2/2: the conv LoRA of the pruned UNet")
        results["stage2"] = result = train_stage2(c2, base=base, prompt_embeds=prompt_embeds, encoder_factory=encoder_factory, on_step=hook("stage2"))
        if result.interrupted:
            log("interrupted in stage 2: rerun the same command to continue from its last checkpoint")
            return AllResult(None, True, results)
    written = export_checkpoint(c2.output_dir, output)
    log(f"wrote {written}")
    return AllResult(written, False, results)


def add_all_flags(parser: argparse.ArgumentParser) -> None:
    from .config import add_config_flags

    parser.add_argument("--output", required=True, help="the LAFR file to write, e.g. ComfyUI/models/lafr/mine.safetensors")
    add_config_flags(parser, "all")


def all_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """defaults (the paper's) < --degrade_preset < --config YAML < flags. Not resumed from a
    saved config: the command line is the run, rerunning it is the resume."""
    from .config import _preset_overrides

    yaml_data = load_yaml(args.config) if getattr(args, "config", None) else {}
    preset = _preset_overrides(args, yaml_data)
    config = merge(merge(TrainConfig(stage="stage1"), preset), {**yaml_data, "stage": "stage1"})
    config = merge(config, section_overrides(args))
    if not config.run.output_dir:
        config = replace(config, run=replace(config.run, output_dir=str(default_work_dir(args.output))))
    return config

