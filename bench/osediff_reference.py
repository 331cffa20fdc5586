"""OSEDiff's own inference code vs our converted file through lafr_core's standalone pipeline.

One command, no network, no real weights:

    flock /tmp/lafr-heavy.lock python bench/osediff_reference.py \\
        --osediff /path/to/OSEDiff --python /path/to/osediff-venv/bin/python

`--osediff` is a local checkout of github.com/cswry/OSEDiff (this script fetches nothing and
copies none of it); `--python` a venv with OSEDiff's pins installed `--no-deps` beside a current
torch (diffusers 0.25.0, peft 0.9.0, transformers 4.28.1, huggingface_hub 0.20.3, tokenizers
0.13.3, accelerate 0.27.2; `python -m venv --system-site-packages` works).

What it does, all seeded:
1. writes a random-weight SD2.1-base diffusers folder (the FULL bundled configs, diffusers' own
   init; a small CLIP tokenizer vocabulary that covers the prompt) and a checkpoint in OSEDiff's
   exact saved structure (tests/osediff_fixtures.structure_checkpoint, rank 4);
2. runs OSEDiff_test (bench/osediff_reference_runner.py, in the OSEDiff venv) on one image,
   fp32, with `latent_dist.sample()` after torch.manual_seed(seed);
3. converts the checkpoint with `lafr convert --base <folder> --latent sample --seed <seed>` and
   restores the same image with LafrPipeline (fp32, CPU);
4. prints the max abs difference of the prompt embeddings and of the output images (0..1) and
   exits 1 when the images differ by more than 2e-3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from lafr_core.__main__ import main as lafr_main  # noqa: E402
from lafr_core.osediff import default_prompt  # noqa: E402
from lafr_core.pipeline import CONFIG_DIR, LafrPipeline, bundled_config  # noqa: E402

TOLERANCE = 2e-3
def write_sd21_folder(folder: Path, seed: int) -> None:
    """Random-weight SD2.1-base as a diffusers folder (unet, vae, text_encoder, tokenizer, scheduler)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from osediff_fixtures import write_tokenizer

    if (folder / "done-v2").exists():
        return
    torch.manual_seed(seed)
    UNet2DConditionModel(**bundled_config("unet")).save_pretrained(folder / "unet")
    AutoencoderKL(**bundled_config("vae")).save_pretrained(folder / "vae")
    text_config = json.loads((CONFIG_DIR / "text_encoder_config.json").read_text())
    text_config.pop("_class_name", None)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder.save_pretrained(folder / "text_encoder")
    # transformers 5 saves CLIPTextModel without the "text_model." prefix, which transformers 4.28
    # (OSEDiff's pin) does not map back: it would initialise a random encoder of its own. Write the
    # weights with the prefix, which both read.
    from safetensors.torch import save_file

    state = {("" if k.startswith("text_model.") else "text_model.") + k: v.contiguous() for k, v in text_encoder.state_dict().items()}
    save_file(state, str(folder / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG_DIR / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
    write_tokenizer(folder / "tokenizer")
    (folder / "done-v2").write_text("ok")


def load_input(path: Path, size: int) -> torch.Tensor:
    """[1, 3, size, size] in -1..1: a centre square, resized, then ToTensor() * 2 - 1 as test_osediff.py."""
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    return pixels[None] * 2 - 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--osediff", type=Path, required=True, help="a local checkout of github.com/cswry/OSEDiff")
    parser.add_argument("--python", type=Path, required=True, help="the Python of a venv with OSEDiff's pins")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lafr-osediff-reference"), help="scratch folder (random models are kept)")
    parser.add_argument("--image", type=Path, default=REPO / "tests" / "data" / "grace_hopper.jpg")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from osediff_fixtures import structure_checkpoint

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sd21 = work / "sd21-base-random"
    started = time.perf_counter()
    write_sd21_folder(sd21, seed=0)
    pkl = work / "osediff_face.pkl"
    torch.save(structure_checkpoint(rank=4, seed=1), pkl)
    lq = load_input(args.image, args.size)
    torch.save(lq, work / "input.pt")
    prompt = default_prompt("osediff-face")
    print(f"models and checkpoint ready ({time.perf_counter() - started:.0f} s)", flush=True)

    started = time.perf_counter()
    runner = REPO / "bench" / "osediff_reference_runner.py"
    theirs_file = work / "theirs.pt"
    subprocess.run(
        [str(args.python), str(runner), str(args.osediff), str(sd21), str(pkl), str(work / "input.pt"), prompt,
         str(args.seed), str(theirs_file)],
        check=True,
    )
    theirs = torch.load(theirs_file)
    print(f"OSEDiff_test ran ({time.perf_counter() - started:.0f} s)", flush=True)

    started = time.perf_counter()
    converted = work / "osediff_face.safetensors"
    code = lafr_main(["convert", str(pkl), "-o", str(converted), "--base", str(sd21), "--prompt", prompt,
                      "--latent", "sample", "--seed", str(args.seed)])
    if code:
        return code
    pipe = LafrPipeline.from_pretrained(sd21, converted, device="cpu", dtype=torch.float32)
    ours = pipe.restore(((lq + 1) / 2).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    print(f"LafrPipeline ran ({time.perf_counter() - started:.0f} s)", flush=True)

    from lafr_core.lafr_file import load_lafr

    embeds_diff = (load_lafr(converted).prompt_embeds - theirs["prompt_embeds"]).abs().max().item()
    reference = theirs["image"] * 0.5 + 0.5
    image_diff = (ours - reference).abs().max().item()
    mean_diff = (ours - reference).abs().mean().item()
    print(f"prompt embeddings: max |OSEDiff - ours| = {embeds_diff:.3g}")
    print(f"output images (0..1, {args.size}x{args.size}): max |OSEDiff - ours| = {image_diff:.3g}, mean {mean_diff:.3g} "
          f"(tolerance {TOLERANCE:g}); output range {reference.min().item():.3f}..{reference.max().item():.3f}, "
          f"std {reference.std().item():.3f}")
    return 0 if image_diff <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
