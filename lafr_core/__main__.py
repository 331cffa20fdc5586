"""Command line: `python -m lafr_core <command> ...`.

Commands are registered in `COMMANDS` (name -> help, argument setup, runner), so `restore` and
`doctor` are added as two more functions and one more entry each. A runner takes the parsed
arguments and returns the exit code; printing goes through small formatting helpers so the
commands stay short and the output stays testable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from .adapter import count_parameters
from .eval.cli import EVAL_HELP, add_eval_arguments, run_eval
from .lafr_file import LafrFileError, LafrWeights, load_lafr


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- info


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="LAFR .safetensors files (LAFR, converted OSEDiff or converted InterLCM) to check")


def run_info(args: argparse.Namespace) -> int:
    """Check each file with its engine's loader (the only judge of validity) and describe it: a
    file whose header says lafr.engine "interlcm" is InterLCM's, every other one LAFR's."""
    from .model_paths import file_engine

    all_valid = True
    for path in args.files:
        interlcm = file_engine(path) == "interlcm"
        try:
            rows = describe_interlcm(path) if interlcm else describe_lafr(load_lafr(path))
        except LafrFileError as exc:  # InterLCMFileError is one
            all_valid = False
            print(f"{path}: INVALID\n  {exc}")
            continue
        print(f"{path}: valid {'InterLCM' if interlcm else 'LAFR'} file")
        print("\n".join(f"  {label + ':':<15} {value}" for label, value in rows))
    return 0 if all_valid else 1


def describe_interlcm(path: Path) -> list[tuple[str, str]]:
    """(label, value) rows for a converted InterLCM file, from its checked header (the loader's
    checks; no tensor is read, so a 1.5 GB file is described at once)."""
    from .interlcm.lcm import interlcm_timesteps
    from .interlcm.weights import SPATIAL_PREFIX, VISUAL_PREFIX, read_interlcm_metadata
    from .lafr_file import _read_header
    from .model_paths import CLIP_B16_HUB_ID, LCM_HUB_ID

    meta = read_interlcm_metadata(path)
    specs, _, _ = _read_header(Path(path))
    steps = int(meta["lafr.steps"])

    def tensors(prefix: str) -> str:
        shapes = [s.shape for k, s in specs.items() if k.startswith(prefix)]
        params = sum(math.prod(shape) for shape in shapes)
        return f"{_count(len(shapes), 'tensor')}, {params:,} parameters"

    rows = [
        ("engine", "InterLCM (ICLR 2025, github.com/sen-mao/InterLCM), converted from its published checkpoint"),
        ("steps", f"{steps} (LCM timesteps {' -> '.join(map(str, interlcm_timesteps(steps)))}: the schedule the weights are trained for)"),
        ("base", f"LCM Dreamshaper v7 ({meta.get('lafr.base')}): its UNet and VAE, latent scale {float(meta.get('lafr.latent_scale', 0.18215)):g}"),
        ("clip vision", f"CLIP ViT-B/16 ({meta.get('lafr.clip_vision')}): its image tower -> the visual encoder's prompt tokens"),
        ("guidance", f"scale {float(meta.get('lafr.guidance_scale', 8)):g} (LCM's guidance embedding, no classifier-free pass)"),
        ("colour fix", meta.get("lafr.colour_fix", "wavelet")),
        ("visual encoder", tensors(VISUAL_PREFIX)),
        ("ControlNet", "the spatial encoder, of SD1.5's UNet: " + tensors(SPATIAL_PREFIX)),
        ("weights", meta.get("lafr.weights", "(not recorded)")),
        ("source", meta.get("lafr.source", "(not recorded)")),
        ("licence", meta.get("lafr.licence", "(not recorded)")),
        ("needs", f"LCM Dreamshaper v7 (diffusers folder with unet/ and vae/, or {LCM_HUB_ID}) and CLIP ViT-B/16 "
                  f"(transformers folder, or {CLIP_B16_HUB_ID}): `lafr restore --lafr FILE --lcm ... --clip-vision ...`, "
                  "or found in models/diffusers, models/clip_vision or the hub cache"),
    ]
    others = sorted(k for k in meta if not k.startswith("lafr."))
    if others:
        rows.append(("other metadata", ", ".join(others)))
    return rows


def describe_lafr(weights: LafrWeights) -> list[tuple[str, str]]:
    """(label, value) rows for `info`: what a user checks before picking a file."""
    meta = weights.meta
    rows = [
        ("format", meta["lafr.format"]),
        ("what", describe_what(weights)),
        ("needs", describe_needs(weights)),
        ("base", f"{meta['lafr.base']} ({meta['lafr.prediction']}, timestep {weights.timestep})"),
        ("latent scale", f"{weights.latent_scale:g}"),
        ("stages", weights.stages),
        ("adapter", _describe_adapter(weights)),
        ("lora", _describe_lora(weights)),
        ("prompt", repr(weights.prompt)),
        ("prompt_embeds", _describe_prompt_embeds(weights)),
        ("trainer", _describe_trainer(meta)),
    ]
    if meta["lafr.format"] != "1":
        rows += [
            ("replaced", ", ".join(weights.replaced_layers) or "none"),
            ("vae lora", _describe_vae_lora(weights)),
            ("latent", weights.latent_rule + (f" (seed {weights.latent_seed})" if weights.latent_rule == "sample" else "")),
            ("colour fix", weights.colour_fix),
            ("source", meta.get("lafr.source", "(not recorded)")),
            ("licence", meta.get("lafr.licence", "(not recorded)")),
        ]
    others = sorted(k for k in meta if not k.startswith("lafr."))
    if others:
        rows.append(("other metadata", ", ".join(others)))
    return rows


def describe_what(weights: LafrWeights) -> str:
    """One line: which engine and which parts, e.g. "LAFR stage 1+2 (adapter + UNet LoRA)"."""
    if weights.engine != "lafr":
        return f"{weights.engine_label}, converted from its published checkpoint"
    parts = {"1": "adapter only", "2": "UNet LoRA + prompt", "1+2": "adapter + UNet LoRA + prompt"}
    return f"LAFR stage {weights.stages} ({parts[weights.stages]})"


def describe_needs(weights: LafrWeights) -> str:
    """What a host must have to run the file."""
    if weights.engine == "lafr" and weights.prompt_embeds is None:
        return "SD2.1-base's VAE for the adapter; the UNet step needs a stage-2 ('2' or '1+2') file"
    needs = "SD2.1-base (512, epsilon): its UNet and VAE"
    if weights.has_vae_lora:
        needs += " (the VAE encoder with the file's LoRA)"
    if weights.prompt_embeds is None:
        needs += f"; and its text encoder for the prompt {weights.prompt!r} (no prompt embedding stored)"
    return needs


def _describe_vae_lora(weights: LafrWeights) -> str:
    if not weights.vae_lora:
        return "none"
    layers = sum(1 for k in weights.vae_lora if k.endswith(".alpha"))
    params = sum(v.numel() for k, v in weights.vae_lora.items() if k.endswith(".weight"))
    return f"{_count(layers, 'layer')} (encoder), {params:,} parameters, rank {weights.vae_lora_rank}, alpha {weights.vae_lora_alpha:g}"


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


# --------------------------------------------------------------------------- convert


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, nargs="+", metavar="FILE",
                        help="OSEDiff's osediff_face.pkl (faces) or osediff.pkl (general photos); or InterLCM's pair "
                             "visual_encoder_<N>step.pth spatial_encoder_<N>step.pth (release v0.1.0, CC BY-NC 4.0)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="the .safetensors to write, or a folder (default: beside the .pkl, same name); e.g. ComfyUI/models/lafr/")
    parser.add_argument("--base", default=None,
                        help="SD2.1-base as a diffusers folder (text_encoder/, tokenizer/) or hub id: stores the prompt's embedding. "
                             "Without it the file keeps only the prompt text and each host encodes it with its own SD2.1 text encoder")
    parser.add_argument("--prompt-embeds", type=Path, default=None,
                        help="a .safetensors with a precomputed 'prompt_embeds' [1, 77, 1024] for --prompt (e.g. another LAFR file)")
    parser.add_argument("--engine", choices=["auto", "osediff-face", "osediff"], default="auto",
                        help="what the checkpoint restores (auto: 'face' in the file name means osediff-face)")
    parser.add_argument("--prompt", default=None,
                        help="the prompt text (default: OSEDiff's template with fixed tags, e.g. 'face, close-up, portrait, ,')")
    parser.add_argument("--latent", choices=["mode", "sample"], default="mode",
                        help="VAE latent: the posterior mode (default; what every host's VAE gives) or a seeded draw as OSEDiff does")
    parser.add_argument("--seed", type=int, default=None, help="the seed of the draw with --latent sample")
    parser.add_argument("--colour-fix", choices=["adain", "wavelet", "none"], default="adain",
                        help="the default colour fix hosts apply to the restored crop (OSEDiff's default: adain)")
    parser.add_argument("--steps", type=int, choices=[1, 3], default=None,
                        help="InterLCM only: the weights' step count (default: from the file names)")


def run_convert(args: argparse.Namespace) -> int:
    """Convert an OSEDiff .pkl into a LAFR format-2 file, or InterLCM's .pth pair into an InterLCM
    file; exit 1 with one message when it cannot."""
    from .interlcm.convert import looks_like_pair, run_cli as convert_interlcm_cli
    from .osediff import OSEDiffCheckpointError, convert, default_prompt, engine_from_name

    if looks_like_pair(args.checkpoint):
        visual, spatial = args.checkpoint
        return convert_interlcm_cli(argparse.Namespace(visual=visual, spatial=spatial, output=args.output, steps=args.steps))
    if len(args.checkpoint) != 1:
        print(f"lafr convert: give one OSEDiff .pkl, or InterLCM's two .pth files (visual encoder, then spatial encoder); "
              f"got {len(args.checkpoint)} files", file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 1
    src = args.checkpoint[0]
    dst = args.output or src.with_suffix(".safetensors")
    if dst.is_dir():
        dst = dst / (src.stem + ".safetensors")
    engine = engine_from_name(src) if args.engine == "auto" else args.engine
    prompt = args.prompt if args.prompt is not None else default_prompt(engine)
    try:
        if args.latent == "sample" and args.seed is None:
            raise ValueError("--latent sample needs --seed N: the draw must be repeatable")
        if dst.suffix != ".safetensors":
            raise ValueError(f"the output '{dst}' must end in .safetensors")
        embeds = _convert_prompt_embeds(args, prompt)
        path = convert(src, dst, engine=engine, prompt=prompt, prompt_embeds=embeds, latent=args.latent,
                       seed=args.seed, colour_fix=args.colour_fix)
    except (OSEDiffCheckpointError, LafrFileError, ValueError, OSError) as exc:
        print(f"lafr convert: {exc}", file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 1
    weights = load_lafr(path)
    print(f"{src} -> {path}: valid LAFR file")
    print("\n".join(f"  {label + ':':<15} {value}" for label, value in describe_lafr(weights)))
    if weights.prompt_embeds is None:
        print("  note: no prompt embedding stored (no --base): each host encodes the prompt with its own "
              "SD2.1 text encoder; the standalone CLI needs --base to do so")
    return 0


def _convert_prompt_embeds(args: argparse.Namespace, prompt: str):
    if args.prompt_embeds is not None:
        from safetensors import safe_open

        with safe_open(str(args.prompt_embeds), framework="pt") as handle:
            if "prompt_embeds" not in handle.keys():
                raise ValueError(f"'{args.prompt_embeds}' has no 'prompt_embeds' tensor")
            return handle.get_tensor("prompt_embeds").float()
    if args.base is None:
        return None
    from .text_encoder import encode_prompt

    return encode_prompt(args.base, prompt)


# --------------------------------------------------------------------------- registry and entry

COMMANDS: dict[str, Command] = {
    "info": Command("check LAFR and converted InterLCM files and describe what they hold", add_info_arguments, run_info),
    "doctor": Command("report devices, versions and the models this machine has", add_doctor_arguments, run_doctor),
    "restore": Command("restore the faces in photos and videos: detect, align, LAFR or InterLCM, paste back",
                       add_restore_arguments, run_restore),
    "convert": Command("convert OSEDiff's osediff_face.pkl / osediff.pkl, or InterLCM's .pth pair, into a .safetensors file",
                       add_convert_arguments, run_convert),
    "eval": Command(EVAL_HELP, add_eval_arguments, run_eval),
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
