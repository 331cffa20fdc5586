"""InterLCM as a host_chain.CropEngine: what the CLI (`lafr restore --engine interlcm`), `lafr
eval` and the webuis restore aligned crops with, inside the same detect -> align -> paste chain
as LAFR's engine.

The colour fix is left out of the engine (`colour_fix="none"`): the chain's paste runs the
user's colour correction against the input crop, whose "file default" is the file's
`lafr.colour_fix` (wavelet, the paper's); fixing inside the engine too would fix twice.
The ComfyUI node builds its own engine on the host's models; this one loads the standalone
InterLCMPipeline (diffusers / transformers, imported only when a pipeline is loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..host_chain import CropEngine
from .weights import DEFAULT_COLOUR_FIX, read_interlcm_metadata

if TYPE_CHECKING:
    from .pipeline import InterLCMPipeline

ENGINE_NAME = "InterLCM"


def interlcm_engine(pipe: "InterLCMPipeline", batch_size: int | None = None) -> CropEngine:
    """crops [n, S, S, 3] 0..1 -> pipe.restore in batches of `batch_size` (None: all at once),
    raw (no colour fix); on CUDA an out-of-memory retry first empties the cache."""
    device = pipe.device

    def restore(crops: torch.Tensor) -> torch.Tensor:
        return pipe.restore(crops, batch_size=batch_size or max(1, crops.shape[0]), colour_fix="none")

    on_oom = (lambda _chunk: torch.cuda.empty_cache()) if device.type == "cuda" else None
    return CropEngine(restore, device, ENGINE_NAME, on_oom=on_oom)


def file_colour_fix(weights: str | Path) -> str:
    """The converted file's own colour fix (`lafr.colour_fix`), from its checked header."""
    return read_interlcm_metadata(weights).get("lafr.colour_fix", DEFAULT_COLOUR_FIX)


def load_interlcm_pipeline(
    lcm: str | Path, clip_vision: str | Path, weights: str | Path, seed: int = 0,
    device: str | torch.device | None = None, dtype: torch.dtype | None = None,
) -> "InterLCMPipeline":
    """InterLCMPipeline.from_pretrained with one-line errors: the file is checked first (its
    header, cheap), and a folder that diffusers / transformers cannot read (or a hub id that is
    neither cached nor reachable) becomes a ValueError naming both sources."""
    from .pipeline import InterLCMPipeline

    read_interlcm_metadata(weights)
    try:
        return InterLCMPipeline.from_pretrained(lcm, clip_vision, weights, seed=seed, device=device, dtype=dtype)
    except OSError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"InterLCM's base models could not be loaded from --lcm '{lcm}' and --clip-vision '{clip_vision}': {detail} "
            "(--lcm: LCM Dreamshaper v7 as a diffusers folder with unet/ and vae/; --clip-vision: a transformers CLIP ViT-B/16 folder)"
        ) from None
