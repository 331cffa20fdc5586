"""Trainer benchmark: what the latent cache buys in stage 1, what gradient checkpointing costs
and saves in stage 2. Full SD2.1-base configs (UNet 866M, VAE 84M) with random weights, run
through the real trainer (`train.stage1.Stage1` / `train.stage2.Stage2` + `run_loop`).

Each scenario runs in its own subprocess, so its peak memory is its own:
  stage1_cache      adapter steps reading cached latents (the VAE ran once, before training)
  stage1_nocache    adapter steps that load, degrade and VAE-encode LQ and HQ every step
  stage2_plain      LoRA steps: adapter -> pruned UNet + LoRA -> VAE decode -> loss, backward
  stage2_ckpt       the same with --gradient_checkpointing (UNet blocks and VAE decoder)
  pairs_lafr        what one data-loader worker costs stage 2, which degrades on the fly: seconds
  pairs_codeformer  per (LQ, HQ, landmarks) item with the "lafr" / "codeformer" preset (one thread;
                    compare with stage 2's s/step x batch / num_workers)
Reported: seconds per optimizer step (median of the timed steps; the first step is warm-up and
not counted), steps/s, the ratios cache/no-cache and ckpt/plain, and peak memory during the
steps (CPU: peak RSS, reset after set-up via /proc/self/clear_refs; CUDA: max allocated).

Stage-2 loss encoders: "light" (CPU default) = LPIPS-VGG16 at full size with random weights +
tiny CLIP and 3DMM stand-ins; "full" (CUDA default) = also a ViT-H/14 CLIP vision tower
(IP-Adapter's image encoder shape) and a ResNet-50 257-d regressor, random weights. The encoders
are identical in both stage-2 scenarios, so they dilute the ckpt/plain time ratio, not bias it.

    python bench/bench_train.py                       # CPU: 256 px, batch 1
    python bench/bench_train.py --resolution 512 --device cuda --mixed_precision fp16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("stage1_cache", "stage1_nocache", "stage2_plain", "stage2_ckpt", "pairs_lafr", "pairs_codeformer")


def _reset_peak() -> None:
    """Reset the kernel's RSS high-water mark (Linux); the CUDA peak counters too."""
    import torch

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def _data_folder(tmp: Path) -> Path:
    folder = tmp / "faces"
    folder.mkdir()
    for name in ("astronaut.png", "grace_hopper.jpg"):
        shutil.copy(REPO / "tests" / "data" / name, folder / name)
    return folder


def _full_vae():
    import torch
    from diffusers import AutoencoderKL

    from lafr_core.pipeline import bundled_config

    torch.manual_seed(0)
    return AutoencoderKL(**bundled_config("vae")).eval()


def _full_unet():
    import torch
    from diffusers import UNet2DConditionModel

    from lafr_core.pipeline import bundled_config

    torch.manual_seed(0)
    return UNet2DConditionModel(**bundled_config("unet")).eval()


def _encoder_factory(kind: str):
    """Stage-2 loss encoders with random weights (see module doc)."""

    def factory(config):
        import warnings

        import lpips
        import torch
        import torchvision
        from torch import nn
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from train.losses import ClipIdentity, FaceStructure, LossEncoders, LpipsDistance, Regressor3DMM

        torch.manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            perceptual = LpipsDistance(lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False))
        if kind == "full":
            vit_h = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")
            identity = ClipIdentity(CLIPVisionModelWithProjection(vit_h))
            trunk = torchvision.models.resnet50(weights=None)
            trunk.fc = nn.Identity()
            structure = FaceStructure(Regressor3DMM(trunk))
        else:
            tiny = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=224, patch_size=14, projection_dim=32)
            identity = ClipIdentity(CLIPVisionModelWithProjection(tiny))
            head = nn.Sequential(nn.Conv2d(3, 16, 7, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            structure = FaceStructure(Regressor3DMM(head, feature_dim=16))
        return LossEncoders(lpips=perceptual, identity=identity, structure=structure)

    return factory


def run_scenario(args: argparse.Namespace) -> dict:
    """Runs in the child process: build the stage, time its steps, report."""
    import torch

    sys.path.insert(0, str(REPO))
    from dataclasses import replace

    from lafr_core.adapter import LatentAligner
    from lafr_core.lafr_file import save_lafr
    from train.config import DataConfig, RunConfig, Stage1Config, Stage2Config, TrainConfig
    from train.loop import run_loop

    torch.set_num_threads(args.threads or torch.get_num_threads())
    tmp = Path(tempfile.mkdtemp(prefix="lafr-bench-"))
    try:
        data = DataConfig(data=(str(_data_folder(tmp)),), resolution=args.resolution, align="resize", variants=2, num_workers=0, val_images=0)
        run = RunConfig(output_dir=str(tmp / "run"), max_steps=args.steps, checkpoint_every=10**6, log_every=1, validate_every=0, mixed_precision=args.mixed_precision)
        times: list[float] = []
        cpu: list[tuple[float, float]] = []  # (user, system) CPU seconds of this process

        def tick(step: int) -> None:
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append((usage.ru_utime, usage.ru_stime))
            if step == 1:
                _reset_peak()  # set-up and the warm-up step are not counted

        t0 = time.perf_counter()
        if args.scenario.startswith("pairs_"):
            return _time_pairs(args, tmp)
        if args.scenario.startswith("stage1"):
            from train.stage1 import Stage1

            data = replace(data, latent_cache=args.scenario == "stage1_cache")
            config = TrainConfig(stage="stage1", data=data, run=run, stage1=Stage1Config(batch_size=args.batch, epochs=10**6))
            stage = Stage1(config, vae=_full_vae())
        else:
            from train.models import BaseModels
            from train.stage2 import Stage2

            adapter = save_lafr(tmp / "stage1.safetensors", aligner=LatentAligner())
            run = replace(run, gradient_checkpointing=args.scenario == "stage2_ckpt")
            config = TrainConfig(stage="stage2", data=data, run=run, stage2=Stage2Config(adapter=str(adapter), batch_size=args.batch, steps=args.steps))
            base = BaseModels(unet=_full_unet(), vae=_full_vae())
            prompt = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(0))
            stage = Stage2(config, base=base, prompt_embeds=prompt, encoder_factory=_encoder_factory(args.encoders))
        setup_s = time.perf_counter() - t0
        run_loop(stage, on_step=tick)
        step_times = [b - a for a, b in zip(times, times[1:])]
        median = statistics.median(step_times)
        timed = len(step_times)
        user_s, sys_s = ((cpu[-1][i] - cpu[0][i]) / timed for i in (0, 1))
        return {
            "scenario": args.scenario, "device": args.device, "resolution": args.resolution, "batch": args.batch,
            "threads": torch.get_num_threads(), "mixed_precision": args.mixed_precision, "encoders": args.encoders,
            "setup_s": setup_s, "step_s": median, "steps_per_s": 1.0 / median, "step_times": step_times,
            "peak_gb": _peak_gb(args.device), "cpu_user_s_per_step": user_s, "cpu_sys_s_per_step": sys_s,
        }  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _time_pairs(args: argparse.Namespace, tmp: Path) -> dict:
    """Seconds per on-the-fly stage-2 item (decode, augment, degrade, landmarks), one thread."""
    import torch

    from lafr_core.degrade import DegradeConfig
    from train.data import FacePairs, PairRecipe, prepare_images

    torch.set_num_threads(1)
    images = prepare_images([tmp / "faces"], "resize", args.resolution, tmp / "cache").images  # run_scenario made it
    recipe = PairRecipe(args.resolution, 0, 0.5, (0.9, 1.0), DegradeConfig.preset(args.scenario.removeprefix("pairs_")))
    pairs = FacePairs(images, recipe, ("lq", "hq", "landmarks"))
    count = max(8, 4 * args.steps)
    _reset_peak()
    usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    times = []
    for k in range(count):
        start = time.perf_counter()
        pairs[(k // len(images)) * len(images) + k % len(images)]  # a new epoch's variant each round
        times.append(time.perf_counter() - start)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    median = statistics.median(times)
    return {
        "scenario": args.scenario, "device": "cpu", "resolution": args.resolution, "batch": 1, "threads": 1,
        "mixed_precision": "no", "encoders": "-", "setup_s": 0.0, "step_s": median, "steps_per_s": 1.0 / median,
        "step_times": times, "peak_gb": _peak_gb("cpu"), "cpu_user_s_per_step": (usage1.ru_utime - usage0.ru_utime) / count,
        "cpu_sys_s_per_step": (usage1.ru_stime - usage0.ru_stime) / count, "wall_s": time.perf_counter() - t0,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--resolution", type=int, default=None, help="face size in pixels (default: 512 on CUDA, 256 on CPU)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of both stages")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per scenario; the first is warm-up")
    parser.add_argument("--stage1_steps", type=int, default=6, help="steps of the (cheap) cached stage-1 scenario")
    parser.add_argument("--mixed_precision", default=None, choices=("no", "fp16", "bf16"), help="default: fp16 on CUDA, no on CPU")
    parser.add_argument("--encoders", default=None, choices=("light", "full"), help="stage-2 loss encoders (default: full on CUDA, light on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default, all cores)")
    parser.add_argument("--out", default=None, help="JSON results file (default: bench/results/train_<device>.json)")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--child_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.resolution = args.resolution or (512 if cuda else 256)
    args.mixed_precision = args.mixed_precision or ("fp16" if cuda else "no")
    args.encoders = args.encoders or ("full" if cuda else "light")
    if args.resolution % 8 or args.steps < 2:
        parser.error("--resolution must be a multiple of 8 and --steps >= 2 (the first step is warm-up)")

    if args.scenario:  # child
        Path(args.child_out).write_text(json.dumps(run_scenario(args)))
        return

    rows = []
    for scenario in args.scenarios:
        steps = args.stage1_steps if scenario == "stage1_cache" else args.steps
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, __file__, "--scenario", scenario, "--child_out", out.name, "--device", args.device,
                   "--resolution", str(args.resolution), "--batch", str(args.batch), "--steps", str(steps),
                   "--mixed_precision", args.mixed_precision, "--encoders", args.encoders, "--threads", str(args.threads)]  # fmt: skip
            env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{scenario}: FAILED\n{proc.stderr[-3000:]}", file=sys.stderr)
                rows.append({"scenario": scenario, "error": proc.stderr[-1000:]})
                continue
            row = json.loads(Path(out.name).read_text())
        rows.append(row)
        print(
            f"{scenario:15s} {row['step_s']:8.3f} s/step  {row['steps_per_s']:8.3f} steps/s  peak {row['peak_gb']:6.2f} GB  "
            f"cpu user/sys {row['cpu_user_s_per_step']:.1f}/{row['cpu_sys_s_per_step']:.1f} s/step  (set-up {row['setup_s']:.0f} s)",
            flush=True,
        )

    by = {r["scenario"]: r for r in rows if "error" not in r}
    ratios = {}
    if {"stage1_cache", "stage1_nocache"} <= by.keys():
        ratios["stage1_cache_speedup"] = by["stage1_cache"]["steps_per_s"] / by["stage1_nocache"]["steps_per_s"]
    if {"stage2_plain", "stage2_ckpt"} <= by.keys():
        ratios["stage2_ckpt_time_ratio"] = by["stage2_ckpt"]["step_s"] / by["stage2_plain"]["step_s"]
        ratios["stage2_ckpt_peak_ratio"] = by["stage2_ckpt"]["peak_gb"] / by["stage2_plain"]["peak_gb"]
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"train_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=1))
    print(f"wrote {out}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
