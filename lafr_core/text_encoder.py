"""A prompt through SD2.1's own text encoder, once, at conversion or export time.

Why only here: hosts never load CLIP for LAFR (the embedding ships in the file); the converter of
another engine's checkpoint (`lafr convert`) may compute the default prompt's embedding when the
user points it at an SD2.1-base model that has a tokenizer. transformers is imported lazily.

The encoding is the one SD2.1 pipelines and OSEDiff use: the tokenizer padded with
"max_length" to its 77 tokens (SD2.1's tokenizer pads with "!", id 0), truncated, no attention
mask, `text_encoder(ids)[0]` (the last hidden state of the 23-layer encoder, i.e. OpenCLIP's
penultimate layer).
"""

from __future__ import annotations

from pathlib import Path

import torch

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


class TextEncoderUnavailable(ValueError):
    """The source cannot encode a prompt (a single file has no tokenizer; nothing loads)."""


def encode_prompt(source: str | Path, prompt: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """`prompt` -> [1, 77, 1024] float32 on CPU, with the text encoder and tokenizer of `source`:
    a diffusers SD2.1-base folder (text_encoder/, tokenizer/) or a hub id. The encoder is freed."""
    source = str(source)
    path = Path(source)
    if path.is_file() or path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        raise TextEncoderUnavailable(
            f"'{source}' is a single-file checkpoint: it holds no tokenizer, so the prompt cannot be encoded "
            "from it. Pass a diffusers SD2.1-base folder (with text_encoder/ and tokenizer/) or the hub id "
            "'stabilityai/stable-diffusion-2-1-base'"
        )
    if path.is_dir() and not ((path / "text_encoder").is_dir() and (path / "tokenizer").is_dir()):
        raise TextEncoderUnavailable(f"'{source}' has no text_encoder/ and tokenizer/ folders (a diffusers SD2.1-base folder has both)")
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder")
    except (OSError, ValueError) as err:
        raise TextEncoderUnavailable(
            f"cannot load SD2.1's text encoder and tokenizer from '{source}' ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    length = tokenizer.model_max_length
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    text_encoder.to(device).eval()
    with torch.no_grad():
        embeds = text_encoder(ids.to(device))[0].float().cpu()
    del text_encoder
    return embeds
