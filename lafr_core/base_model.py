"""Which Stable Diffusion a checkpoint or model config is, and refusing anything but SD2.x eps.

LAFR's LoRA, prompt embedding and timestep constants only make sense on the SD2.1-base UNet
(4-channel latent, 1024-d cross-attention, epsilon prediction). Running it on SD1.5, SDXL or a
v-prediction model would not crash: it would quietly produce garbage faces. So every entry
point identifies the base first and refuses with a message that says what it found.
Sentinel keys and shapes follow the way single-file loaders identify checkpoints; no diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

UNET_PREFIX = "model.diffusion_model."
SDXL_SENTINELS = (
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
    "model.diffusion_model.label_emb.0.0.weight",
)
CONTEXT_KEY = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
IN_CHANNELS_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
# SD2.x v-prediction checkpoints (768-v) have a much wider spread of this LayerNorm bias than
# the epsilon ones (512-base): the heuristic single-file loaders use, threshold 0.09.
V_PRED_SENTINEL = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_STD_THRESHOLD = 0.09
FAMILY_BY_CONTEXT = {768: "sd1.x", 1024: "sd2.x", 2048: "sdxl"}


class BaseModelError(ValueError):
    """The base model is not the SD2.x epsilon model LAFR was trained for."""


@dataclass(frozen=True)
class BaseModelInfo:
    family: str  # "sd1.x", "sd2.x", "sdxl" or "unknown"
    prediction: str  # "epsilon", "v_prediction" or "unknown"
    context_dim: int | None
    in_channels: int | None

    def describe(self, omit: frozenset[str] = frozenset()) -> str:
        """The known facts, comma-separated; `omit` leaves out "family", "channels" or
        "prediction" (a refusal that already said them does not repeat them)."""
        parts = []
        if "family" not in omit and self.family != "unknown":
            parts.append(self.family)
        if self.context_dim:
            parts.append(f"cross-attention {self.context_dim}")
        if self.in_channels and "channels" not in omit:
            parts.append(f"{self.in_channels}-channel input")
        if "prediction" not in omit and self.prediction != "unknown":
            parts.append(f"{self.prediction.replace('_prediction', '')} prediction")
        return ", ".join(parts)


def _shape(value) -> Sequence[int]:
    """A tensor, a safetensors slice or a plain shape -> its shape."""
    if hasattr(value, "shape"):
        return tuple(value.shape)
    if hasattr(value, "get_shape"):
        return tuple(value.get_shape())
    return tuple(value)


def identify_ldm_checkpoint(tensors: Mapping[str, object], v_pred_bias_std: float | None = None) -> BaseModelInfo:
    """Identify an original-format (LDM) checkpoint from its keys and shapes.

    `tensors` maps keys to tensors or shapes. `v_pred_bias_std` is the std of V_PRED_SENTINEL
    when the caller has read it (it needs the values, not just the shape)."""
    if any(key in tensors for key in SDXL_SENTINELS):
        context = _shape(tensors[CONTEXT_KEY])[1] if CONTEXT_KEY in tensors else 2048
        return BaseModelInfo("sdxl", "unknown", context, None)
    context = _shape(tensors[CONTEXT_KEY])[1] if CONTEXT_KEY in tensors else None
    in_channels = _shape(tensors[IN_CHANNELS_KEY])[1] if IN_CHANNELS_KEY in tensors else None
    family = FAMILY_BY_CONTEXT.get(context, "unknown")
    prediction = "unknown"
    if family == "sd1.x":
        prediction = "epsilon"
    elif family == "sd2.x" and v_pred_bias_std is not None:
        prediction = "v_prediction" if v_pred_bias_std > V_PRED_STD_THRESHOLD else "epsilon"
    return BaseModelInfo(family, prediction, context, in_channels)


def identify_diffusers_config(unet_config: Mapping, scheduler_config: Mapping | None) -> BaseModelInfo:
    """Identify a diffusers-format model from its unet (and scheduler) config."""
    context = unet_config.get("cross_attention_dim")
    if isinstance(context, (list, tuple)):
        context = context[0]
    family = FAMILY_BY_CONTEXT.get(context, "unknown")
    if unet_config.get("addition_embed_type") == "text_time":
        family = "sdxl"
    prediction = (scheduler_config or {}).get("prediction_type", "unknown")
    return BaseModelInfo(family, prediction, context, unet_config.get("in_channels"))


def require_sd2_epsilon(info: BaseModelInfo, source: str) -> None:
    """Raise BaseModelError naming `source` and what it is, unless it is SD2.x eps 4-channel."""
    problems, said = [], set()
    if info.family != "sd2.x":
        problems.append(f"it is {info.family}" if info.family != "unknown" else "it is no Stable Diffusion model LAFR knows")
        said.add("family")
    if info.in_channels not in (None, 4):
        problems.append(f"its UNet takes {info.in_channels} input channels (an inpainting or depth model?)")
        said.add("channels")
    if info.prediction == "v_prediction":
        problems.append("it predicts v (a 768-v model)")
        said.add("prediction")
    elif info.prediction not in ("epsilon", "unknown"):
        problems.append(f"it uses {info.prediction} sampling")
        said.add("prediction")
    if problems:
        details = info.describe(frozenset(said))
        raise BaseModelError(
            f"{source}: LAFR needs Stable Diffusion 2.1-base (SD2.x, 4-channel, epsilon prediction), "
            f"but {' and '.join(problems)}{f' ({details})' if details else ''}. Load an SD2.1-base checkpoint, "
            f"e.g. v2-1_512-ema-pruned.safetensors or stabilityai/stable-diffusion-2-1-base."
        )
