"""Pruned one-step UNet vs the unpruned diffusers path, full SD2.1-base config, random weights.

Each scenario runs in its own subprocess (so peak memory is its own), back to back in one run:
  unpruned     SD2.1 text encoder forward of the prompt + full UNet call + x0 formula
  unet_only    full UNet call with a cached prompt (isolates what dropping the text encoder gives)
  pruned       PrunedUNet (time MLP, time_emb_proj, prompt K/V folded; text encoder never loaded)
  pruned_cl    PrunedUNet with channels_last weights and input
Reported: median of --runs timed calls after a warm-up, ratio against `unpruned`, resident
weights and peak RSS while computing. CPU fp32 by default; --device cuda for GPU (fp16).

    python bench/bench_unet_step.py --batch 1 4 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("unpruned", "unet_only", "pruned", "pruned_cl")


class PeakRSS:
    """Samples the process RSS (Linux /proc) in a thread; `peak` in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def build(scenario: str, device: str, dtype):
    """Returns (callable z -> x0, resident weight bytes)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(REPO))
    from lafr_core.pipeline import CONFIG_DIR, bundled_config
    from lafr_core.schedule import x0_from_eps
    from lafr_core.unet_step import PrunedUNet

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**bundled_config("unet")).to(device, dtype).eval()
    prompt = torch.randn(1, 77, 1024, device=device, dtype=dtype)
    nbytes = lambda m: sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    if scenario in ("unpruned", "unet_only"):
        text_encoder = None
        if scenario == "unpruned":
            te_config = CLIPTextConfig(**json.loads((CONFIG_DIR / "text_encoder_config.json").read_text()))
            text_encoder = CLIPTextModel(te_config).to(device, dtype).eval()
        ids = torch.randint(0, 49408, (1, 77), device=device)

        def run(z):
            cond = text_encoder(ids)[0] if text_encoder is not None else prompt
            eps = unet(z, 999, encoder_hidden_states=cond.expand(z.shape[0], -1, -1)).sample
            return x0_from_eps(z, eps)

        return run, nbytes(unet) + (nbytes(text_encoder) if text_encoder is not None else 0)
    pruned = PrunedUNet.from_diffusers(unet, prompt)
    del unet
    if scenario == "pruned_cl":
        pruned = pruned.to(memory_format=torch.channels_last)
        return (lambda z: pruned(z.contiguous(memory_format=torch.channels_last))), nbytes(pruned)
    return pruned, nbytes(pruned)


def timed_calls(run, x, runs: int, device: str) -> tuple[list[float], int]:
    """(seconds of `runs` calls run(x) after one warm-up, peak bytes: GPU allocated or process RSS)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), PeakRSS() as rss:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run(x)  # warm-up
        sync()
        for _ in range(runs):
            start = time.perf_counter()
            run(x)
            sync()
            times.append(time.perf_counter() - start)
    return times, (torch.cuda.max_memory_allocated() if device == "cuda" else rss.peak)


def child(args) -> None:
    import gc

    import torch

    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    run, weight_bytes = build(args.scenario, args.device, dtype)
    gc.collect()
    z = torch.randn(args.one_batch, 4, 64, 64, device=args.device, dtype=dtype)
    times, peak = timed_calls(run, z, args.runs, args.device)
    print(json.dumps(dict(scenario=args.scenario, batch=args.one_batch, median_s=statistics.median(times),
                          times=times, weights_gb=weight_bytes / 1e9, peak_gb=peak / 1e9)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--one-batch", type=int, dest="one_batch", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    if args.scenario:
        return child(args)
    rows = []
    for batch in args.batch:
        for scenario in args.scenarios:
            cmd = [sys.executable, __file__, "--scenario", scenario, "--one-batch", str(batch), "--runs", str(args.runs),
                   "--device", args.device, "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  done {scenario} batch {batch}: {rows[-1]['median_s']:.3f} s", file=sys.stderr, flush=True)
    base = {r["batch"]: r for r in rows if r["scenario"] == "unpruned"}
    mem = "peak GPU GB" if args.device == "cuda" else "peak RSS GB"
    print(f"| batch | path | median s | speed-up vs unpruned | weights GB | {mem} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ref = base.get(r["batch"])
        ratio = f"{ref['median_s'] / r['median_s']:.2f}x" if ref else "-"
        print(f"| {r['batch']} | {r['scenario']} | {r['median_s']:.3f} | {ratio} | {r['weights_gb']:.2f} | {r['peak_gb']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
