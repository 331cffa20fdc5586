"""`python -m train export`: write the LAFR file of a run's checkpoint (DESIGN §4).

A checkpoint's weights.safetensors already is a LAFR file (the trainer saves checkpoints in the
export format), so export loads it through `load_lafr` (every check a host runs) and writes it
again, atomically, where the user wants it: stage-1 runs give an adapter-only file (stages "1",
for Latent Align only), stage-2 runs the adapter + LoRA + prompt file (stages "1+2").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lafr_core.lafr_file import load_lafr, save_lafr

from .checkpoint import WEIGHTS, list_checkpoints, resolve_resume


def export_checkpoint(run_dir: str | Path, output: str | Path | None = None, checkpoint: str = "latest") -> Path:
    """Re-save `checkpoint` ('latest' or a folder) of `run_dir` as a LAFR file; returns its path.
    Default output: <run_dir>/lafr_stage1.safetensors or <run_dir>/lafr.safetensors."""
    run_dir = Path(run_dir)
    source = resolve_resume(run_dir, checkpoint)
    if source is None:
        found = ", ".join(p.name for _, p in list_checkpoints(run_dir)) or "none"
        raise FileNotFoundError(f"{run_dir}: no checkpoint to export (checkpoints found: {found})")
    weights = load_lafr(source / WEIGHTS)
    if output is None:
        output = run_dir / ("lafr_stage1.safetensors" if weights.stages == "1" else "lafr.safetensors")
    return save_lafr(
        output,
        aligner=weights.aligner,
        kohya_lora=weights.kohya_lora,
        prompt_embeds=weights.prompt_embeds,
        meta={k: v for k, v in weights.meta.items() if k.startswith("lafr.")},
    )


def add_export_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run folder (--output_dir of stage1/stage2)")
    parser.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint folder (default: latest)")
    parser.add_argument("--output", default=None, help="LAFR file to write, ending in .safetensors (default: in the run folder)")
