"""`python -m train all|stage1|stage2|export ...` (also under `accelerate launch -m train ...`).

    python -m train all --data faces/ --output ComfyUI/models/lafr/mine.safetensors \
        --fs_checkpoint d3dfr/epoch_20.pth                # stage 1 + stage 2 + export; rerun to resume
    python -m train stage1 --data faces/ --output_dir runs/s1
    python -m train stage2 --data faces/ --output_dir runs/s2 --adapter runs/s1/lafr_stage1.safetensors \
        --fs_checkpoint d3dfr/epoch_20.pth
    python -m train stage2 --output_dir runs/s2 --resume latest      # after a crash or Ctrl-C
    python -m train export runs/s2 --output ComfyUI/models/lafr/my_lafr.safetensors
Every flag has a YAML twin (--config run.yaml, sections data/degrade/run/stage1/adapter/stage2);
`python -m train stage1 --help` lists them with the paper's defaults.
Before any model loads, every missing input (data, base model, prompt source, loss weights) is
listed at once and the command exits with code 2 (train/preflight.py).
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, add_config_flags, config_from_args
from .export import add_export_flags, export_checkpoint
from .loop import EXIT_INTERRUPTED

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train LAFR (stage 1: adapter, stage 2: LoRA) and export LAFR files.")
    commands = parser.add_subparsers(dest="command", required=True)
    from .run_all import add_all_flags

    text = "stage 1, stage 2 and export in one resumable command (rerun it to continue)"
    add_all_flags(commands.add_parser("all", help=text, description=text))
    for stage, text in (("stage1", "train the latent alignment adapter"), ("stage2", "train the conv LoRA of the pruned UNet")):
        add_config_flags(commands.add_parser(stage, help=text, description=text), stage)
    add_export_flags(commands.add_parser("export", help="write the LAFR file of a run's checkpoint"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .losses import MissingWeights
    from .preflight import check_inputs

    try:
        if args.command == "export":
            print(export_checkpoint(args.run_dir, args.output, args.checkpoint))
            return 0
        if args.command == "all":
            from .run_all import all_config_from_args, train_all

            outcome = train_all(all_config_from_args(args), args.output)
            return EXIT_INTERRUPTED if outcome.interrupted else 0
        config = config_from_args(args, args.command, validate=False)
        report = check_inputs(config, (args.command,))
        try:
            config.validate(check_inputs=False)
        except ConfigError as err:
            report.problems.append(str(err))
        report.raise_if_any()
        for note in report.notes:
            print(note)
        if args.command == "stage1":
            from .stage1 import train_stage1

            result = train_stage1(config)
        else:
            from .stage2 import train_stage2

            result = train_stage2(config)
    except (ConfigError, MissingWeights, FileNotFoundError) as err:
        parser.exit(EXIT_USAGE, f"error: {err}\n")
    return EXIT_INTERRUPTED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
