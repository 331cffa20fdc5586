"""Standalone LAFR restoration on diffusers modules (CLI, trainer validation, benchmarks).

Hosts (ComfyUI, A1111) run their own UNet and VAE; this path loads SD2.1-base itself from
  * a single original-format file (.safetensors, or a .ckpt read with weights_only=True), fully
    offline, with the SD2.1-base configs shipped in lafr_core/configs/sd21_base;
  * a diffusers folder (unet/, vae/, scheduler/);
  * a hub id such as "stabilityai/stable-diffusion-2-1-base" for users with internet (or a
    warm hub cache).
The text encoder is never loaded for LAFR files: the prompt embedding ships in the file. A
converted file of another engine (OSEDiff, LAFR format 2) may ship only its prompt text; its
embedding is then computed once from the base model's text encoder (a diffusers folder or hub
id), and its replacements, VAE-encoder LoRA and latent rule are applied here too.

restore(faces): encode (posterior mode x latent_scale) -> align -> ONE pruned UNet step for the
whole batch -> decode. fp16 on CUDA by default (bf16 on request), fp32 on CPU.
host_model(): the same VAE and pruned UNet lent to lafr_core.host_chain (the CLI's path), so the
standalone pipeline restores photos through the chain every host runs.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .adapter import LatentAligner
from .base_model import UNET_PREFIX, V_PRED_SENTINEL, BaseModelError, identify_diffusers_config, identify_ldm_checkpoint, require_sd2_epsilon
from .host_chain import HostModel
from .lafr_file import LafrWeights, load_lafr
from .unet_step import PrunedUNet

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd21_base"
VAE_PREFIX = "first_stage_model."
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def bundled_config(name: str) -> dict:
    """One of the shipped SD2.1-base diffusers configs ("unet", "vae", "scheduler")."""
    config = json.loads((CONFIG_DIR / f"{name}_config.json").read_text())
    config.pop("_class_name", None)
    return config


def default_device_dtype(device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with fp16 when available, else CPU with fp32 (half precision is slow or missing on CPU)."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


# --------------------------------------------------------------------------- base model loading

def _read_single_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of an original-format checkpoint. Pickles only with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise BaseModelError(f"{path}: not a checkpoint state dict (got {type(obj).__name__})")
    return obj


def _check_single_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    sentinel = tensors.get(V_PRED_SENTINEL)
    std = float(sentinel.float().std()) if sentinel is not None else None
    info = identify_ldm_checkpoint(tensors, v_pred_bias_std=std)
    if info.family == "unknown" and not any(k.startswith(UNET_PREFIX) for k in tensors):
        raise BaseModelError(
            f"{path}: no Stable Diffusion UNet inside (no '{UNET_PREFIX}*' keys). Pass a full "
            f"SD2.1-base checkpoint, not a LoRA, VAE or LAFR file."
        )
    require_sd2_epsilon(info, str(path))


def _instantiate(cls, config: dict, state_dict: dict[str, torch.Tensor], what: str, source: str):
    """Build a diffusers model without random init and load `state_dict` strictly."""
    with torch.device("meta"):
        model = cls(**config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise BaseModelError(
            f"{source}: the {what} weights do not fit SD2.1-base: missing {sorted(missing)[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {sorted(unexpected)[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    return model.eval()


def load_sd21_from_single_file(path: str | Path):
    """(unet, vae) diffusers modules from an original SD2.1-base checkpoint, offline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from .ldm_keys import layout_from_diffusers_config, ldm_to_diffusers

    path = Path(path)
    tensors = _read_single_file(path)
    _check_single_file(path, tensors)
    unet_config, vae_config = bundled_config("unet"), bundled_config("vae")
    ldm_unet = {k[len(UNET_PREFIX):]: v for k, v in tensors.items() if k.startswith(UNET_PREFIX)}
    unet_sd = ldm_to_diffusers(ldm_unet, **layout_from_diffusers_config(unet_config))
    unet = _instantiate(UNet2DConditionModel, unet_config, unet_sd, "UNet", str(path))
    vae_sd = convert_ldm_vae_checkpoint({k: v for k, v in tensors.items() if k.startswith(VAE_PREFIX)}, vae_config)
    vae = _instantiate(AutoencoderKL, vae_config, vae_sd, "VAE", str(path))
    return unet, vae


def _load_diffusers_config(source: str, subfolder: str, name: str) -> dict | None:
    from diffusers import ConfigMixin  # noqa: F401  (diffusers present on this path)
    from huggingface_hub import hf_hub_download

    local = Path(source) / subfolder / name
    if local.is_file():
        return json.loads(local.read_text())
    if Path(source).exists():
        return None
    return json.loads(Path(hf_hub_download(source, name, subfolder=subfolder)).read_text())


def load_sd21_from_diffusers(source: str | Path):
    """(unet, vae) from a diffusers folder or a hub id; refuses non SD2.x-eps models."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    source = str(source)
    unet_config = _load_diffusers_config(source, "unet", "config.json")
    if unet_config is None:
        raise BaseModelError(f"{source}: not a diffusers model folder (no unet/config.json)")
    scheduler_config = _load_diffusers_config(source, "scheduler", "scheduler_config.json")
    require_sd2_epsilon(identify_diffusers_config(unet_config, scheduler_config), source)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae").eval()
    return unet, vae


def load_sd21(source: str | Path):
    """(unet, vae) from a single file, a diffusers folder or a hub id."""
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise BaseModelError(f"{path}: expected an SD2.1-base checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)})")
        return load_sd21_from_single_file(path)
    looks_local = path.is_absolute() or str(source).startswith(".") or path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if path.is_dir() or ("/" in str(source) and not looks_local):
        return load_sd21_from_diffusers(source)
    raise BaseModelError(f"{source}: no such file or folder, and not a hub id like 'stabilityai/stable-diffusion-2-1-base'")


# --------------------------------------------------------------------------- the pipeline

@dataclass
class LafrPipeline:
    """VAE + (optional) latent aligner + pruned UNet step, all on one device and dtype."""

    vae: torch.nn.Module
    unet: PrunedUNet
    aligner: LatentAligner | None
    latent_scale: float = 0.18215
    latent_rule: str = "mode"  # the file's lafr.latent: "mode", or "sample" seeded with latent_seed
    latent_seed: int | None = None

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        lafr: str | Path | LafrWeights,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        lora_strength: float = 1.0,
        prompt_embeds: torch.Tensor | None = None,
        prompt: str | None = None,
    ) -> "LafrPipeline":
        """`prompt_embeds` replaces the file's own, and so does `prompt` (text), encoded with
        `base`'s SD2.1 text encoder (a diffusers folder or hub id; a single file has none and
        raises TextEncoderUnavailable); a file of another engine without an embedding gets its
        `lafr.prompt` encoded the same way."""
        weights = lafr if isinstance(lafr, LafrWeights) else load_lafr(lafr)
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("give the prompt as text or as embeddings, not both")
        if prompt is None and prompt_embeds is None and weights.prompt_embeds is None and weights.engine != "lafr":
            prompt = weights.prompt
        if prompt is not None:
            from .text_encoder import encode_prompt

            prompt_embeds = encode_prompt(base, prompt)
        unet, vae = load_sd21(base)
        return cls.from_modules(unet, vae, weights, device=device, dtype=dtype, lora_strength=lora_strength,
                                prompt_embeds=prompt_embeds)

    @classmethod
    def from_modules(
        cls,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        weights: LafrWeights,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        lora_strength: float = 1.0,
        prompt_embeds: torch.Tensor | None = None,
    ) -> "LafrPipeline":
        """Apply the file's replacements and merge its LoRA into `unet` and its VAE-encoder LoRA
        into `vae` (both in place), prune the UNet, move everything to device/dtype."""
        from .lora import apply_kohya_replacements, merge_kohya_lora, merge_vae_lora

        embeds = prompt_embeds if prompt_embeds is not None else weights.prompt_embeds
        if embeds is None and weights.engine == "lafr":
            raise ValueError(
                "this LAFR file holds only the stage-1 adapter (no LoRA / prompt embedding): the "
                "UNet step needs a stage-2 ('2' or '1+2') file from `python -m train stage2`"
            )
        if embeds is None:
            raise ValueError(
                f"this {weights.engine_label} file stores no prompt embedding: encode its prompt "
                f"{weights.prompt!r} with SD2.1-base's text encoder (pass the base as a diffusers folder "
                "or hub id, or convert the file again with --base)"
            )
        device, dtype = default_device_dtype(device, dtype)
        if weights.unet_set:
            apply_kohya_replacements(unet, weights.unet_set)
        if weights.kohya_lora and lora_strength:
            merge_kohya_lora(unet, weights.kohya_lora, strength=lora_strength)
        if weights.vae_lora:
            merge_vae_lora(vae, weights.vae_lora)
        pruned = PrunedUNet.from_diffusers(unet, embeds)
        del unet
        gc.collect()
        aligner = weights.aligner.to(device).eval() if weights.aligner is not None else None
        return cls(
            vae=vae.to(device=device, dtype=dtype),
            unet=pruned.to(device=device, dtype=dtype).eval(),
            aligner=aligner,
            latent_scale=weights.latent_scale,
            latent_rule=weights.latent_rule,
            latent_seed=weights.latent_seed,
        )

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @torch.no_grad()
    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """[b, 3, H, W] in -1..1 -> RAW latent [b, 4, H/8, W/8] (unscaled): the posterior mode, or
        with the file's "sample" rule mean + std * noise, the noise drawn on the CPU from a generator
        seeded with latent_seed (torch.manual_seed(seed) then a global draw gives the same numbers,
        as OSEDiff's `latent_dist.sample()` does on its one image per call).

        Every face gets the same draw, the one a batch of one would get: a face's result must not
        depend on its place in a batch or a video window (that would flicker on video and differ
        between a folder run and a scaled-out one)."""
        dist = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        if self.latent_rule != "sample":
            return dist.mode()
        generator = torch.Generator().manual_seed(int(self.latent_seed or 0))
        noise = torch.randn((1, *dist.mean.shape[1:]), generator=generator, dtype=dist.mean.dtype)
        return dist.mean + dist.std * noise.to(dist.mean.device)

    @torch.no_grad()
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """RAW latent -> [b, 3, H, W] in -1..1."""
        return self.vae.decode(raw.to(self.device, self.dtype)).sample

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[b, 3, H, W] in -1..1 -> scaled latent [b, 4, H/8, W/8] (posterior mode)."""
        return self.encode_raw(images) * self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> [b, 3, H, W] in -1..1."""
        return self.decode_raw(latents.to(self.dtype) / self.latent_scale)

    def host_model(self, on_oom: Callable[[int], None] | None = None) -> HostModel:
        """This pipeline's VAE and pruned UNet as a host_chain.HostModel (crops [n, S, S, 3] 0..1
        in and out; RAW latents for the VAE, scaled ones for the UNet, as the chain expects).
        The adapter is not part of it: the chain runs the LAFR file's own. on_oom defaults to
        emptying the CUDA cache on a CUDA device."""

        def encode(crops: torch.Tensor) -> torch.Tensor:
            return self.encode_raw(crops.permute(0, 3, 1, 2) * 2 - 1)

        def denoise(z_t: torch.Tensor) -> torch.Tensor:
            return self.unet(z_t.to(self.device, self.dtype))

        def decode(raw: torch.Tensor) -> torch.Tensor:
            return ((self.decode_raw(raw).float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)

        if on_oom is None and self.device.type == "cuda":
            on_oom = lambda _chunk: torch.cuda.empty_cache()  # noqa: E731
        return HostModel(encode=encode, denoise=denoise, decode=decode, device=self.device, on_oom=on_oom)

    @torch.no_grad()
    def restore_latents(self, z_lq: torch.Tensor) -> torch.Tensor:
        """Scaled LQ latent -> scaled x0 latent: align (if the file has an adapter), one step."""
        z = z_lq
        if self.aligner is not None:
            z = self.aligner(z.float()).to(self.dtype)
        return self.unet(z.to(self.device, self.dtype))

    @torch.no_grad()
    def restore(
        self,
        faces: torch.Tensor,
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Aligned faces [b, H, W, 3] float 0..1 (ComfyUI's IMAGE layout) -> restored, same shape.

        Faces go through in chunks of `batch_size` (one VAE encode, one UNet step, one decode per
        chunk); `progress(n)` is called with the number of faces done after each chunk."""
        if faces.ndim != 4 or faces.shape[-1] != 3:
            raise ValueError(f"restore expects faces [batch, H, W, 3], got {tuple(faces.shape)}")
        if faces.shape[1] % 8 or faces.shape[2] % 8:
            raise ValueError(f"face crops must be multiples of 8 pixels (512 is LAFR's size), got {tuple(faces.shape[1:3])}")
        out = []
        for start in range(0, faces.shape[0], batch_size):
            chunk = faces[start : start + batch_size].permute(0, 3, 1, 2) * 2 - 1
            x0 = self.restore_latents(self.encode(chunk))
            images = (self.decode(x0).float().clamp(-1, 1) + 1) / 2
            out.append(images.permute(0, 2, 3, 1).to(faces.device))
            if progress is not None:
                progress(min(start + batch_size, faces.shape[0]))
        return torch.cat(out)
