"""`python -m train stage1|stage2|export ...` (also under `accelerate launch -m train ...`).

    python -m train stage1 --data faces/ --output_dir runs/s1
    python -m train stage2 --data faces/ --output_dir runs/s2 --adapter runs/s1/lafr_stage1.safetensors \
        --fs_checkpoint d3dfr/epoch_20.pth
    python -m train stage2 --output_dir runs/s2 --resume latest      # after a crash or Ctrl-C
    python -m train export runs/s2 --output ComfyUI/models/lafr/my_lafr.safetensors
Every flag has a YAML twin (--config run.yaml, sections data/degrade/run/stage1/adapter/stage2);
`python -m train stage1 --help` lists them with the paper's defaults.
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, add_config_flags, config_from_args
from .export import add_export_flags, export_checkpoint
from .loop import EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train LAFR (stage 1: adapter, stage 2: LoRA) and export LAFR files.")
    commands = parser.add_subparsers(dest="command", required=True)
    for stage, text in (("stage1", "train the latent alignment adapter"), ("stage2", "train the conv LoRA of the pruned UNet")):
        add_config_flags(commands.add_parser(stage, help=text, description=text), stage)
    add_export_flags(commands.add_parser("export", help="write the LAFR file of a run's checkpoint"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .losses import MissingWeights

    try:
        if args.command == "export":
            print(export_checkpoint(args.run_dir, args.output, args.checkpoint))
            return 0
        config = config_from_args(args, args.command)
        if args.command == "stage1":
            from .stage1 import train_stage1

            result = train_stage1(config)
        else:
            from .stage2 import train_stage2

            result = train_stage2(config)
    except (ConfigError, MissingWeights) as err:
        parser.exit(2, f"error: {err}\n")
    return EXIT_INTERRUPTED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
