"""The restorers bench/bench_interlcm.py times, built the way a user's run builds them.

Each builder returns an `Engine`: `restore(faces [B, S, S, 3] 0..1) -> restored` plus the bytes of
weights it keeps resident. Weights are random (speed and memory do not depend on their values) but
everything else is the user's path:
  lafr        SD2.1-base UNet and VAE from the shipped configs (lafr_core/configs/sd21_base) + a
              random LAFR file (adapter, a LoRA, prompt embedding) written with save_lafr, read
              back with load_lafr -> LafrPipeline.from_modules (LoRA merged, UNet pruned);
  interlcm-N  LCM Dreamshaper v7's UNet and VAE and CLIP ViT-B/16 from the shipped configs
              (lafr_core/configs/lcm_dreamshaper_v7) + a random converted InterLCM file (visual
              encoder, ControlNet) written with save_interlcm, read back with load_interlcm ->
              InterLCMPipeline.from_weights, N network steps.
`tiny=True` builds the same classes at toy widths on 64 px crops and skips the file round trip
(the loaders' shape checks are for the full models): a plumbing check for the tests, seconds long.

`serve` is one engine's worker process for bench/bench_interlcm.py. diffusers and transformers
are imported at the top so that a fork server preloading this module pays their import (over 10 s
on a small CPU) once for all workers.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lafr_core.adapter import AlignerConfig, LatentAligner  # noqa: E402
from lafr_core.interlcm.pipeline import InterLCMPipeline  # noqa: E402
from lafr_core.interlcm.visual_encoder import VisualEncoder  # noqa: E402
from lafr_core.interlcm.weights import InterLCMWeights, base_metadata, config, load_interlcm, save_interlcm  # noqa: E402
from lafr_core.lafr_file import LafrWeights, load_lafr, save_lafr  # noqa: E402
from lafr_core.pipeline import LafrPipeline, bundled_config  # noqa: E402

from bench_interlcm import ENGINES  # noqa: E402  (light: the parent lists the engines without diffusers)
FULL_CROP, TINY_CROP = 512, 64  # tiny: the VAEs still downsample 8x, as the ControlNet hint needs

# toy widths of the same block layouts (SD2.1's UNet keeps its 4 levels; LCM's drops to 2)
TINY_SD21_UNET = dict(block_out_channels=[32, 32, 64, 64], attention_head_dim=[2, 2, 4, 4],
                      cross_attention_dim=32, norm_num_groups=8, layers_per_block=1)
TINY_LCM_UNET = dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=8)
TINY_VAE = dict(block_out_channels=[32] * 4, layers_per_block=1)
TINY_CLIP = dict(num_hidden_layers=1, intermediate_size=64)  # width 768 / patch 16 / 224 px are checked
# two LoRA layers at real SD2.1 kohya names: merged at load, so they change no run time
LORA_LAYERS = {"lora_unet_input_blocks_1_0_in_layers_2": (320, 320, 3, 3), "lora_unet_time_embed_0": (1280, 320)}


@dataclass
class Engine:
    name: str
    restore: Callable[[torch.Tensor], torch.Tensor]
    weight_bytes: int
    crop: int


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def random_kohya_lora(rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, (out_ch, in_ch, *kernel) in LORA_LAYERS.items():
        lora[f"{name}.lora_down.weight"] = torch.randn(rank, in_ch, *kernel, generator=g) * 0.01
        lora[f"{name}.lora_up.weight"] = torch.randn(out_ch, rank, *([1] * len(kernel)), generator=g) * 0.01
        lora[f"{name}.alpha"] = torch.tensor(float(rank))
    return lora


def build_lafr(device: str, dtype: torch.dtype, tiny: bool, workdir: Path) -> Engine:
    torch.manual_seed(0)
    unet_config = {**bundled_config("unet"), **(TINY_SD21_UNET if tiny else {})}
    vae_config = {**bundled_config("vae"), **(TINY_VAE if tiny else {})}
    aligner = LatentAligner(AlignerConfig()).eval()
    prompt = torch.randn(1, 77, unet_config["cross_attention_dim"])
    if tiny:  # save_lafr refuses a prompt that is not 77 x 1024: keep the weights in memory
        weights = LafrWeights(aligner=aligner, kohya_lora={}, prompt_embeds=prompt,
                              meta={"lafr.latent_scale": "0.18215", "lafr.stages": "1+2"})
    else:
        path = save_lafr(workdir / "random_lafr.safetensors", aligner=aligner, kohya_lora=random_kohya_lora(), prompt_embeds=prompt)
        weights = load_lafr(path)
        path.unlink()
    # the UNet is passed without a name kept here: from_modules prunes it and frees the original
    pipe = LafrPipeline.from_modules(UNet2DConditionModel(**unet_config).eval(), AutoencoderKL(**vae_config).eval(),
                                     weights, device=device, dtype=dtype)
    size = weight_bytes(pipe.vae, pipe.unet, *([pipe.aligner] if pipe.aligner is not None else []))
    return Engine("lafr", lambda faces: pipe.restore(faces, batch_size=faces.shape[0]), size, TINY_CROP if tiny else FULL_CROP)


def lcm_config(name: str, tiny: bool) -> dict:
    cfg = config(name)
    if tiny:
        cfg.update({"unet": TINY_LCM_UNET, "vae": TINY_VAE, "clip_vision": TINY_CLIP}.get(name, {}))
        if name == "controlnet":
            cfg.update({k: v for k, v in TINY_LCM_UNET.items() if k != "up_block_types"})
    return cfg


def build_interlcm(steps: int, device: str, dtype: torch.dtype, tiny: bool, workdir: Path) -> Engine:
    torch.manual_seed(0)
    visual = VisualEncoder().state_dict()
    spatial = ControlNetModel(**lcm_config("controlnet", tiny)).state_dict()
    meta = base_metadata(steps, source="random weights (bench/bench_engines.py)", licence="none", taken="params_ema")
    unet, vae = UNet2DConditionModel(**lcm_config("unet", tiny)), AutoencoderKL(**lcm_config("vae", tiny))
    clip = CLIPVisionModel(CLIPVisionConfig(**lcm_config("clip_vision", tiny)))
    if tiny:  # from_weights builds the bundled full ControlNet: assemble the same modules here
        controlnet = ControlNetModel(**lcm_config("controlnet", tiny))
        controlnet.load_state_dict(spatial)
        move = lambda m: m.to(device=device, dtype=dtype).eval()  # noqa: E731
        visual_encoder = InterLCMWeights(visual, spatial, meta).build_visual_encoder().to(device)
        pipe = InterLCMPipeline(unet=move(unet), vae=move(vae), controlnet=move(controlnet), clip_vision=move(clip),
                                visual_encoder=visual_encoder, steps=steps)
    else:
        path = save_interlcm(workdir / f"random_interlcm_{steps}step.safetensors", visual, spatial, meta)
        del visual, spatial
        gc.collect()
        weights = load_interlcm(path)
        path.unlink()
        pipe = InterLCMPipeline.from_weights(unet, vae, clip, weights, device=device, dtype=dtype)
        del weights
    del unet, vae, clip  # the pipeline holds the (moved) modules
    size = weight_bytes(pipe.unet, pipe.vae, pipe.controlnet, pipe.clip_vision, pipe.visual_encoder)
    return Engine(f"interlcm-{steps}", lambda faces: pipe.restore(faces, batch_size=faces.shape[0]), size,
                  TINY_CROP if tiny else FULL_CROP)


def build_engine(name: str, device: str, tiny: bool = False) -> Engine:
    """fp16 on CUDA, fp32 on CPU (what both pipelines default to)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; one of {', '.join(ENGINES)}")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with tempfile.TemporaryDirectory(prefix="bench_engines_") as work:
        if name == "lafr":
            engine = build_lafr(device, dtype, tiny, Path(work))
        else:
            engine = build_interlcm(int(name.split("-")[1]), device, dtype, tiny, Path(work))
    gc.collect()
    return engine


# --------------------------------------------------------------------------- the worker


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the RSS high-water mark that ru_maxrss reports (after
    malloc_trim hands the heap freed by the build back, so it does not sit in the new mark)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def serve(conn, engine_name: str, batch: int, device: str, threads: int, tiny: bool) -> None:
    """Build, make one warm-up call, send "ready"; then answer each "run" with one timed call and
    "quit" with the peak memory since the warm-up began (build-time copies excluded). Errors go
    back as {"error": ...} so the parent can name the engine that failed; a parent gone (EOF)
    ends the worker quietly.

    Each call reports wall seconds and this process's CPU seconds (all its threads): on a machine
    shared with other jobs the wall time grows with their load, the CPU time much less (it still
    counts time threads spin waiting for a descheduled sibling: use --threads 1 there)."""
    try:
        torch.set_num_threads(threads)
        cuda = device.startswith("cuda")
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        start = time.perf_counter()
        engine = build_engine(engine_name, device, tiny=tiny)
        build_s = time.perf_counter() - start
        faces = torch.rand(batch, engine.crop, engine.crop, 3, generator=torch.Generator().manual_seed(0))
        reset = True if cuda else reset_peak_rss()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)

        def peak_bytes() -> int:  # Linux ru_maxrss is in KiB
            return torch.cuda.max_memory_allocated(device) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        def timed() -> tuple[float, float, list[int]]:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                out = engine.restore(faces)
            sync()
            return time.perf_counter() - t0, time.process_time() - c0, list(out.shape)

        warmup_s, _, shape = timed()
        conn.send(dict(ready=True, build_s=build_s, warmup_s=warmup_s, weights_gb=engine.weight_bytes / 1e9, out_shape=shape,
                       threads=torch.get_num_threads(), gpu=torch.cuda.get_device_name(device) if cuda else None))
        while True:
            command = conn.recv()
            if command == "run":  # the peak so far comes along: a run cut short still has it
                seconds, cpu_seconds, shape = timed()
                conn.send(dict(seconds=seconds, cpu_seconds=cpu_seconds, out_shape=shape, peak_gb=peak_bytes() / 1e9))
            elif command == "quit":
                conn.send(dict(peak_gb=peak_bytes() / 1e9, peak_from_warmup=reset))
                return
            else:
                conn.send(dict(error=f"unknown command {command!r}"))
    except EOFError:
        return
    except Exception as exc:  # reported by the parent with the engine's name
        conn.send(dict(error=f"{type(exc).__name__}: {exc}"))
        raise
