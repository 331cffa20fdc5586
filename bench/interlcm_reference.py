"""InterLCM's own inference code vs lafr_core.interlcm on random-weight models of the real configs.

One command, no network, no real weights:

    flock /tmp/lafr-heavy.lock python bench/interlcm_reference.py \\
        --interlcm /path/to/InterLCM --python /path/to/interlcm-venv/bin/python

`--interlcm` is a local checkout of github.com/sen-mao/InterLCM (this script fetches nothing and
copies none of it; the repository has no licence); `--python` a venv with its diffusers pin:
`python -m venv --system-site-packages V && V/bin/pip install --no-deps diffusers==0.28.2
huggingface_hub==0.23.4 transformers==4.41.2 tokenizers==0.19.1 peft==0.11.1 openai-clip ftfy wcwidth`.

What it does, all seeded, CPU, fp32:
1. writes LCM Dreamshaper v7 as a random-weight diffusers folder (the bundled FULL configs:
   SD1.5 UNet with time_cond_proj_dim 256, SD1.5 VAE, LCMScheduler), CLIP ViT-B/16 as OpenAI
   ships it (a TorchScript archive with OpenAI's names: what `clip.load` reads; the same random vision tower as a transformers
   CLIPVisionModel for us), and for each step count the visual and spatial encoders as basicsr
   .pth files ({"params_ema", "params"}); every weight random, the ControlNet's zero-initialised
   layers included, so each path carries signal;
2. runs InterLCM's code (bench/interlcm_reference_runner.py, in the venv) on one aligned face with
   `generator=torch.Generator().manual_seed(seed)` for the LCM noise;
3. converts the .pth pair with lafr_core.interlcm.convert and restores the same face with
   InterLCMPipeline (seed = the same seed);
4. prints the max abs differences (CLIP tokens, visual tokens, LQ latent, output image 0..1 raw
   and with the wavelet colour fix) for 1 and 3 steps, and exits 1 when an image differs by more
   than 2e-3.
Their CLIP preprocessing runs under this venv's torchvision, which antialiases tensor resizes
(>= 0.17), so ours runs with clip_antialias=True here; the pipeline's default (False) follows
InterLCM's pinned torch 1.13.1 / torchvision 0.14. The script also prints how far apart the two
are on this face.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from lafr_core.face.colour import wavelet_low_pass  # noqa: E402
from osediff_reference import load_input  # noqa: E402
from lafr_core.interlcm.convert import convert_interlcm  # noqa: E402
from lafr_core.interlcm.pipeline import InterLCMPipeline  # noqa: E402
from lafr_core.interlcm.visual_encoder import VisualEncoder  # noqa: E402
from lafr_core.interlcm.weights import config  # noqa: E402

TOLERANCE = 2e-3
# --tiny: the same script on small UNet / ControlNet / VAE / CLIP depth (widths that the visual
# module fixes stay: 768-wide CLIP tokens, 197 of them) to check the plumbing in a minute
TINY = {
    "unet": dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=8),
    "vae": dict(block_out_channels=[32] * 4, layers_per_block=1),  # still 8x down: the hint embedding is
    "clip_vision": dict(num_hidden_layers=2),  # OpenAI CLIP fixes the MLP at 4x the width
}
SIZE = {"tiny": False}


def model_config(name: str) -> dict:
    """The bundled full config, or its tiny variant under --tiny."""
    cfg = config(name)
    if SIZE["tiny"]:
        cfg.update(TINY.get(name, {}))
        if name == "controlnet":
            cfg.update({k: v for k, v in TINY["unet"].items() if k != "up_block_types"})
    return cfg
CLIP_TEXT = {"width": 512, "layers": 12, "context": 77, "vocab": 49408, "embed": 512}  # ViT-B/16's text tower


# --------------------------------------------------------------------------- random models, official formats


def randomise_(module: torch.nn.Module, std: float = 0.02) -> None:
    """Give every all-zero or all-one tensor (zero convs, norm scales and biases) random values."""
    with torch.no_grad():
        for param in module.parameters():
            if param.numel() and (bool((param == 0).all()) or bool((param == 1).all())):
                param.add_(torch.randn_like(param) * (0.1 if param.ndim == 1 else std))


def write_lcm_folder(folder: Path, seed: int) -> None:
    """LCM Dreamshaper v7's unet/, vae/, scheduler/ with random weights (diffusers' own init)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if (folder / "done").exists():
        return
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**model_config("unet"))
    randomise_(unet.time_embedding)  # cond_proj reads the guidance embedding: make it count
    unet.save_pretrained(folder / "unet")
    del unet
    gc.collect()
    AutoencoderKL(**model_config("vae")).save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    scheduler = json.loads((REPO / "lafr_core/configs/lcm_dreamshaper_v7/scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    (folder / "done").write_text("ok")


def random_clip_vision(seed: int):
    """A transformers CLIPVisionModel of ViT-B/16 with random weights (norms randomised too)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**model_config("clip_vision"))).eval()
    randomise_(model)
    # OpenAI's ViT-B-16.pt stores fp16 and `clip.load` rounds whatever it loads to fp16 before
    # `.float()` on the CPU: make the random weights fp16-exact so both sides hold the same numbers
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model


def openai_clip_state(vision, seed: int) -> dict[str, torch.Tensor]:
    """OpenAI's ViT-B-16.pt state dict: our vision tower under OpenAI's names (q/k/v fused into
    in_proj, fc1/fc2 as c_fc/c_proj) plus a random text tower (`clip.load` builds the whole CLIP)."""
    v = {k.removeprefix("vision_model."): t for k, t in vision.state_dict().items()}
    out = {
        "visual.class_embedding": v["embeddings.class_embedding"],
        "visual.conv1.weight": v["embeddings.patch_embedding.weight"],
        "visual.positional_embedding": v["embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": v["pre_layrnorm.weight"], "visual.ln_pre.bias": v["pre_layrnorm.bias"],
        "visual.ln_post.weight": v["post_layernorm.weight"], "visual.ln_post.bias": v["post_layernorm.bias"],
    }
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator) * 0.02  # noqa: E731
    out["visual.proj"] = rand(768, CLIP_TEXT["embed"])
    layers = model_config("clip_vision")["num_hidden_layers"]
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([v[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{kind}"] = v[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = v[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = v[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = v[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = v[src + f"mlp.fc2.{kind}"]
    w, ctx = CLIP_TEXT["width"], CLIP_TEXT["context"]
    out.update({
        "token_embedding.weight": rand(CLIP_TEXT["vocab"], w), "positional_embedding": rand(ctx, w),
        "ln_final.weight": torch.ones(w), "ln_final.bias": torch.zeros(w), "text_projection": rand(w, CLIP_TEXT["embed"]),
        "logit_scale": torch.tensor(4.6052),
    })
    for i in range(2 if SIZE["tiny"] else CLIP_TEXT["layers"]):
        dst = f"transformer.resblocks.{i}."
        out.update({
            dst + "attn.in_proj_weight": rand(3 * w, w), dst + "attn.in_proj_bias": torch.zeros(3 * w),
            dst + "attn.out_proj.weight": rand(w, w), dst + "attn.out_proj.bias": torch.zeros(w),
            dst + "ln_1.weight": torch.ones(w), dst + "ln_1.bias": torch.zeros(w),
            dst + "ln_2.weight": torch.ones(w), dst + "ln_2.bias": torch.zeros(w),
            dst + "mlp.c_fc.weight": rand(4 * w, w), dst + "mlp.c_fc.bias": torch.zeros(4 * w),
            dst + "mlp.c_proj.weight": rand(w, 4 * w), dst + "mlp.c_proj.bias": torch.zeros(w),
        })
    return {k: t.contiguous().clone() for k, t in out.items()}


def save_torchscript_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive whose state_dict() is `state`: the form of OpenAI's ViT-B-16.pt, which
    `clip.load(jit=False)` opens with torch.jit.load and rebuilds from its state_dict (a plain
    torch.save file would not do: clip.load retries torch.load on the handle jit.load consumed)."""
    root = torch.nn.Module()
    for key, value in state.items():
        *path_parts, leaf = key.split(".")
        module = root
        for part in path_parts:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


def write_encoders(work: Path, steps: int, seed: int) -> tuple[Path, Path]:
    """visual_encoder_<S>step.pth and spatial_encoder_<S>step.pth as basicsr saves them."""
    from diffusers import ControlNetModel

    visual_path, spatial_path = work / f"visual_encoder_{steps}step.pth", work / f"spatial_encoder_{steps}step.pth"
    if visual_path.exists() and spatial_path.exists():
        return visual_path, spatial_path
    torch.manual_seed(seed)
    visual = VisualEncoder()
    randomise_(visual)
    state = visual.state_dict()
    torch.save({"params": {k: t + 1.0 for k, t in state.items()}, "params_ema": state}, visual_path)
    controlnet = ControlNetModel(**model_config("controlnet"))
    randomise_(controlnet)  # zero convs and the hint embedding's zero conv_out
    torch.save({"params_ema": controlnet.state_dict()}, spatial_path)
    del controlnet
    gc.collect()
    return visual_path, spatial_path


# --------------------------------------------------------------------------- one comparison


def ours(work: Path, clip_vision, steps: int, seed: int, lq: torch.Tensor) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(work / "lcm", subfolder="unet")
    vae = AutoencoderKL.from_pretrained(work / "lcm", subfolder="vae")
    if SIZE["tiny"]:  # the converter accepts only the full SD1.5 ControlNet: load the .pth directly
        from diffusers import ControlNetModel

        controlnet = ControlNetModel(**model_config("controlnet"))
        controlnet.load_state_dict(torch.load(work / f"spatial_encoder_{steps}step.pth")["params_ema"])
        visual_encoder = VisualEncoder()
        visual_encoder.load_state_dict(torch.load(work / f"visual_encoder_{steps}step.pth")["params_ema"])
        pipe = InterLCMPipeline(unet.eval(), vae.eval(), controlnet.eval(), clip_vision, visual_encoder.eval(), steps=steps, seed=seed)
    else:
        converted = convert_interlcm(*(work / f"{n}_encoder_{steps}step.pth" for n in ("visual", "spatial")),
                                     work / f"interlcm_{steps}step.safetensors")
        pipe = InterLCMPipeline.from_weights(unet, vae, clip_vision, converted, seed=seed, device="cpu", dtype=torch.float32)
    pipe.clip_antialias = True  # their code under this venv's torchvision (module doc)
    with torch.no_grad():
        from lafr_core.interlcm.clip_features import face_tokens

        tokens = face_tokens(clip_vision, lq, antialias=True)
        tokens_aliased = face_tokens(clip_vision, lq, antialias=False)
        visual = pipe.visual_encoder(tokens)
        latent = vae.encode(lq).latent_dist.mean * 0.18215
        started = time.perf_counter()
        x0 = pipe.restore_latents(lq)
        image = vae.decode(x0 / 0.18215).sample
        seconds = time.perf_counter() - started
        # their wavelet fix runs on the unclamped decode, ours (the paste's) on the clamped crop:
        # compared here on the unclamped one, then clamped as their tensor2img does
        raw, reference = image * 0.5 + 0.5, lq * 0.5 + 0.5
        wavelet = (raw - wavelet_low_pass(raw) + wavelet_low_pass(reference)).clamp(0, 1)
    return {"image": image, "image_wavelet": wavelet, "clip_tokens": tokens, "clip_tokens_aliased": tokens_aliased,
            "visual_feat": visual, "latent": latent, "seconds": seconds}


def compare(steps: int, theirs: dict, mine: dict) -> float:
    """Print the differences; returns the raw image's max abs difference (0..1 scale)."""
    def diff(a, b):
        return (a.float() - b.float()).abs().max().item()

    image_theirs, image_ours = theirs["image"] * 0.5 + 0.5, mine["image"] * 0.5 + 0.5
    image_diff = diff(image_ours, image_theirs)
    wavelet_theirs = (theirs["image_wavelet"] * 0.5 + 0.5).clamp(0, 1)
    print(f"[{steps} step(s)] timesteps {theirs['timesteps']}")
    print(f"  CLIP tokens [1, 197, 768]      max |InterLCM - ours| = {diff(mine['clip_tokens'], theirs['clip_tokens']):.3g}")
    print(f"  visual tokens [1, 77, 768]     max |InterLCM - ours| = {diff(mine['visual_feat'], theirs['visual_feat']):.3g}")
    print(f"  LQ latent [1, 4, 64, 64]       max |InterLCM - ours| = {diff(mine['latent'], theirs['latent']):.3g}")
    print(f"  output image (0..1, raw)       max |InterLCM - ours| = {image_diff:.3g}, mean "
          f"{(image_ours - image_theirs).abs().mean().item():.3g} (tolerance {TOLERANCE:g}); range "
          f"{image_theirs.min().item():.3f}..{image_theirs.max().item():.3f}, std {image_theirs.std().item():.3f}")
    wavelet_diff = diff(mine["image_wavelet"], wavelet_theirs)
    print(f"  with wavelet colour fix (0..1) max |InterLCM - ours| = {wavelet_diff:.3g}")
    print(f"  (our CLIP tokens without antialiasing, the pinned torchvision's resize, move by "
          f"{diff(mine['clip_tokens_aliased'], mine['clip_tokens']):.3g}; our sampling+decode took {mine['seconds']:.1f} s)")
    return max(image_diff, wavelet_diff)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interlcm", type=Path, required=True, help="a local checkout of github.com/sen-mao/InterLCM")
    parser.add_argument("--python", type=Path, required=True, help="the Python of a venv with InterLCM's diffusers pin")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lafr-interlcm-reference"), help="scratch folder (random models are kept)")
    parser.add_argument("--image", type=Path, default=REPO / "tests" / "data" / "grace_hopper.jpg")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3], choices=[1, 3])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="small models (a plumbing check in a minute, not the proof)")
    args = parser.parse_args()
    SIZE["tiny"] = args.tiny
    if args.tiny and args.work == parser.get_default("work"):
        args.work = Path(str(args.work) + "-tiny")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_lcm_folder(work / "lcm", seed=0)
    clip_vision = random_clip_vision(seed=1)
    if not (work / "clip_vit_b16.pt").exists():
        save_torchscript_state(openai_clip_state(clip_vision, seed=2), work / "clip_vit_b16.pt")
    lq = load_input(args.image, 512)  # OSEDiff's loader: centre square, LANCZOS, ToTensor() * 2 - 1
    torch.save(lq, work / "input.pt")
    for steps in args.steps:
        write_encoders(work, steps, seed=10 + steps)
    print(f"models ready ({time.perf_counter() - started:.0f} s)", flush=True)

    worst = 0.0
    for steps in args.steps:
        started = time.perf_counter()
        out = work / f"theirs_{steps}step.pt"
        runner = REPO / "bench" / "interlcm_reference_runner.py"
        subprocess.run([str(args.python), str(runner), str(args.interlcm), str(work), str(steps), str(args.seed), str(out)], check=True)
        theirs = torch.load(out)
        print(f"InterLCM's code ran ({time.perf_counter() - started:.0f} s)", flush=True)
        mine = ours(work, clip_vision, steps, args.seed, lq)
        gc.collect()
        worst = max(worst, compare(steps, theirs, mine))
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
