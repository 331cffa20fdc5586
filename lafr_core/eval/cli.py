"""`lafr eval`: score a restorer on HQ faces (degraded by a named preset) or LQ/HQ pairs.

    lafr eval --hq celeba_512_validation --lq celeba_512_validation_lq --lafr mine.safetensors -o eval/
    lafr eval --hq my_faces/ --preset celeba-test --seed 0 --lafr osediff_face.safetensors
    lafr eval --hq HQ/ --lq LQ/ --restored other_tool_output/      # score another tool's results
    lafr eval --hq HQ/ --preset x4 --restorer none                 # the LQ faces' own numbers
    lafr eval --hq HQ/ --lafr interlcm_1step.safetensors --lcm LCM_Dreamshaper_v7/ --clip-vision clip-vit-base-patch16/
    lafr eval --hq celeba_512_validation --lq celeba_512_validation_lq --protocol table1 --fid-ffhq ffhq_512_stats.npz

Writes eval.csv (per face), summary.md (the printed table) and contact_sheet.png to --output;
with --protocol table1 also the paper's Table 1 columns in its order (summary.md, table1.csv).
Exit codes: 0 done, 1 the inputs do not fit together, 2 weights or an identity model missing.
The restorer is found as `lafr restore` finds it (restore_cli.find_weights): any engine and file
the pack runs, with the same flags (--engine, --lcm, --clip-vision; InterLCM's noise seed is
--noise-seed here, --seed being the degradation's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..identity import IDENTITY_BACKENDS, IdentityModelError, load_identity_model
from .data import EvalDataError, EvalSet
from .iqa import IQA_METRICS, load_iqa
from .learned import FidAccumulator, load_fid_features, load_fid_stats, load_lpips
from .report import contact_sheet, protocol_table, summary_table, table1_order, write_csv, write_protocol_csv
from .runner import EvalOptions, Restorer, evaluate

DEFAULT_PRESET = "celeba-test"
EVAL_HELP = "measure a restorer on HQ faces or LQ/HQ pairs: PSNR, SSIM, LPIPS, NIQE, landmarks, identity, FID (--protocol table1: the paper's)"
PROTOCOLS = ("table1",)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    from ..restore_cli import add_engine_arguments  # the CLI's other commands start without it

    parser.add_argument("--hq", required=True, type=Path, help="folder of HQ faces (square = aligned; other photos are detected and aligned)")
    parser.add_argument("--lq", type=Path, help="folder of LQ faces with the HQ file names (LQ/HQ pairs); without it the HQ faces are degraded")
    parser.add_argument("--preset", help=f"degradation preset for the LQ faces (lafr_core.degrade.PRESETS; default {DEFAULT_PRESET} without --lq)")
    parser.add_argument("--seed", type=int, default=0, help="degradation seed (each face's seed is (seed, crc32 of its name))")
    parser.add_argument("--restored", type=Path, help="score faces another tool already restored (same file names) instead of restoring")
    parser.add_argument("--restorer", choices=("auto", "none"), default="auto",
                        help="auto: the weights file (--lafr) on its engine: LAFR / OSEDiff on SD2.1-base (--base), InterLCM on "
                             "LCM Dreamshaper v7 + CLIP ViT-B/16 (--lcm, --clip-vision); none: score the LQ faces as they are")
    parser.add_argument("--lafr", help="weights file of any engine the pack runs (LAFR, converted OSEDiff, converted InterLCM); "
                                       "default: as `lafr restore` finds it")
    parser.add_argument("--base", help="SD2.1-base: single-file checkpoint, diffusers folder or hub id")
    add_engine_arguments(parser, seed_flags=("--noise-seed",))
    parser.add_argument("--identity", choices=IDENTITY_BACKENDS, default="auto",
                        help="auto: ArcFace if an .onnx recognizer is found, else dlib (pip install 'comfyui-lafr[identity]')")
    parser.add_argument("--arcface", help="ArcFace .onnx file or folder (default: $LAFR_ARCFACE, ComfyUI/models/insightface, ~/.insightface/models)")
    parser.add_argument("--lpips", choices=("vgg", "alex", "none"), default="vgg", help="LPIPS trunk (scored when its weights are in the torch hub cache)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID even when pytorch-fid and its weights are here")
    parser.add_argument("--fid-stats", type=Path, help="reference FID statistics (.npz with mu, sigma, e.g. FFHQ's for FID-F); default: the HQ faces")
    parser.add_argument("--fid-ffhq", type=Path, help="FFHQ's FID statistics (.npz with mu, sigma): FID-F, scored beside FID against the HQ faces")
    parser.add_argument("--iqa", nargs="*", choices=sorted(IQA_METRICS), metavar="METRIC",
                        help=f"pyiqa metrics ({', '.join(sorted(IQA_METRICS))}), scored when pyiqa and their weights are in its cache; "
                             "default: none, all with --protocol table1")
    parser.add_argument("--no-niqe", action="store_true", help="skip NIQE (no weights needed; about 0.2 s per 512 face on a CPU)")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="table1: the LAFR paper's CelebA-Test columns in its order (PSNR, SSIM, LPIPS, DISTS, MUSIQ, NIQE, Deg. = ArcFace "
                             "angle, LMD, FID-F, FID, CLIP-IQA, MANIQA) in summary.md and table1.csv; those without weights say why")
    parser.add_argument("--y-channel", action="store_true", help="PSNR/SSIM on the luma Y channel (basicsr test_y_channel); RGB, the default, is the face-restoration protocol")
    parser.add_argument("--no-lmd", action="store_true", help="skip the landmark distance (MTCNN on every face: the slowest metric on a CPU)")
    parser.add_argument("--no-baseline", action="store_true", help="do not score the LQ faces too")
    parser.add_argument("--size", type=int, default=512, help="face crop size (512: LAFR's)")
    parser.add_argument("--limit", type=int, help="only the first N faces (by name)")
    parser.add_argument("--batch-size", type=int, default=4, help="faces per restorer call")
    parser.add_argument("--sheet-faces", type=int, default=16, help="faces shown on the contact sheet")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("-o", "--output", type=Path, default=Path("eval"), help="folder for eval.csv, summary.md, contact_sheet.png")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval` on an argparse subparsers object; the runner is `run_eval` (also set as
    `run`). For lafr_core.__main__'s COMMANDS: Command(EVAL_HELP, add_eval_arguments, run_eval)."""
    parser = subparsers.add_parser("eval", help=EVAL_HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(parser)
    parser.set_defaults(run=run_eval)
    return parser


def pipeline_restorer(base: str, lafr: Path, device: str | None, batch_size: int) -> Restorer:
    """LafrPipeline on aligned crops, with the file's own colour fix (OSEDiff's adain) applied
    against the LQ crop as its engine does; imported only here (diffusers)."""
    from ..lafr_file import load_lafr
    from ..pipeline import LafrPipeline

    weights = load_lafr(lafr)
    pipe = LafrPipeline.from_pretrained(base, weights, device=device)
    return with_colour_fix(lambda crops: pipe.restore(crops, batch_size=batch_size), weights.colour_fix)


def with_colour_fix(restore: Restorer, colour_fix: str) -> Restorer:
    """`restore` followed by the file's own colour fix against the LQ crop (what its engine runs
    in a host at the default colour correction)."""
    from ..face import correct_colour

    if colour_fix == "none":
        return restore
    return lambda crops: correct_colour(restore(crops), crops, colour_fix)


def _restorer(args: argparse.Namespace) -> tuple[Restorer | None, str | None]:
    """(restorer, None) or (None, the missing-weights message); ValueError (one line) for flags
    and files that do not fit together."""
    if args.restored is not None or args.restorer == "none":
        return None, None
    from ..restore_cli import interlcm_restorer, lookup_for, require_engine_flags

    found = lookup_for(args)
    require_engine_flags(found, seed=args.noise_seed, seed_flag="--noise-seed")
    if found.missing:
        problems = found.missing.split("\n", 1)[1] if "\n" in found.missing else found.missing
        return None, f"lafr eval: missing weights.\n{problems}\n  (--restorer none scores the LQ faces alone; --restored DIR scores another tool's outputs)"
    if found.engine == "interlcm":
        chosen = interlcm_restorer(found, args.device, args.batch_size, args.noise_seed)
        return with_colour_fix(chosen.engine.restore, chosen.colour_fix), None
    return pipeline_restorer(found.base, found.lafr, args.device, args.batch_size), None


def skipped_by_flags(args: argparse.Namespace, identity) -> dict[str, str]:
    """Why a Table-1 column will be missing because of the flags or the identity model found."""
    skipped = {}
    if identity is None or identity.column != "id_arcface_deg":
        found = f"the identity model is {identity.name}" if identity is not None else "--identity none was given"
        skipped["id_arcface_deg"] = f"it is the ArcFace angle and {found} (give an ArcFace .onnx: --arcface or $LAFR_ARCFACE)"
    reasons = {"lmd_px": (args.no_lmd, "--no-lmd"), "niqe": (args.no_niqe, "--no-niqe"), "lpips": (args.lpips == "none", "--lpips none"),
               "fid": (args.no_fid, "--no-fid"), "fid_ffhq": (args.no_fid, "--no-fid")}
    skipped.update({column: f"{flag} was given" for column, (given, flag) in reasons.items() if given})
    if not args.fid_ffhq:
        skipped.setdefault("fid_ffhq", "give FFHQ's Inception statistics: --fid-ffhq stats.npz (arrays mu, sigma)")
    return skipped


def run_eval(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset if args.lq is None else None
    if args.lq is None and preset is None:
        preset = DEFAULT_PRESET
    if args.lq is not None and args.preset is not None:
        print("lafr eval: --preset degrades HQ faces; with --lq the LQ faces are given. Use one of them.")
        return 1
    try:
        data = EvalSet.from_folders(args.hq, lq=args.lq, preset=preset, seed=args.seed, restored=args.restored, size=args.size, limit=args.limit)
    except (EvalDataError, ValueError) as exc:
        print(f"lafr eval: {exc}")
        return 1
    try:
        identity = load_identity_model(args.identity, args.arcface, device)
    except IdentityModelError as exc:
        print(f"lafr eval: {exc}\n  (--identity none skips identity)")
        return 2
    try:
        fid_ffhq = load_fid_stats(args.fid_ffhq) if args.fid_ffhq else None
    except (OSError, ValueError) as exc:
        print(f"lafr eval: --fid-ffhq: {exc}")
        return 1
    notes, skipped = [], skipped_by_flags(args, identity)
    lpips = None
    if args.lpips != "none":
        lpips, note = load_lpips(args.lpips, device)
        notes += [note] if note else []
        skipped.update({"lpips": note} if note else {})
    fid = None
    if not args.no_fid:
        features, note = load_fid_features(device)
        fid = FidAccumulator(features) if features is not None else None
        notes += [note] if note else []
        skipped.update({"fid": note, "fid_ffhq": skipped.get("fid_ffhq", note)} if note else {})
    iqa, iqa_skipped = load_iqa(args.iqa if args.iqa is not None else (sorted(IQA_METRICS) if args.protocol else []), device)
    notes += list(iqa_skipped.values())
    skipped.update(iqa_skipped)
    try:
        restore, missing = _restorer(args)
    except ValueError as exc:  # a file or flags that do not fit (LafrFileError and InterLCMFileError are ValueErrors)
        print(f"lafr eval: {exc}")
        return 1
    if missing:
        print(missing)
        return 2
    if restore is None and args.restored is None:
        notes.append("no restorer: the 'restored' column is the LQ input itself")
    options = EvalOptions(batch_size=args.batch_size, y_channel=args.y_channel, baseline=not args.no_baseline, landmarks=not args.no_lmd,
                          sheet_faces=args.sheet_faces, fid_stats=load_fid_stats(args.fid_stats) if args.fid_stats else None,
                          fid_ffhq=fid_ffhq, niqe=not args.no_niqe)
    notes.insert(0, f"{data.describe()}; PSNR/SSIM on {'Y' if args.y_channel else 'RGB'}, 8-bit")
    try:
        result = evaluate(data, restore, identity, lpips, fid, options, notes, iqa=iqa)
    except EvalDataError as exc:
        print(f"lafr eval: {exc}")
        return 1
    args.output.mkdir(parents=True, exist_ok=True)
    if args.protocol == "table1":
        result.columns = table1_order(result.columns)
        write_protocol_csv(result, args.output / "table1.csv")
    write_csv(result, args.output / "eval.csv")
    table = summary_table(result)
    if args.protocol == "table1":
        table = f"{protocol_table(result, skipped)}\n\nAll columns:\n\n{table}"
    (args.output / "summary.md").write_text(table + "\n")
    contact_sheet(result).save(args.output / "contact_sheet.png")
    print(table)
    faces = len(result.rows)
    written = "eval.csv, summary.md, contact_sheet.png" + (", table1.csv" if args.protocol else "")
    print(f"{faces} faces: restore {result.seconds_restore:.1f} s, metrics {result.seconds_metrics:.1f} s; wrote {args.output}/{written}")
    return 0
