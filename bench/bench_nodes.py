"""LAFR Pruned UNet Step through the real ComfyUI node path: 4 faces in ONE batched forward vs
4 sequential single-face node calls, full-size SD2.1-base stand-in (random weights), CPU.

Needs a ComfyUI checkout (COMFYUI_DIR) and a python with its requirements:
    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python bench/bench_nodes.py --runs 3
Reports the median time per face of each way, their ratio, and the peak RSS of each phase.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unet_step import PeakRSS  # noqa: E402


def import_comfy(comfy_dir: str, comfy_args: list[str]):
    sys.path.insert(0, comfy_dir)
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu", *comfy_args]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.sd
    finally:
        sys.argv = argv
    return comfy.sd


def load_pack():
    spec = importlib.util.spec_from_file_location("ComfyUI_LAFR_bench", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stand_ins(tmp: Path):
    """(diffusers-format SD2.1-base UNet state dict, LAFR weights loaded from a real file)."""
    from diffusers import UNet2DConditionModel

    from lafr_core.adapter import LatentAligner
    from lafr_core.lafr_file import load_lafr, save_lafr
    from lafr_core.lora import add_conv_lora, lora_state_to_kohya
    from lafr_core.pipeline import bundled_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**bundled_config("unet"))
    unet.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.02, generator=gen)
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    add_conv_lora(unet)
    path = tmp / "lafr.safetensors"
    save_lafr(path, aligner=LatentAligner(), kohya_lora=lora_state_to_kohya(unet), prompt_embeds=torch.randn(1, 77, 1024, generator=gen))
    return base, load_lafr(path)


def timed(fn, runs: int) -> tuple[float, int]:
    fn()  # warm-up (patches the model, fills caches)
    times = []
    with PeakRSS() as rss:
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times), rss.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--comfy-args", default="", help="extra ComfyUI flags, e.g. --use-pytorch-cross-attention")
    args = parser.parse_args()
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        sys.exit("set COMFYUI_DIR to a ComfyUI checkout")
    torch.set_num_threads(args.threads)
    comfy_sd = import_comfy(comfy_dir, args.comfy_args.split())
    pack = load_pack()
    with tempfile.TemporaryDirectory() as tmp:
        base, weights = stand_ins(Path(tmp))
    model = comfy_sd.load_diffusion_model_state_dict(base)
    del base
    node = pack.NODE_CLASS_MAPPINGS["LAFRPrunedUNetStep"]()
    raw = torch.randn(args.faces, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        batched, batched_peak = timed(lambda: node.step(model, weights, {"samples": raw}, 1.0, 0), args.runs)
        single, single_peak = timed(lambda: [node.step(model, weights, {"samples": raw[i : i + 1]}, 1.0, 0) for i in range(args.faces)], args.runs)
    n = args.faces
    print(f"| way | s per face | peak RSS GB |\n|---|---|---|")
    print(f"| {n} faces, one batched forward | {batched / n:.2f} | {batched_peak / 1e9:.2f} |")
    print(f"| {n} sequential single-face calls | {single / n:.2f} | {single_peak / 1e9:.2f} |")
    print(f"batched speed-up: {single / batched:.2f}x ({args.runs} runs, median, {args.threads} threads, ComfyUI flags: --cpu {args.comfy_args})")


if __name__ == "__main__":
    main()
