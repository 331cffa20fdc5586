"""InterLCM's published .pth pair -> one converted .safetensors (lafr_core.interlcm.weights).

The release (github.com/sen-mao/InterLCM, v0.1.0) ships `visual_encoder_{1step,3step}.pth` and
`spatial_encoder_{1step,3step}.pth`: basicsr checkpoints, torch-saved dicts holding
`params_ema` (what inference_InterLCM.py loads) and possibly `params`, each a flat state dict
of plain tensors. They are read with `torch.load(weights_only=True)` only: anything that needs
more (code objects, custom classes) is refused unread. `params_ema` is taken when present, else
`params`; a "module." prefix (DataParallel) is dropped.

The step count (1 or 3) decides the schedule, and their code reads it from the first number in
the visual encoder's path; we read both file names, refuse a pair whose names disagree, and
accept an explicit `steps` instead. Every check (swapped files, wrong shapes, a ControlNet of
another base) runs before anything is written, and the write is atomic: a failed conversion
leaves no file behind.

Licence: the repository's README says CC BY-NC 4.0 (non-commercial) and it has no LICENSE
file; the converted file records this and its source, and the weights are never bundled or
downloaded by this package.
"""

from __future__ import annotations

import argparse
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from ..osediff import sha256_of
from ..torch_pickle import load_plain_pickle
from .lcm import INTERLCM_STEPS
from .weights import (
    SPATIAL_SENTINELS,
    base_metadata,
    compare_shapes,
    config,
    load_interlcm,
    save_interlcm,
    visual_encoder_shapes,
)

SOURCE_URL = "https://github.com/sen-mao/InterLCM (release v0.1.0)"
LICENCE = "CC BY-NC 4.0 (non-commercial; repository has no LICENSE file)"
STATE_KEYS = ("params_ema", "params")  # basicsr's save_network keys, in order of preference


class InterLCMCheckpointError(ValueError):
    """A .pth cannot be converted. The message names the file and what is wrong."""


def read_state_dict(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, the key it came from) of a basicsr .pth, unpickled with weights_only=True."""
    path = Path(path)
    obj = load_plain_pickle(path, f"InterLCM {what}", InterLCMCheckpointError,
                            "download it again from the InterLCM release", ".pth")
    if not isinstance(obj, dict):
        raise InterLCMCheckpointError(f"InterLCM {what} '{path}' holds a {type(obj).__name__}, not a dict with 'params_ema'")
    key = next((k for k in STATE_KEYS if k in obj), None)
    if key is None:
        raise InterLCMCheckpointError(
            f"InterLCM {what} '{path}' has neither 'params_ema' nor 'params' (keys: {sorted(map(str, obj))[:5]})"
        )
    state = obj[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InterLCMCheckpointError(f"InterLCM {what} '{path}': '{key}' is not a dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    bad = sorted(k for k, v in state.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all()))
    if bad:
        raise InterLCMCheckpointError(f"InterLCM {what} '{path}': '{key}'[{bad[0]!r}] is not a finite floating-point tensor")
    return state, key


@lru_cache(maxsize=1)
def spatial_encoder_shapes() -> dict[str, tuple[int, ...]] | None:
    """Every ControlNet shape (diffusers on the meta device), or None without diffusers."""
    try:
        from diffusers import ControlNetModel
    except ImportError:
        return None
    with torch.device("meta"):
        model = ControlNetModel(**config("controlnet"))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_pair(visual: dict[str, torch.Tensor], spatial: dict[str, torch.Tensor], visual_path: Path, spatial_path: Path) -> None:
    """Raise InterLCMCheckpointError on the first problem (swapped files, shapes, another base)."""
    if "controlnet_mid_block.weight" in visual and "blocks.0.weight" in spatial:
        raise InterLCMCheckpointError(
            f"the two files are swapped: '{visual_path}' is a spatial encoder and '{spatial_path}' a visual "
            "encoder; pass the visual encoder first"
        )
    shapes = {k: tuple(v.shape) for k, v in visual.items()}
    problem = compare_shapes("the visual encoder", shapes, visual_encoder_shapes())
    if problem:
        raise InterLCMCheckpointError(f"InterLCM visual encoder '{visual_path}': {problem}")
    shapes = {k: tuple(v.shape) for k, v in spatial.items()}
    expected = spatial_encoder_shapes()
    if expected is not None:
        problem = compare_shapes("the spatial encoder (an SD1.5 ControlNet)", shapes, expected)
    else:  # no diffusers: the sentinel layers only
        problem = compare_shapes("the spatial encoder", {k: shapes.get(k, ()) for k in SPATIAL_SENTINELS}, SPATIAL_SENTINELS)
    if problem:
        raise InterLCMCheckpointError(f"InterLCM spatial encoder '{spatial_path}': {problem}")


def steps_from_names(*paths: Path) -> int | None:
    """The step count the file names state ("..._1step.pth"), as their code reads it; None if unnamed."""
    found = {}
    for path in paths:
        numbers = re.findall(r"\d+", path.name)
        if numbers:
            found[path] = int(numbers[0])
    if len(set(found.values())) > 1:
        named = ", ".join(f"'{p.name}' says {n}" for p, n in found.items())
        raise InterLCMCheckpointError(f"the files are for different step counts ({named}): pass a matching pair")
    return next(iter(found.values()), None)


def convert_interlcm(visual_pth: str | Path, spatial_pth: str | Path, out: str | Path, steps: int | None = None) -> Path:
    """Check both .pth files and write `out` (.safetensors); returns out. Nothing is written on error."""
    visual_pth, spatial_pth, out = Path(visual_pth), Path(spatial_pth), Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the output '{out}' must end in .safetensors (hosts list only those)")
    named = steps_from_names(visual_pth, spatial_pth)
    steps = steps if steps is not None else named
    if steps is None:
        raise ValueError("the file names state no step count: pass steps (1 or 3, the weights' schedule)")
    if steps not in INTERLCM_STEPS:
        raise ValueError(f"InterLCM weights are for 1 or 3 steps, got {steps}")
    visual, visual_key = read_state_dict(visual_pth, "visual encoder")
    spatial, spatial_key = read_state_dict(spatial_pth, "spatial encoder")
    check_pair(visual, spatial, visual_pth, spatial_pth)
    source = (
        f"{SOURCE_URL}: {visual_pth.name} (sha256 {sha256_of(visual_pth)}), "
        f"{spatial_pth.name} (sha256 {sha256_of(spatial_pth)})"
    )
    taken = visual_key if visual_key == spatial_key else f"{visual_key} / {spatial_key}"
    return save_interlcm(out, visual, spatial, base_metadata(steps, source, LICENCE, taken))


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("visual", type=Path, help="visual_encoder_1step.pth or visual_encoder_3step.pth (InterLCM release v0.1.0)")
    parser.add_argument("spatial", type=Path, help="the spatial_encoder_*.pth of the same step count")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="the .safetensors to write, or a folder (default: interlcm_<N>step.safetensors beside the visual encoder)")
    parser.add_argument("--steps", type=int, choices=INTERLCM_STEPS, default=None,
                        help="the weights' step count (default: from the file names, as InterLCM's code reads it)")


def run_cli(args: argparse.Namespace) -> int:
    """Convert; print what was written, or one error line and 'Nothing was written.' (exit 1)."""
    try:
        steps = args.steps if args.steps is not None else steps_from_names(args.visual, args.spatial)
        name = f"interlcm_{steps}step.safetensors" if steps is not None else "interlcm.safetensors"
        dst = args.output or args.visual.parent / name
        if dst.is_dir():
            dst = dst / name
        path = convert_interlcm(args.visual, args.spatial, dst, steps=steps)
        weights = load_interlcm(path)
    except (InterLCMCheckpointError, ValueError, OSError) as exc:
        print(f"lafr convert: {exc}", file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 1
    print(f"{args.visual} + {args.spatial} -> {path}: InterLCM, {weights.steps} step(s)")
    print(f"  needs: LCM Dreamshaper v7 (UNet + VAE) and CLIP ViT-B/16 vision; licence {weights.meta['lafr.licence']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lafr_core.interlcm.convert", description="Convert InterLCM's .pth pair.")
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


def looks_like_pair(paths: Sequence[Any]) -> bool:
    """True for two .pth paths: how `lafr convert` tells an InterLCM pair from an OSEDiff .pkl."""
    return len(paths) == 2 and all(str(p).lower().endswith((".pth", ".pt")) for p in paths)


if __name__ == "__main__":
    sys.exit(main())
