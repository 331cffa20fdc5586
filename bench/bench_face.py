"""Face pipeline speed: ours (batched torch) vs facexlib's FaceRestoreHelper, same landmarks.

Scene: the 1024x1024 canvas of tests/face_fixtures.py with 4 real faces at 4 scales.
Scenarios (warm-up, then --runs rounds timing each scenario once per round; medians reported):
  ours_detect        detect_faces(detector="mtcnn") on the canvas
  ours_align_paste   align_faces + paste_faces of the unmodified crops (float tensors in and out)
  ours_total         detect + align + paste
  facexlib_align_paste   FaceRestoreHelper on the SAME landmarks: align_warp_face,
                     get_inverse_affine, add_restored_face, paste_faces_to_input_image, clean_all
                     (its native uint8 BGR input; conversion not timed, in its favour)
facexlib's detector cannot run here (its weights are a download), so detection is reported for
ours only; the ratio compares align+paste. FaceRestoreHelper's constructor loads RetinaFace and
ParseNet (downloading them); align/paste do not use them, so the constructor runs with those two
loaders replaced by stubs returning None: nothing is downloaded, nothing else changes.

    python bench/bench_face.py --runs 7 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from face_fixtures import compose_canvas  # noqa: E402
from lafr_core.face import align_faces, detect_faces, paste_faces  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(scenarios: dict, runs: int, device: torch.device, warmup: int = 2) -> dict[str, list[float]]:
    """Time every scenario once per round, `runs` rounds: load changes on a shared machine hit
    all scenarios alike instead of whichever happened to run during them."""
    for fn in scenarios.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(runs):
        for name, fn in scenarios.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def ours(canvas: torch.Tensor, device: torch.device) -> tuple[dict, torch.Tensor]:
    image = canvas.to(device)
    faces = detect_faces(image, detector="mtcnn")

    def align_paste():
        crops, aligned = align_faces(image, faces)
        return paste_faces(image, crops, aligned)

    def total():
        found = detect_faces(image, detector="mtcnn")
        crops, aligned = align_faces(image, found)
        return paste_faces(image, crops, aligned)

    scenarios = {"ours_detect": lambda: detect_faces(image, detector="mtcnn"), "ours_align_paste": align_paste, "ours_total": total}
    return scenarios, faces.landmarks.cpu()


def facexlib_helper(device: torch.device):
    """FaceRestoreHelper built without its detector / parser (see the module docstring)."""
    import facexlib.utils.face_restoration_helper as frh

    saved = frh.init_detection_model, frh.init_parsing_model
    frh.init_detection_model = frh.init_parsing_model = lambda *args, **kwargs: None
    try:
        return frh.FaceRestoreHelper(1, face_size=512, crop_ratio=(1, 1), det_model="retinaface_resnet50",
                                     save_ext="png", use_parse=False, device=device)
    finally:
        frh.init_detection_model, frh.init_parsing_model = saved


def facexlib(canvas: torch.Tensor, landmarks: torch.Tensor) -> dict:
    helper = facexlib_helper(torch.device("cpu"))
    bgr = np.ascontiguousarray((canvas[0].numpy()[..., ::-1] * 255).round().astype(np.uint8))
    points = [lm.numpy().astype(np.float64) for lm in landmarks]

    def align_paste():
        helper.clean_all()
        helper.read_image(bgr)
        helper.all_landmarks_5 = [p.copy() for p in points]
        helper.align_warp_face()
        helper.get_inverse_affine()
        for crop in helper.cropped_faces:
            helper.add_restored_face(crop)
        out = helper.paste_faces_to_input_image()
        helper.clean_all()
        return out

    return {"facexlib_align_paste": align_paste}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per scenario (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenCV threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "face_cpu.json")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5 (median of >= 5)")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    canvas = compose_canvas()
    scenarios, landmarks = ours(canvas, device)
    try:
        import cv2

        cv2.setNumThreads(torch.get_num_threads())
        scenarios.update(facexlib(canvas, landmarks))
    except ImportError as exc:
        print(f"facexlib not importable ({exc}): only our numbers")
    results = interleaved(scenarios, args.runs, device)
    faces = landmarks.shape[0]
    rows = []
    for name, times in results.items():
        median = statistics.median(times)
        rows.append({"scenario": name, "device": str(device), "faces": faces, "median_s": median,
                     "per_face_ms": 1000 * median / faces, "times": times, "threads": torch.get_num_threads()})
        print(f"{name:22s} {1000 * median:8.1f} ms   {1000 * median / faces:7.1f} ms/face")
    if "facexlib_align_paste" in results:
        ratio = statistics.median(results["facexlib_align_paste"]) / statistics.median(results["ours_align_paste"])
        print(f"align+paste: ours is {ratio:.2f}x the speed of facexlib (>1 = faster)")
        rows.append({"scenario": "ratio_facexlib_over_ours_align_paste", "value": ratio})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
