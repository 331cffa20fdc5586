"""Identity distances on the real photos, and what an evaluation costs per face.

1. Identity table: the FFHQ-aligned crops of tests/data (astronaut, Grace Hopper) and of the
   astronaut photo downscaled x2 / x4 / x8 (OpenCV area) and back (bicubic), re-detected and
   re-aligned, each vs the astronaut's crop; with dlib (the identity extra) and, with --arcface,
   an ArcFace .onnx. dlib's same-person threshold is 0.6.
2. Throughput: `lafr_core.eval.evaluate` on --faces 512 px faces (the two crops, degraded by the
   "celeba-test" preset with different seeds), no restorer (a restorer's own time adds to this),
   each metric timed alone over the same faces (median of --runs), then the whole runner.

    python bench/bench_eval.py [--faces 8] [--runs 3] [--arcface w600k_r50.onnx] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from eval_fixtures import aligned_crop  # noqa: E402
from lafr_core.eval import EvalOptions, EvalSet, evaluate, landmarks_of, psnr, quantise, ssim  # noqa: E402
from lafr_core.eval.learned import load_lpips  # noqa: E402
from lafr_core.identity import ArcFaceOnnx, DlibIdentity, dlib_problem  # noqa: E402


def identity_table(models: list) -> None:
    reference = aligned_crop("astronaut")
    cases = {"astronaut (itself)": reference}
    for factor in (2, 4, 8):
        cases[f"astronaut x{factor} down and back"] = aligned_crop("astronaut", factor)
    cases["Grace Hopper"] = aligned_crop("grace_hopper")
    print("\n| vs astronaut's crop | " + " | ".join(m.name for m in models) + " |")
    print("|---|" + "---|" * len(models))
    for label, crop in cases.items():
        print(f"| {label} | " + " | ".join(f"{float(m.distances(reference, crop)[0]):.3f}" for m in models) + " |")


def median_time(fn, runs: int) -> float:
    fn()  # warm-up (model loads, caches)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(faces: int, runs: int, models: list) -> None:
    crops = [aligned_crop(name)[0].numpy() for name in ("astronaut", "grace_hopper")]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(faces):
            Image.fromarray((crops[i % 2] * 255 + 0.5).astype(np.uint8)).save(Path(tmp) / f"face{i:03d}.png")
        data = EvalSet.from_folders(tmp, preset="celeba-test", seed=0)
        loaded = [data.face(i) for i in range(len(data))]
        lq = quantise(torch.stack([f.lq for f in loaded]))
        hq = quantise(torch.stack([f.hq for f in loaded]))
        rows = {
            "load + degrade (celeba-test)": lambda: [data.face(i) for i in range(len(data))],
            "PSNR": lambda: psnr(lq, hq),
            "SSIM (RGB, float64)": lambda: ssim(lq, hq),
            "landmarks (MTCNN, one side)": lambda: landmarks_of(lq),
        }
        for m in models:
            rows[f"identity, {m.name} (both sides)"] = lambda m=m: m.distances(lq, hq)
        lpips, note = load_lpips("vgg")
        if lpips is not None:
            rows["LPIPS vgg"] = lambda: lpips(lq, hq)
        identity = models[0] if models else None
        rows["whole runner (no baseline)"] = lambda: evaluate(data, identity=identity, lpips=lpips, options=EvalOptions(baseline=False), progress=False)
        print(f"\n{faces} faces at 512 px, {torch.get_num_threads()} threads, median of {runs}" + (f"; {note}" if note else ""))
        print("| step | s total | ms/face | faces/s |")
        print("|---|---|---|---|")
        for label, fn in rows.items():
            t = median_time(fn, runs)
            print(f"| {label} | {t:.3f} | {1000 * t / faces:.1f} | {faces / t:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--arcface", help="an ArcFace .onnx recognizer (e.g. buffalo_l's w600k_r50.onnx)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = []
    if dlib_problem() is None:
        models.append(DlibIdentity())
    else:
        print(f"dlib: {dlib_problem()}")
    if args.arcface:
        models.append(ArcFaceOnnx(args.arcface))
    if models:
        identity_table(models)
    throughput(args.faces, args.runs, models)


if __name__ == "__main__":
    main()
