"""The converted InterLCM file: one .safetensors with both trained modules and what they need.

Tensors: `visual_encoder.<name>` (lafr_core.interlcm.visual_encoder's state dict, the published
names) and `spatial_encoder.<name>` (a diffusers ControlNetModel state dict built from SD1.5's
UNet, lafr_core/configs/lcm_dreamshaper_v7/controlnet_config.json).
Metadata (strings): `lafr.engine` "interlcm", `lafr.steps` ("1" or "3": the weights are trained
for one schedule), `lafr.base` "lcm-dreamshaper-v7", `lafr.clip_vision` "clip-vit-b-16",
`lafr.guidance_scale`, `lafr.latent_scale`, `lafr.colour_fix` ("wavelet", the paper's),
`lafr.weights` (which state dict of the .pth was taken), `lafr.source`, `lafr.licence`.

The loader checks the header before any tensor is read (lafr_file's container checks: pickles,
images, truncation) and then the content: engine, steps, every visual-encoder shape (our module
on the meta device, no diffusers) and the spatial encoder's sentinel layers (diffusers is not
needed to load; the converter checks every ControlNet shape with it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..lafr_file import LafrFileError, TensorSpec, _read_header, _write_atomic
from .lcm import GUIDANCE_SCALE, INTERLCM_STEPS
from .visual_encoder import VisualEncoder

ENGINE = "interlcm"
BASE = "lcm-dreamshaper-v7"
CLIP_VISION = "clip-vit-b-16"
LATENT_SCALE = 0.18215
DEFAULT_COLOUR_FIX = "wavelet"  # inference_InterLCM.py --colorfix_type default ("used in paper")
VISUAL_PREFIX = "visual_encoder."
SPATIAL_PREFIX = "spatial_encoder."
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "lcm_dreamshaper_v7"
# ControlNet layers whose shapes identify "a ControlNet of an SD1.5 UNet" without diffusers
SPATIAL_SENTINELS = {
    "conv_in.weight": (320, 4, 3, 3),
    "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
    "controlnet_cond_embedding.conv_out.weight": (320, 256, 3, 3),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "controlnet_mid_block.weight": (1280, 1280, 1, 1),
    **{f"controlnet_down_blocks.{i}.weight": (c, c, 1, 1) for i, c in enumerate([320] * 4 + [640] * 3 + [1280] * 5)},
}


class InterLCMFileError(LafrFileError):
    """A converted InterLCM file cannot be used; the message names the file and the problem."""


def config(name: str) -> dict:
    """A bundled LCM Dreamshaper v7 config: "unet", "vae", "scheduler", "controlnet", "clip_vision"."""
    data = json.loads((CONFIG_DIR / f"{name}_config.json").read_text())
    data.pop("_class_name", None)
    return data


@lru_cache(maxsize=1)
def visual_encoder_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = VisualEncoder()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@dataclass
class InterLCMWeights:
    visual_encoder: dict[str, torch.Tensor]
    spatial_encoder: dict[str, torch.Tensor]
    meta: dict[str, str]

    @property
    def steps(self) -> int:
        return int(self.meta["lafr.steps"])

    @property
    def guidance_scale(self) -> float:
        return float(self.meta.get("lafr.guidance_scale", GUIDANCE_SCALE))

    @property
    def colour_fix(self) -> str:
        return self.meta.get("lafr.colour_fix", DEFAULT_COLOUR_FIX)

    def build_visual_encoder(self) -> VisualEncoder:
        module = VisualEncoder()
        module.load_state_dict(self.visual_encoder, strict=True)
        return module.eval()


def base_metadata(steps: int, source: str, licence: str, taken: str) -> dict[str, str]:
    return {
        "lafr.engine": ENGINE,
        "lafr.steps": str(steps),
        "lafr.base": BASE,
        "lafr.clip_vision": CLIP_VISION,
        "lafr.guidance_scale": str(GUIDANCE_SCALE),
        "lafr.latent_scale": str(LATENT_SCALE),
        "lafr.colour_fix": DEFAULT_COLOUR_FIX,
        "lafr.weights": taken,
        "lafr.source": source,
        "lafr.licence": licence,
    }


def check_content(specs: dict[str, tuple[int, ...]], meta: dict[str, str]) -> str | None:
    """The first problem with a file's shapes and metadata, or None."""
    if meta.get("lafr.engine") != ENGINE:
        return f"lafr.engine is {meta.get('lafr.engine')!r}, not {ENGINE!r}: not a converted InterLCM file"
    if meta.get("lafr.steps") not in {str(s) for s in INTERLCM_STEPS}:
        return f"lafr.steps is {meta.get('lafr.steps')!r}; InterLCM weights are for 1 or 3 steps"
    unknown = sorted(k for k in specs if not k.startswith((VISUAL_PREFIX, SPATIAL_PREFIX)))
    if unknown:
        return f"unexpected tensor {unknown[0]!r} (an InterLCM file holds visual_encoder.* and spatial_encoder.*)"
    visual = {k[len(VISUAL_PREFIX):]: s for k, s in specs.items() if k.startswith(VISUAL_PREFIX)}
    problem = compare_shapes("the visual encoder", visual, visual_encoder_shapes())
    if problem:
        return problem
    spatial = {k[len(SPATIAL_PREFIX):]: s for k, s in specs.items() if k.startswith(SPATIAL_PREFIX)}
    for key, shape in SPATIAL_SENTINELS.items():
        if key not in spatial:
            return f"the spatial encoder lacks {key!r}: it is not a ControlNet of an SD1.5 UNet"
        if tuple(spatial[key]) != shape:
            return f"the spatial encoder's {key!r} has shape {list(spatial[key])}, an SD1.5 ControlNet's is {list(shape)}"
    return None


def compare_shapes(what: str, got: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str | None:
    missing = [k for k in expected if k not in got]
    if missing:
        return f"{what} lacks {len(missing)} tensor(s), e.g. {missing[0]!r}"
    extra = sorted(k for k in got if k not in expected)
    if extra:
        return f"{what} has {len(extra)} tensor(s) it should not, e.g. {extra[0]!r}"
    for key, shape in expected.items():
        if tuple(got[key]) != tuple(shape):
            return f"{what}'s {key!r} has shape {list(got[key])}, expected {list(shape)}"
    return None


def save_interlcm(path: str | os.PathLike, visual: dict[str, torch.Tensor], spatial: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Check, then write atomically (a temp file renamed over `path`): nothing is left on failure."""
    from safetensors.torch import save as safetensors_save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"the output '{path}' must end in .safetensors (hosts list only those)")
    tensors = {VISUAL_PREFIX + k: v.contiguous() for k, v in visual.items()}
    tensors.update({SPATIAL_PREFIX + k: v.contiguous() for k, v in spatial.items()})
    problem = check_content({k: tuple(v.shape) for k, v in tensors.items()}, meta)
    if problem:
        raise ValueError(f"refusing to write '{path}': {problem}")
    _write_atomic(path, safetensors_save(tensors, metadata=meta))
    return path


def read_interlcm_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Header-only check (cheap): the metadata of a valid converted InterLCM file."""
    path = Path(path)
    specs, meta, _ = _read_header(path)
    _raise_on(path, check_content(_shapes(specs), meta))
    return meta


def load_interlcm(path: str | os.PathLike) -> InterLCMWeights:
    """The converted file's two state dicts and metadata; InterLCMFileError names any problem."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_interlcm_metadata(path)
    tensors = load_file(str(path))
    visual = {k[len(VISUAL_PREFIX):]: v for k, v in tensors.items() if k.startswith(VISUAL_PREFIX)}
    spatial = {k[len(SPATIAL_PREFIX):]: v for k, v in tensors.items() if k.startswith(SPATIAL_PREFIX)}
    return InterLCMWeights(visual, spatial, meta)


def _shapes(specs: dict[str, TensorSpec]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(s.shape) for k, s in specs.items()}


def _raise_on(path: Path, problem: str | None) -> None:
    if problem:
        raise InterLCMFileError(f"'{path}': {problem}. Convert the official .pth files again with `lafr convert`.", path)
