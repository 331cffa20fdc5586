"""The prompt a run uses: the file's own embedding, or text encoded by the webui's loaded SD2.1.

A LAFR file ships its prompt embedding (the text encoder never loads). A converted OSEDiff file
may ship only its prompt text (`lafr.prompt`, converted without a text encoder), and a user may
want their own words (Settings > LAFR > "LAFR prompt", or the Extras field): both are encoded by
the checkpoint the user has loaded, the way the webui encodes a generation's prompt:
sd_model.get_learned_conditioning([text]) on A1111 (its hijacked OpenCLIP-H, padded with "!" as
SD2.1's tokenizer pads) and on Forge (ForgeDiffusionEngine's own, which loads the CLIP patcher).
That is the same text encoder the converter would have used, so a file's own prompt text gives
the embedding `lafr convert --base` would have stored.

Encoded prompts are cached per (loaded model, text): a face restorer runs once per image, and
one encode is a whole text-encoder pass. Only the loaded model's entries are kept. Host-free:
the webui's autocast context is passed in.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import torch

from lafr_core.lafr_file import LafrWeights
from lafr_core.latent_ops import MissingStageError, with_prompt_embeds

from .model_check import checkpoint_label

WHERE = "LAFR prompt"  # the setting's label, named in messages
_cache: dict[tuple[int, str, str], torch.Tensor] = {}


def prompt_text(weights: LafrWeights, user_prompt: str) -> str | None:
    """The text to encode for this run, or None to use the file's own embedding: the user's
    text when given, else the file's `lafr.prompt` when the file ships no embedding. A stage-1
    LAFR file (no LoRA, no embedding) gets none: its UNet step is missing, not its prompt."""
    text = user_prompt.strip()
    if weights.prompt_embeds is None and weights.engine == "lafr":
        return None
    if text:
        return text
    return weights.prompt if weights.prompt_embeds is None else None


def encode_text(sd_model: Any, text: str, autocast: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """[1, tokens, 1024] float32 on the CPU: `text` through the loaded model's text encoder (cached)."""
    model_key = (id(sd_model), checkpoint_label(sd_model))
    key = (*model_key, text)
    if key not in _cache:
        encode = getattr(sd_model, "get_learned_conditioning", None)
        if encode is None:
            raise MissingStageError(
                f"{WHERE}: the loaded model ({type(sd_model).__name__}) has no text encoder LAFR can call "
                "(get_learned_conditioning); convert the file again with `lafr convert ... --base <SD2.1 folder>` "
                "so it carries its prompt embedding")
        with torch.no_grad(), autocast():
            cond = encode([text])
        if isinstance(cond, dict):  # SDXL-style conditioning; SD2 gives the tensor itself
            cond = cond.get("crossattn")
        for stale in [k for k in _cache if k[:2] != model_key]:
            del _cache[stale]
        _cache[key] = cond[:1].detach().float().cpu().clone()
    return _cache[key]


def with_run_prompt(weights: LafrWeights, sd_model: Any, user_prompt: str,
                    autocast: Callable[[], AbstractContextManager] = nullcontext) -> LafrWeights:
    """The weights with this run's prompt embedding (a shallow copy: the cached file is untouched)."""
    text = prompt_text(weights, user_prompt)
    if text is None:
        return weights
    return with_prompt_embeds(weights, encode_text(sd_model, text, autocast), WHERE)
