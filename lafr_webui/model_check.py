"""What the webui has loaded (A1111 or Forge, SD1/SD2/SDXL, eps or v), read without importing it.

LAFR only fits SD2.1-base (SD2.x, 4-channel, epsilon prediction). The face restorer never swaps the
user's checkpoint: it identifies the loaded one and refuses anything else with a message that says
what was found. Everything here is duck-typed on the attributes both webuis set (HOSTS.md):
  A1111: sd_model.is_sd1 / is_sd2 / is_sdxl / is_sd3, sd_model.parameterization ("eps" / "v"),
         sd_model.model.diffusion_model (LDM names, .in_channels);
  Forge: the same is_* flags on a ForgeDiffusionEngine, sd_model.forge_objects.unet (UnetPatcher)
         whose .model (KModel) has .diffusion_model and .predictor.prediction_type.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lafr_core.base_model import FAMILY_BY_CONTEXT, BaseModelInfo

# an SD2 cross-attention key projection: its input width is the text context width (1024 on SD2.x)
CONTEXT_PROBE = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
_PREDICTIONS = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}


def is_forge(sd_model: Any) -> bool:
    """Forge's engine carries forge_objects; A1111's LatentDiffusion does not."""
    return getattr(sd_model, "forge_objects", None) is not None


def diffusion_model(sd_model: Any) -> nn.Module:
    """The LDM-named UNet module of either webui."""
    if is_forge(sd_model):
        return sd_model.forge_objects.unet.model.diffusion_model
    return sd_model.model.diffusion_model


def _family(sd_model: Any) -> str:
    for flag, family in (("is_sdxl", "sdxl"), ("is_sd3", "sd3"), ("is_sd2", "sd2.x"), ("is_sd1", "sd1.x")):
        if getattr(sd_model, flag, False):
            return family
    return f"unknown ({type(sd_model).__name__})"


def _prediction(sd_model: Any) -> str:
    if is_forge(sd_model):
        raw = getattr(getattr(sd_model.forge_objects.unet.model, "predictor", None), "prediction_type", None)
    else:
        raw = getattr(sd_model, "parameterization", None)
    if raw is None:
        return "unknown"
    return _PREDICTIONS.get(str(raw), str(raw))


def _context_dim(unet: nn.Module) -> int | None:
    try:
        weight = unet.get_submodule(CONTEXT_PROBE).weight
    except (AttributeError, ValueError):  # no such module, or no weight
        return None
    return int(weight.shape[1]) if weight.ndim == 2 else None


def loaded_model_info(sd_model: Any) -> BaseModelInfo:
    """BaseModelInfo of the webui's loaded model (lafr_core.base_model's terms)."""
    if sd_model is None:
        return BaseModelInfo("none loaded", "unknown", None, None)
    family = _family(sd_model)
    try:
        unet = diffusion_model(sd_model)
    except AttributeError:
        return BaseModelInfo(family, _prediction(sd_model), None, None)
    in_channels = getattr(unet, "in_channels", None)
    context = _context_dim(unet)
    if family == "sd2.x" and context not in (None, 1024):  # flagged SD2, but the weights say otherwise:
        family = FAMILY_BY_CONTEXT.get(context, "unknown")  # the text width names the family (described once)
    return BaseModelInfo(family, _prediction(sd_model), context, int(in_channels) if in_channels else None)


def checkpoint_label(sd_model: Any) -> str:
    """A name for messages: the checkpoint file when the webui recorded it."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    for value in (getattr(info, "title", None), getattr(info, "filename", None), getattr(sd_model, "sd_model_checkpoint", None)):
        if value:
            return str(value)
    return type(sd_model).__name__
