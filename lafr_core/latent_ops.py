"""Latent-space steps shared by every host: raw VAE latent <-> LAFR's scaled latent.

Hosts hand around the RAW VAE latent (ComfyUI's LATENT; A1111 scales inside its model); LAFR's
adapter and UNet step work on the scaled latent (x 0.18215). The scale comes from the LAFR
file's `lafr.latent_scale`, so the conversion is the file's own, whatever the host does.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from .lafr_file import LafrWeights


class MissingStageError(ValueError):
    """The LAFR file lacks the stage a node needs (adapter or LoRA + prompt)."""


def require_adapter(weights: LafrWeights, node: str = "LAFR Latent Align") -> None:
    if weights.aligner is None:
        raise MissingStageError(
            f"{node}: this LAFR file (stages {weights.stages}) has no stage-1 alignment adapter. "
            f"Use a '1' or '1+2' file, or wire the VAE latent straight into LAFR Pruned UNet Step."
        )


def require_unet_step(weights: LafrWeights, node: str = "LAFR Pruned UNet Step") -> None:
    if weights.prompt_embeds is None and weights.has_lora:
        raise MissingStageError(
            f"{node}: this {weights.engine_label} file stores its prompt as text only ({weights.prompt!r}), "
            f"without the embedding the UNet step needs. Encode that text with the SD2.1 text encoder you "
            f"already have (in ComfyUI: CLIP Text Encode of your SD2.1 checkpoint into the node's "
            f"'conditioning' input), or convert the file again with `lafr convert ... --base <SD2.1 folder>`."
        )
    if weights.prompt_embeds is None:
        raise MissingStageError(
            f"{node}: this LAFR file (stages {weights.stages}) holds only the stage-1 adapter; the UNet "
            f"step needs a stage-2 file ('2' or '1+2') with the LoRA and the prompt embedding."
        )


def with_prompt_embeds(weights: LafrWeights, embeds: torch.Tensor, node: str) -> LafrWeights:
    """The same weights with another prompt embedding (a user's own text, encoded by the host's
    SD2.1 text encoder): a shallow copy, so the cached file object is never changed."""
    if embeds.ndim != 3 or embeds.shape[-1] != 1024:
        raise ValueError(
            f"{node}: the conditioning is {tuple(embeds.shape)}, not SD2.x text embeddings [1, tokens, 1024]; "
            f"encode the prompt with the CLIP of your SD2.1-base checkpoint"
        )
    return dataclasses.replace(weights, prompt_embeds=embeds[:1].detach().float().cpu())


def aligner_on(weights: LafrWeights, device: torch.device | str) -> torch.nn.Module:
    """The file's adapter on `device`, for one call: a copy when it lives elsewhere.

    Why a copy: `weights` is shared (the ComfyUI loader caches it, a webui keeps it between
    images), so moving it in place would leave 5M parameters on the GPU after the node ends,
    outside the host's memory management. 20 MB copied per call is nothing beside a VAE pass."""
    require_adapter(weights)
    aligner = weights.aligner
    target = torch.device(device)
    here = next(aligner.parameters()).device
    if here.type == target.type and (target.index is None or here.index == target.index):
        return aligner.eval()
    return copy.deepcopy(aligner).to(target).eval()


@torch.no_grad()
def align_raw_latent(weights: LafrWeights, raw: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Raw VAE latent [b, 4, h, w] -> aligned raw latent, computed on `device` in float32
    (the adapter is 5M parameters: precision costs nothing), returned on raw's device."""
    aligner = aligner_on(weights, device)
    scale = weights.latent_scale
    aligned = aligner(raw.to(device=device, dtype=torch.float32) * scale) / scale
    return aligned.to(raw.device)
