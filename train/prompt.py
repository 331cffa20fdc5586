"""The fixed prompt embedding: "face, high quality" through SD2.1's text encoder, computed once.

Why once and stored: with the prompt fixed, its embedding is a constant of the model (DESIGN §2).
The trainer computes it with the real CLIPTextModel + tokenizer, saves it in the run folder and
in every LAFR file, and frees the text encoder (~1.4 GB in fp32) before the UNet is loaded; no
host ever loads CLIP to restore a face.

Sources, in order: an explicit tensor (tests, programmatic use) > --prompt_embeds FILE (a
safetensors with a 'prompt_embeds' tensor: a previous run's file or any LAFR file) > the run's
saved prompt_embeds.safetensors (same prompt) > computed from --text_encoder (a diffusers folder
or hub id with text_encoder/ and tokenizer/; default: the base model when it is a folder or hub
id, else the SD2.1-base hub id).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import torch

from lafr_core.lafr_file import PROMPT_EMBEDS_SHAPE

from .config import DEFAULT_BASE, TrainConfig

PROMPT_FILE = "prompt_embeds.safetensors"


def compute_prompt_embeds(source: str, prompt: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """[1, 77, hidden] float32 CPU: lafr_core.text_encoder's encoding (the one SD2.1 pipelines
    use), with the trainer's own advice when nothing loads. Frees the encoder."""
    from lafr_core.text_encoder import TextEncoderUnavailable, encode_prompt

    try:
        embeds = encode_prompt(source, prompt, device)
    except TextEncoderUnavailable as err:
        raise FileNotFoundError(
            f"{err}. Pass --text_encoder with a diffusers SD2.1 folder (text_encoder/, tokenizer/) or a reachable hub id, "
            "or --prompt_embeds FILE with a precomputed embedding"
        ) from None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return embeds


def read_prompt_embeds(path: str | Path) -> torch.Tensor:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt embedding file {str(path)!r} not found (--prompt_embeds)")
    with safe_open(str(path), "pt") as handle:
        if "prompt_embeds" not in handle.keys():
            raise ValueError(f"{path} has no 'prompt_embeds' tensor")
        return handle.get_tensor("prompt_embeds").float()


def save_prompt_embeds(embeds: torch.Tensor, path: str | Path, prompt: str) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes of one run may race here
    save_file({"prompt_embeds": embeds.detach().float().cpu().contiguous()}, str(tmp), metadata={"prompt": prompt})
    tmp.replace(path)
    return path


def _saved_prompt(path: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return (handle.metadata() or {}).get("prompt")


def default_text_encoder_source(base_model: str) -> str:
    """The base itself when it is a diffusers folder or a hub id; a single file has no tokenizer."""
    path = Path(base_model)
    if path.is_dir() or (not path.exists() and "/" in base_model and not path.suffix):
        return base_model
    return DEFAULT_BASE


def resolve_prompt_embeds(config: TrainConfig, embeds: torch.Tensor | None = None, expected_dim: int | None = None) -> torch.Tensor:
    """The run's prompt embedding (see module doc); saved to <output_dir>/prompt_embeds.safetensors."""
    s2 = config.stage2
    saved = config.output_dir / PROMPT_FILE
    if embeds is None and s2.prompt_embeds:
        embeds = read_prompt_embeds(s2.prompt_embeds)
    if embeds is None and saved.is_file() and _saved_prompt(saved) == s2.prompt:
        embeds = read_prompt_embeds(saved)
    if embeds is None:
        embeds = compute_prompt_embeds(s2.text_encoder or default_text_encoder_source(config.run.base_model), s2.prompt)
    embeds = embeds.detach().float().cpu()
    dim = expected_dim or PROMPT_EMBEDS_SHAPE[2]
    if embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[2] != dim:
        raise ValueError(f"prompt embedding must be [1, tokens, {dim}] for this UNet, got {tuple(embeds.shape)}")
    save_prompt_embeds(embeds, saved, s2.prompt)
    return embeds
