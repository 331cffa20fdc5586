"""Reference NIQE numbers from BasicSR itself, for tests/test_eval_niqe.py.

    pip install --no-deps --target /tmp/bsr basicsr==1.4.2
    PYTHONPATH=/tmp/bsr python bench/niqe_reference.py           # prints the table the test holds
    PYTHONPATH=/tmp/bsr python bench/niqe_reference.py --compare # ours vs BasicSR, side by side

BasicSR is scored exactly as face-restoration scripts call it: `calculate_niqe(img, crop_border=0)`
on the image as cv2.imread gives it (BGR uint8). The images are the two test portraits and a
degraded copy of each (made here by `degraded`, pure NumPy, so the test rebuilds them bit for bit).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = ("astronaut.png", "grace_hopper.jpg")


def degraded(rgb: np.ndarray, factor: int = 4, noise: float = 8.0, seed: int = 0) -> np.ndarray:
    """Box-downsample by `factor`, nearest-upsample back, add Gaussian noise (std in 8-bit levels): uint8 RGB."""
    h, w = (rgb.shape[0] // factor) * factor, (rgb.shape[1] // factor) * factor
    small = rgb[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor, 3).mean((1, 3))
    big = small.repeat(factor, 0).repeat(factor, 1)
    big = big + np.random.RandomState(seed).normal(0.0, noise, big.shape)
    return np.clip(np.round(big), 0, 255).astype(np.uint8)


def reference_images() -> dict[str, np.ndarray]:
    """name -> uint8 RGB [H, W, 3]: each portrait and its degraded copy."""
    out = {}
    for name in PORTRAITS:
        rgb = np.asarray(Image.open(REPO / "tests" / "data" / name).convert("RGB"))
        out[name] = rgb
        out[f"{name}:degraded"] = degraded(rgb)
    return out


def basicsr_niqe(rgb: np.ndarray) -> float:
    import torchvision.transforms.functional as functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional)  # basicsr 1.4.2 on torchvision >= 0.17
    from basicsr.metrics.niqe import calculate_niqe

    return float(calculate_niqe(np.ascontiguousarray(rgb[..., ::-1]), crop_border=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true", help="also score with lafr_core.eval.niqe and print the differences")
    args = parser.parse_args()
    images = reference_images()
    numbers = {name: basicsr_niqe(rgb) for name, rgb in images.items()}
    print(json.dumps(numbers, indent=1))
    if args.compare:
        import torch

        sys.path.insert(0, str(REPO))
        from lafr_core.eval.niqe import niqe

        for name, rgb in images.items():
            ours = float(niqe(torch.from_numpy(rgb[None]).double() / 255.0)[0])
            print(f"{name:28s} basicsr {numbers[name]:.10f}  ours {ours:.10f}  diff {ours - numbers[name]:+.2e}")


if __name__ == "__main__":
    main()
