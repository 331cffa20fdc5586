"""Command line: `python -m lafr_core <command> ...`.

Commands are registered in `COMMANDS` (name -> help, argument setup, runner), so `restore` and
`doctor` are added as two more functions and one more entry each. A runner takes the parsed
arguments and returns the exit code; printing goes through small formatting helpers so the
commands stay short and the output stays testable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from .adapter import count_parameters
from .lafr_file import LafrFileError, LafrWeights, load_lafr


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- info


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="LAFR .safetensors files to check")


def run_info(args: argparse.Namespace) -> int:
    """Check each file with the loader itself (the only judge of validity) and describe it."""
    all_valid = True
    for path in args.files:
        try:
            weights = load_lafr(path)
        except LafrFileError as exc:
            all_valid = False
            print(f"{path}: INVALID\n  {exc}")
            continue
        print(f"{path}: valid LAFR file")
        print("\n".join(f"  {label + ':':<15} {value}" for label, value in describe_lafr(weights)))
    return 0 if all_valid else 1


def describe_lafr(weights: LafrWeights) -> list[tuple[str, str]]:
    """(label, value) rows for `info`: what a user checks before picking a file."""
    meta = weights.meta
    rows = [
        ("format", meta["lafr.format"]),
        ("base", f"{meta['lafr.base']} ({meta['lafr.prediction']}, timestep {weights.timestep})"),
        ("latent scale", f"{weights.latent_scale:g}"),
        ("stages", weights.stages),
        ("adapter", _describe_adapter(weights)),
        ("lora", _describe_lora(weights)),
        ("prompt", repr(weights.prompt)),
        ("prompt_embeds", _describe_prompt_embeds(weights)),
        ("trainer", _describe_trainer(meta)),
    ]
    others = sorted(k for k in meta if not k.startswith("lafr."))
    if others:
        rows.append(("other metadata", ", ".join(others)))
    return rows


def _describe_adapter(weights: LafrWeights) -> str:
    if weights.aligner is None:
        return "none"
    return f"{count_parameters(weights.aligner):,} parameters, config {weights.aligner.config.to_json()}"


def _describe_lora(weights: LafrWeights) -> str:
    if not weights.kohya_lora:
        return "none"
    params = sum(v.numel() for k, v in weights.kohya_lora.items() if k.endswith(".weight"))
    return (
        f"{_count(len(weights.lora_layers), 'layer')}, {params:,} parameters, "
        f"rank {weights.lora_rank}, alpha {weights.lora_alpha:g}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _describe_prompt_embeds(weights: LafrWeights) -> str:
    embeds = weights.prompt_embeds
    if embeds is None:
        return "none"
    return f"{list(embeds.shape)} {str(embeds.dtype).removeprefix('torch.')}"


def _describe_trainer(meta: dict[str, str]) -> str:
    text = meta.get("lafr.trainer")
    if text is None:
        return "(not recorded)"
    return json.dumps(json.loads(text), sort_keys=True)


# --------------------------------------------------------------------------- doctor


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    """doctor takes no arguments: it reads the environment and the usual model folders."""


def run_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    print("\n".join(report()))
    return 0


# --------------------------------------------------------------------------- restore


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    from .restore_cli import add_arguments

    add_arguments(parser)


def run_restore(args: argparse.Namespace) -> int:
    """Logic lives in restore_cli (tests inject a restorer there); this only dispatches."""
    from .restore_cli import main as restore_main

    return restore_main(args)


# --------------------------------------------------------------------------- registry and entry

COMMANDS: dict[str, Command] = {
    "info": Command("check LAFR files and describe what they hold", add_info_arguments, run_info),
    "doctor": Command("report devices, versions and the models this machine has", add_doctor_arguments, run_doctor),
    "restore": Command("restore the faces in photos: detect, align, LAFR, paste back", add_restore_arguments, run_restore),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lafr_core", description="LAFR face restoration tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
