"""Seconds per face: InterLCM 1-step and 3-step vs LAFR's one step, same machine, one run.

Full-size configs, random weights (speed and memory do not depend on the values), one aligned
512x512 face per call, crop in -> restored crop out (the face pipeline around it is the same for
both engines and is not timed). Each scenario runs in its own subprocess, so its peak memory is
its own:
  lafr          VAE encode (mode) -> latent adapter -> pruned SD2.1-base UNet step -> VAE decode
  interlcm-1    CLIP ViT-B/16 + visual encoder -> VAE encode (mean) -> 1 x (ControlNet + LCM UNet) -> decode
  interlcm-3    the same with 3 network steps
Reported: median of --runs timed calls after a warm-up, ratio against `lafr`, resident weights,
peak RSS (CPU) or peak allocated GPU memory. CPU fp32 by default; --device cuda (fp16).

    flock /tmp/lafr-heavy.lock python bench/bench_interlcm.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_unet_step import timed_calls  # noqa: E402

SCENARIOS = ("lafr", "interlcm-1", "interlcm-3")


def nbytes(*modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in list(m.parameters()) + list(m.buffers()))


def build_lafr(device: str, dtype):
    """(faces [n, 512, 512, 3] -> restored, weight bytes) on LafrPipeline's modules."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from lafr_core.adapter import AlignerConfig, LatentAligner
    from lafr_core.pipeline import LafrPipeline, bundled_config
    from lafr_core.unet_step import PrunedUNet

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**bundled_config("unet")).eval()
    pruned = PrunedUNet.from_diffusers(unet, torch.randn(1, 77, 1024))
    del unet
    vae = AutoencoderKL(**bundled_config("vae")).eval()
    pipe = LafrPipeline(vae=vae.to(device, dtype), unet=pruned.to(device, dtype).eval(),
                        aligner=LatentAligner(AlignerConfig()).to(device).eval())
    return pipe.restore, nbytes(pipe.vae, pipe.unet, pipe.aligner)


def build_interlcm(steps: int, device: str, dtype):
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from lafr_core.interlcm.pipeline import InterLCMPipeline
    from lafr_core.interlcm.visual_encoder import VisualEncoder
    from lafr_core.interlcm.weights import config

    torch.manual_seed(0)
    move = lambda m: m.to(device, dtype).eval()  # noqa: E731
    pipe = InterLCMPipeline(
        unet=move(UNet2DConditionModel(**config("unet"))), vae=move(AutoencoderKL(**config("vae"))),
        controlnet=move(ControlNetModel(**config("controlnet"))),
        clip_vision=move(CLIPVisionModel(CLIPVisionConfig(**config("clip_vision")))),
        visual_encoder=VisualEncoder().to(device).eval(), steps=steps,
    )
    return pipe.restore, nbytes(pipe.unet, pipe.vae, pipe.controlnet, pipe.clip_vision, pipe.visual_encoder)


def child(args) -> None:
    import gc

    import torch

    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    if args.scenario == "lafr":
        run, weight_bytes = build_lafr(args.device, dtype)
    else:
        run, weight_bytes = build_interlcm(int(args.scenario.split("-")[1]), args.device, dtype)
    gc.collect()
    faces = torch.rand(args.one_batch, 512, 512, 3, device=args.device)
    times, peak = timed_calls(run, faces, args.runs, args.device)
    per_face = [t / args.one_batch for t in times]
    print(json.dumps(dict(scenario=args.scenario, batch=args.one_batch, s_per_face=statistics.median(per_face),
                          times=times, weights_gb=weight_bytes / 1e9, peak_gb=peak / 1e9)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="faces per call")
    parser.add_argument("--one-batch", type=int, dest="one_batch", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    if args.scenario:
        return child(args)
    rows = []
    for scenario in args.scenarios:
        cmd = [sys.executable, __file__, "--scenario", scenario, "--one-batch", str(args.batch), "--runs", str(args.runs),
               "--device", args.device, "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  done {scenario}: {rows[-1]['s_per_face']:.2f} s per face", file=sys.stderr, flush=True)
    base = next((r for r in rows if r["scenario"] == "lafr"), None)
    mem = "peak GPU GB" if args.device == "cuda" else "peak RSS GB"
    print(f"| engine ({args.device}, {args.batch} face(s) per call) | s per face | time vs LAFR | weights GB | {mem} |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['s_per_face'] / base['s_per_face']:.1f}x" if base else "-"
        print(f"| {r['scenario']} | {r['s_per_face']:.2f} | {ratio} | {r['weights_gb']:.2f} | {r['peak_gb']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
