"""Temporal mode vs per-frame faces on synthetic clips made from the real photos in tests/data.

Clips (tests/video_fixtures.py renders them; every frame is re-sampled with bicubic warps):
  still         grace_hopper.jpg at 0.45x in a 256x256 frame with a known hand-held sway: 3
                sinusoids per axis, periods 60..180 frames (2..6 s at 30 fps), largest
                excursion 2 px, so sub-pixel in most frames
  still_tripod  the same face at a fixed sub-pixel offset (no sway): the detector's own jitter
  pan_zoom      astronaut.png in a 320x256 frame: zoom 0.9x -> 1.4x (constant rate), pan
                140 px right and 20 px up over the clip, plus the sway
  crossing      the two head cut-outs on grey in a 384x256 frame, ~2.4 px/frame each way,
                crossing mid-clip with Grace in front (the astronaut's lower face hidden; MTCNN
                then gives shifted, resized and duplicate boxes), each with its own sway
Every frame then gets sensor noise (std 0.02) and JPEG (quality 70); the clean clip is the
same frames without them. Faces: the bundled MTCNN (detect_faces(detector="mtcnn")) on every
frame, once; "per-frame" uses those detections as they are, "temporal" runs them through
lafr_core.video.smooth_stream (defaults unless --sigma / --max-gap).

Measures, per clip and mode (true landmarks: tests/face_fixtures.py HAND_LANDMARKS moved by the
known warp, so "true motion" includes the sway; a detector's constant offset from the hand
labels does not count, only its variation):
  jitter      std over frames of the true eye centres in the 512 crop the found landmarks align
              to (sqrt of var_x + var_y, mean over eyes and faces), crop pixels; "f2f": the
              same from consecutive frames only (RMS step / sqrt 2), the part that flickers. The
              std also holds slow drift: MTCNN's error depends on where the face sits on the
              pixel grid, so a slow sway makes it drift with it, which looks like motion to any
              smoother (compare still with still_tripod)
  err, lag    pan_zoom: the same eye positions minus their median, back in image pixels: RMS
              (err) and the mean component along the motion (lag: > 0 = behind the face)
  swaps       crossing: frames whose face carries an id (track id; per-frame: detection index,
              0 = largest) that another true face had most of the clip; ids: distinct ids per face
  miss        true faces without an output face (temporal fills gaps up to --max-gap)
  flicker     mean |out_t - out_t-1| over the true inner face regions, in 8-bit levels, where
              out = paste_faces(frame, restore(align_faces(frame, faces))) with a deterministic
              stand-in restorer (a blur that removes the noise plus a fixed texture pinned to the
              crop grid, as a restorer's invented detail is: alignment jitter moves it over the
              face); also for the noisy input and the clean clip (the motion's own share)
  memory      whole streaming pipeline (render, degrade, detect in batches, FaceStream, align,
              restore, paste) in a fresh process per length (glibc: one malloc arena, trimmed;
              --default-malloc for its defaults): peak RSS above the warmed-up process,
              tracemalloc peak (numpy / Python), frames held at most, frames/s.

    python bench/bench_video.py [--frames 300] [--memory-frames 100,1000,2000] [--memory-detector mtcnn|truth] [--threads 2]
About 5 minutes on 2 idle cores (MTCNN ~15 frames/s at these sizes); much longer on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from face_fixtures import HAND_LANDMARKS, HEAD_REGIONS, load_portrait  # noqa: E402
from lafr_core.face import FaceSet, align_faces, detect_faces, paste_faces  # noqa: E402
from lafr_core.face.align import alignment_affines  # noqa: E402
from lafr_core.video import DEFAULT_MAX_GAP, DEFAULT_SIGMA, FaceStream, smooth_stream, split_frames  # noqa: E402
from video_fixtures import degrade, render, shake_path, similarity, transform_points  # noqa: E402

JITTER_CROP = 512  # jitter is quoted in LAFR's own crop pixels


# ---------------------------------------------------------------- clips


@dataclass(frozen=True)
class Face:
    source: np.ndarray  # [h, w, 3] float32
    landmarks: np.ndarray  # [5, 2] true landmarks in source pixels
    cut_out: bool


@dataclass(frozen=True)
class Clip:
    name: str
    size: tuple[int, int]  # frame (height, width)
    faces: tuple[Face, ...]  # drawn in order: the last is in front
    affine: Callable[[int, int], np.ndarray]  # (face index, frame) -> [2, 3] source -> frame

    def frame(self, t: int) -> np.ndarray:
        return render([(f.source, self.affine(i, t), f.cut_out) for i, f in enumerate(self.faces)], self.size)

    def truth(self, t: int) -> np.ndarray:
        """[faces, 5, 2] true landmarks in frame t."""
        return np.stack([transform_points(self.affine(i, t), f.landmarks) for i, f in enumerate(self.faces)])


def portrait(name: str, cut_out: bool) -> Face:
    image = load_portrait(name)[0].numpy()
    landmarks = np.array(HAND_LANDMARKS[name], dtype=np.float64)
    if cut_out:
        x0, y0, x1, y1 = HEAD_REGIONS[name]
        return Face(np.ascontiguousarray(image[y0:y1, x0:x1]), landmarks - [x0, y0], True)
    return Face(image, landmarks, False)


def make_clips(frames: int, periods: tuple[float, float] = (60.0, 180.0)) -> list[Clip]:
    grace, astronaut = portrait("grace_hopper.jpg", False), portrait("astronaut.png", False)
    sway = {seed: shake_path(max(frames, 2), 2.0, seed, *periods) for seed in (1, 2, 3, 4)}
    last = max(frames - 1, 1)

    def still(i, t):
        return similarity(0.45, grace.landmarks.mean(axis=0), (128 + sway[1][t, 0], 136 + sway[1][t, 1]))

    def pan_zoom(i, t):
        u = t / last
        scale = 0.9 * (1.4 / 0.9) ** u
        return similarity(scale, astronaut.landmarks.mean(axis=0), (90 + 140 * u + sway[2][t, 0], 140 - 20 * u + sway[2][t, 1]))

    heads = (portrait("astronaut.png", True), portrait("grace_hopper.jpg", True))

    def crossing(i, t):
        u = t / last
        x = 50 + 284 * u if i == 0 else 334 - 284 * u
        scale, y = (0.8, 106.0) if i == 0 else (0.42, 158.0)
        return similarity(scale, heads[i].landmarks.mean(axis=0), (x + sway[3 + i][t, 0], y + sway[3 + i][t, 1]))

    def tripod(i, t):
        return similarity(0.45, grace.landmarks.mean(axis=0), (128.3, 136.6))

    return [
        Clip("still", (256, 256), (grace,), still),
        Clip("still_tripod", (256, 256), (grace,), tripod),
        Clip("pan_zoom", (256, 320), (astronaut,), pan_zoom),
        Clip("crossing", (256, 384), heads, crossing),
    ]


def degraded_frames(clip: Clip, frames: int, seed: int):
    rng = np.random.default_rng(seed)
    for t in range(frames):
        yield t, degrade(clip.frame(t), rng)


# ---------------------------------------------------------------- stand-in restorer


class StandInRestorer:
    """Deterministic crop -> crop: a Gaussian blur (sigma = 1.5 px of a 256 crop, scaled) that removes
    the noise, plus a fixed smooth texture (amplitude 0.06) in crop coordinates: what a real
    restorer invents is tied to where the crop puts the face, so jitter of the alignment moves it
    over the face, and a steady alignment keeps it still."""

    def __init__(self, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        texture = blur(torch.rand(1, 1, size, size, generator=g), size / 128)
        self.texture = 0.06 * (texture - texture.mean()) / texture.std()
        self.sigma = 1.5 * size / 256

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        x = blur(crops.permute(0, 3, 1, 2), self.sigma) + self.texture
        return x.clamp(0, 1).permute(0, 2, 3, 1)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(np.ceil(3 * sigma))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = (k / k.sum()).repeat(x.shape[1], 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=x.shape[1])


def restore_frame(image: torch.Tensor, faces, restorer: StandInRestorer, crop: int) -> torch.Tensor:
    if len(faces) == 0:
        return image
    crops, aligned = align_faces(image, faces, size=crop)
    return paste_faces(image, restorer(crops), aligned, source_crops=crops)


# ---------------------------------------------------------------- metrics


def inner_region(truth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W] bool: every face's landmark box widened by a quarter of its eye distance."""
    mask = np.zeros(size, dtype=bool)
    for lm in truth:
        pad = 0.25 * np.linalg.norm(lm[1] - lm[0])
        x0, y0 = np.floor(lm.min(axis=0) - pad).astype(int).clip(0)
        x1, y1 = np.ceil(lm.max(axis=0) + pad).astype(int)
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def match(found: np.ndarray, truth: np.ndarray) -> list[int]:
    """Per found face [n, 5, 2], the true face [F, 5, 2] it is (-1: none within its size)."""
    out = []
    for lm in found:
        dist = np.linalg.norm(truth.mean(axis=1) - lm.mean(axis=0), axis=-1)
        scale = np.linalg.norm(truth[:, :2].mean(axis=1) - truth[:, 3:].mean(axis=1), axis=-1)
        best = int(dist.argmin())
        out.append(best if dist[best] < scale[best] else -1)
    return out


def eye_positions(found: np.ndarray, true_eyes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true eyes [T, 2, 2] in the 512 crops `found` [T, 5, 2] align to, crop px per image px [T])."""
    affine = alignment_affines(torch.from_numpy(found).double(), JITTER_CROP)[0].numpy()
    eyes = np.einsum("nij,nkj->nki", affine[:, :, :2], true_eyes) + affine[:, None, :, 2]
    return eyes, np.sqrt(np.abs(np.linalg.det(affine[:, :, :2])))


def evaluate(clip: Clip, truths: np.ndarray, outputs: list[tuple[np.ndarray, list[int]]]) -> dict:
    """outputs: per frame (found landmarks [n, 5, 2], ids [n]). Jitter, error/lag, identity, misses."""
    faces = truths.shape[1]
    series = {f: ([], []) for f in range(faces)}  # true face -> (frames, found landmarks)
    owners: dict[int, list[int]] = {}  # id -> true face per frame it appears
    miss = 0
    for t, (found, ids) in enumerate(outputs):
        who = match(found, truths[t])
        miss += faces - len({w for w in who if w >= 0})
        for lm, w, i in zip(found, who, ids):
            if w >= 0:
                series[w][0].append(t)
                series[w][1].append(lm)
                owners.setdefault(i, []).append(w)
    jitters, f2f, errors, lags = [], [], [], []
    for f, (frames, found) in series.items():
        if len(frames) < 3:
            continue
        eyes, scale = eye_positions(np.stack(found), truths[frames, f, :2])
        jitters.append(float(np.sqrt(eyes.var(axis=0).sum(axis=-1).mean())))
        steps = np.diff(eyes, axis=0)[np.diff(frames) == 1]  # consecutive frames only
        f2f.append(float(np.sqrt((steps**2).sum(axis=-1).mean() / 2)) if len(steps) else float("nan"))
        offset = (eyes - np.median(eyes, axis=0)) / scale[:, None, None]  # image px
        motion = np.gradient(truths[frames, f, :2].mean(axis=1), axis=0)
        direction = motion / np.clip(np.linalg.norm(motion, axis=-1, keepdims=True), 1e-9, None)
        errors.append(float(np.sqrt((offset**2).sum(axis=-1).mean())))
        lags.append(float((offset.mean(axis=1) * direction).sum(axis=-1).mean()))
    majority = {i: max(set(w), key=w.count) for i, w in owners.items()}
    swaps = sum(sum(1 for w in ws if w != majority[i]) for i, ws in owners.items())
    ids_per_face = [len({i for i, ws in owners.items() if f in ws}) for f in range(faces)]
    return {
        "jitter": float(np.mean(jitters)) if jitters else float("nan"),
        "f2f": float(np.nanmean(f2f)) if f2f else float("nan"),
        "err": float(np.mean(errors)) if errors else float("nan"),
        "lag": float(np.mean(lags)) if lags else float("nan"),
        "swaps": swaps,
        "ids": "/".join(map(str, ids_per_face)),
        "miss": miss,
    }


def flicker(clip: Clip, truths: np.ndarray, frames: list[np.ndarray]) -> float:
    """Mean |x_t - x_t-1| over the inner face regions, in 8-bit levels."""
    values = []
    for t in range(1, len(frames)):
        region = inner_region(truths[t], clip.size) | inner_region(truths[t - 1], clip.size)
        values.append(np.abs(frames[t] - frames[t - 1])[region].mean())
    return 255 * float(np.mean(values))


# ---------------------------------------------------------------- scenarios


def run_clip(clip: Clip, args) -> dict[str, dict]:
    frames = args.frames
    truths = np.stack([clip.truth(t) for t in range(frames)])
    clean = [clip.frame(t) for t in range(frames)]
    noisy = [torch.from_numpy(x)[None] for _, x in degraded_frames(clip, frames, args.seed)]
    start = time.perf_counter()
    detections = []
    for i in range(0, frames, args.batch):
        found = detect_faces(torch.cat(noisy[i : i + args.batch]), detector="mtcnn")
        detections += split_frames(found)
    detect_s = time.perf_counter() - start
    per_frame = detections
    temporal = list(smooth_stream(per_frame, sigma=args.sigma, max_gap=args.max_gap))
    restorer = StandInRestorer(args.crop)
    modes = {
        "per-frame": [(f, list(range(len(f)))) for f in per_frame],
        "temporal": [(f.faces, list(f.track_ids)) for f in temporal],
    }
    rows = {}
    for mode, outputs in modes.items():
        row = evaluate(clip, truths, [(f.landmarks.double().numpy(), ids) for f, ids in outputs])
        restored = [restore_frame(image, faces, restorer, args.crop)[0].numpy() for image, (faces, _) in zip(noisy, outputs)]
        row["flicker"] = flicker(clip, truths, restored)
        rows[mode] = row
    rows["input"] = {"flicker": flicker(clip, truths, [x[0].numpy() for x in noisy]), "detect_fps": frames / detect_s}
    rows["clean"] = {"flicker": flicker(clip, truths, clean)}
    return rows


# ---------------------------------------------------------------- memory


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(frames: int, args) -> dict:
    """One streaming run of `frames` frames of the still clip, whole pipeline, nothing kept."""
    clip = make_clips(2)[0]
    sway = shake_path(frames, amplitude=2.0, seed=1)
    centre = clip.faces[0].landmarks.mean(axis=0)
    clip = Clip(clip.name, clip.size, clip.faces, lambda i, t: similarity(0.45, centre, (128 + sway[t, 0], 136 + sway[t, 1])))
    restorer = StandInRestorer(args.crop)
    warm = torch.from_numpy(clip.frame(0))[None]  # warm-up: weights loaded, buffers of a full batch allocated
    for faces in split_frames(detect_faces(warm.repeat(args.batch, 1, 1, 1), detector="mtcnn"))[:2]:
        restore_frame(warm, faces, restorer, args.crop)
    baseline = rss_mb()
    tracemalloc.start()
    stream = FaceStream(sigma=args.sigma, max_gap=args.max_gap)
    checksum, done, waiting, start = 0.0, 0, [], time.perf_counter()

    def consume(ready):
        nonlocal checksum, done
        for out in ready:
            checksum += float(restore_frame(out.payload, out.faces, restorer, args.crop).mean())
            done += 1

    rng = np.random.default_rng(args.seed + 1)
    for t, frame in degraded_frames(clip, frames, args.seed):
        waiting.append(torch.from_numpy(frame)[None])
        if len(waiting) == args.batch or t == frames - 1:
            if args.memory_detector == "mtcnn":
                found = split_frames(detect_faces(torch.cat(waiting), detector="mtcnn"))
            else:
                found = [truth_faces(clip, u, rng) for u in range(t + 1 - len(waiting), t + 1)]
            for image, faces in zip(waiting, found):
                consume(stream.push(faces, image))
            waiting = []
    consume(stream.flush())
    elapsed = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert done == frames
    return {"frames": frames, "rss_growth_mb": peak - baseline, "traced_peak_mb": traced_peak / 2**20,
            "max_held": stream.max_held + args.batch, "fps": frames / elapsed}


def truth_faces(clip: Clip, t: int, rng: np.random.Generator) -> FaceSet:
    """Frame t's faces as a detector would give them: the true landmarks plus 0.3 px noise."""
    landmarks = torch.from_numpy(clip.truth(t) + rng.normal(0, 0.3, (len(clip.faces), 5, 2))).float()
    size = (landmarks[:, 1] - landmarks[:, 0]).norm(dim=-1) * 2.5
    centre = landmarks.mean(dim=1)
    boxes = torch.cat([centre - size[:, None] / 2, centre + size[:, None] / 2], dim=1)
    n = len(clip.faces)
    return FaceSet(torch.zeros(n, dtype=torch.long), boxes, torch.ones(n), landmarks, (clip.size,), (0,), "truth")


def memory_scan(args) -> list[dict]:
    rows = []
    for frames in args.memory_frames:
        cmd = [sys.executable, __file__, "--memory-child", str(frames), "--threads", str(args.threads), "--crop", str(args.crop),
               "--memory-detector", args.memory_detector, "--sigma", str(args.sigma), "--max-gap", str(args.max_gap), "--batch", str(args.batch), "--seed", str(args.seed)]
        # glibc's per-thread arenas keep the freed blocks of MTCNN's variable-size tensors: with
        # its defaults RSS climbs for the first ~500 frames and then levels off (allocator
        # caching, not data held); one arena, trimmed, shows what the pipeline itself holds
        env = dict(os.environ) if args.default_malloc else {**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "0"}
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        except (subprocess.CalledProcessError, ValueError) as exc:  # each length in its own try
            rows.append({"frames": frames, "error": str(getattr(exc, "stderr", exc))[-300:]})
    return rows


# ---------------------------------------------------------------- report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=300, help="frames per clip (>= 20; a std over fewer than ~300 frames of smoothed noise is itself noisy)")
    p.add_argument("--memory-frames", default="100,1000,2000", help="comma-separated clip lengths for the memory scan ('' skips it)")
    p.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="temporal smoothing strength, frames")
    p.add_argument("--max-gap", type=int, default=DEFAULT_MAX_GAP, help="missed frames a track survives")
    p.add_argument("--crop", type=int, default=128, help="crop size for the stand-in restorer (flicker, memory)")
    p.add_argument("--batch", type=int, default=8, help="frames per detector call")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="noise / JPEG seed")
    p.add_argument("--memory-detector", choices=("mtcnn", "truth"), default="mtcnn",
                   help="faces for the memory scan: MTCNN on every frame, or the true landmarks plus noise (no detector: "
                        "what the stream holds is the same, its detector's buffers are per batch, and it runs ~5x faster)")
    p.add_argument("--default-malloc", action="store_true", help="memory scan with glibc's default arenas (see memory_scan)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.frames < 20:
        raise SystemExit("--frames must be >= 20 (the smoothing window alone is 31 frames wide)")
    args.memory_frames = [int(x) for x in args.memory_frames.split(",") if x.strip()]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        with torch.no_grad():
            print(json.dumps(memory_child(args.memory_child, args)))
        return
    print(f"# bench_video: {args.frames} frames/clip, sigma {args.sigma}, max_gap {args.max_gap}, MTCNN, {args.threads} threads")
    results = {}
    with torch.no_grad():
        for clip in make_clips(args.frames):
            try:
                results[clip.name] = run_clip(clip, args)
            except Exception as exc:  # noqa: BLE001 - each scenario in its own try, like diffusers' bench
                results[clip.name] = {"error": repr(exc)}
    print("\n| clip | mode | jitter std (512-crop px) | jitter f2f | err px | lag px | swaps | ids/face | miss | flicker (8-bit levels) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        if "error" in rows:
            print(f"| {name} | error: {rows['error']} |")
            continue
        for mode in ("per-frame", "temporal"):
            r = rows[mode]
            print(f"| {name} | {mode} | {r['jitter']:.2f} | {r['f2f']:.2f} | {r['err']:.2f} | {r['lag']:+.2f} | {r['swaps']} | {r['ids']} | {r['miss']} | {r['flicker']:.2f} |")
        print(f"| {name} | input (noisy) | | | | | | | | {rows['input']['flicker']:.2f} |")
        print(f"| {name} | clean clip | | | | | | | | {rows['clean']['flicker']:.2f} |")
    for name, rows in results.items():
        if "error" not in rows:
            pf, tm = rows["per-frame"], rows["temporal"]
            print(f"{name}: jitter {pf['jitter'] / tm['jitter']:.1f}x lower (std), {pf['f2f'] / tm['f2f']:.0f}x (frame to frame); "
                  f"err {tm['err']:.2f} px, lag {tm['lag']:+.2f} px; swaps {tm['swaps']}, ids/face {tm['ids']}; "
                  f"detection {rows['input']['detect_fps']:.1f} frames/s")
    memory = memory_scan(args) if args.memory_frames else []
    if memory:
        print("\n| frames | peak RSS growth MB | tracemalloc peak MB | frames held | frames/s |")
        print("|---|---|---|---|---|")
        for m in memory:
            if "error" in m:
                print(f"| {m['frames']} | error: {m['error']} |")
            else:
                print(f"| {m['frames']} | {m['rss_growth_mb']:.1f} | {m['traced_peak_mb']:.2f} | {m['max_held']} | {m['fps']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"clips": results, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
