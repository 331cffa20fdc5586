"""`lafr restore clip.mp4 -o out.mp4` end to end: frames/s and peak memory against clip length.

What runs: the real CLI (restore_cli.main: PyAV decode, the bundled MTCNN on every frame in
windows of --window, FaceStream tracking + smoothing, align, restore, paste, H.264 encode, audio
remux) with a deterministic stand-in restorer instead of SD2.1 (tests/video_cli_fixtures.py: no
models exist here, and the restorer's cost is the model's, not the streaming's). The clips are the
swaying real-photo face of the video tests (noise + JPEG per frame, AAC track), --size px square.

Each length runs in a fresh process, warmed up on a 16-frame clip first (detector loaded, a
window's buffers allocated), then: peak RSS of the process (ru_maxrss), its RSS after the
warm-up, and the growth between them; frames/s over the measured run. Flat memory = the growth
does not depend on the clip's length. glibc keeps one malloc arena, trimmed (as bench_video.py;
--default-malloc for its defaults).

    python bench/bench_video_cli.py [--frames 100,1000] [--size 128] [--modes temporal,per-frame] [--threads 2]

Measured on the shared 2-core CPU machine (load average 9-12 from other jobs, so frames/s is the
machine's, not the pipeline's), 128 px, temporal: 100 frames 0.6 frames/s, peak RSS 954 MB;
1,000 frames 1.0 frames/s, peak RSS 986 MB (+3% for 10x the frames; RSS sampled mid-run: flat).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]


def child(clip: Path, warm: Path, mode: str, threads: int) -> dict:
    import torch

    from bench_video import rss_mb
    from lafr_core.__main__ import build_parser
    from lafr_core.restore_cli import main
    from video_cli_fixtures import stand_in_restorer

    torch.set_num_threads(threads)
    restorer = stand_in_restorer()
    flag = "--temporal" if mode == "temporal" else "--no-temporal"
    out = clip.with_name(f"{clip.stem}.{mode}.out.mp4")

    def run(source: Path) -> int:
        args = build_parser().parse_args(["restore", str(source), "-o", str(out), "--detector", "mtcnn", flag])
        return main(args, restorer=restorer)

    assert run(warm) == 0
    baseline = rss_mb()
    start = time.perf_counter()
    assert run(clip) == 0
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import av

    with av.open(str(out)) as container:
        frames = container.streams.video[0].frames
    return {"mode": mode, "frames": frames, "fps": frames / elapsed, "seconds": elapsed,
            "rss_after_warmup_mb": baseline, "peak_rss_mb": peak, "growth_mb": peak - baseline}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", default="100,1000", help="comma-separated clip lengths")
    p.add_argument("--size", type=int, default=128, help="frame side in pixels")
    p.add_argument("--modes", default="temporal", help="temporal, per-frame or both (comma-separated)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--default-malloc", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)  # clip warm mode
    args = p.parse_args(argv)
    if args.child:
        clip, warm, mode = args.child
        print(json.dumps(child(Path(clip), Path(warm), mode, args.threads)))
        return

    from video_cli_fixtures import write_clip

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = write_clip(Path(tmp) / "warm.mp4", frames=16, size=args.size)
        env = dict(os.environ) if args.default_malloc else {**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "0"}
        for frames in [int(x) for x in args.frames.split(",") if x.strip()]:
            clip = write_clip(Path(tmp) / f"clip{frames}.mp4", frames=frames, size=args.size)
            for mode in args.modes.split(","):
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", str(clip), str(warm), mode]
                try:  # each run in its own try: one failure still reports the others
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                except (subprocess.CalledProcessError, ValueError) as exc:
                    rows.append({"mode": mode, "frames": frames, "error": str(getattr(exc, "stderr", exc))[-400:]})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.size}x{args.size} clips, MTCNN + stand-in restorer, {args.threads} threads")
    print("| mode | frames | frames/s | RSS after warm-up MB | peak RSS MB | growth MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['mode']} | {r['frames']} | error: {r['error'][-120:]!r} | | | |")
        else:
            print(f"| {r['mode']} | {r['frames']} | {r['fps']:.1f} | {r['rss_after_warmup_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['growth_mb']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
