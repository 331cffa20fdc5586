"""diffusers <-> LDM key names for SD2.x-layout UNets, and kohya LoRA names built on them.

Why this exists: the LoRA that LAFR trains lives in a diffusers UNet, but every host (ComfyUI,
A1111, Forge) holds the original Stability/CompVis UNet (``openaimodel.UNetModel``) and reads
LoRAs as kohya keys ``lora_unet_<ldm module, dots as underscores>``. This module is the one place
that knows how the two namings line up. It never imports diffusers or peft: host code, which
has neither, uses it.

LDM names here are those inside ``model.diffusion_model`` WITHOUT that prefix, e.g.
``input_blocks.1.0.in_layers.2.weight``.

Shape (after diffusers/loaders/single_file_utils.py, rebuilt rather than copied):
- a static table of per-layer renames (``_RESNET_RENAMES``, ``_TOP_LEVEL``, ...);
- block-index arithmetic from the layout (levels, layers per block, which levels have
  attention) placing each diffusers block at its ``input_blocks``/``output_blocks`` index;
- converters that build NEW dicts, never touching their input, and name every key they cannot map.

The map is a MODULE-PREFIX map (see :func:`unet_key_map`): a full key is mapped by its longest
mapped prefix, and the rest of the key (parameter name, or any deeper path such as peft's
``lora_A.default.weight``) is kept. Resnets are mapped leaf by leaf (their inner names differ),
attention blocks as a whole (Transformer2DModel and SpatialTransformer share inner names; SD2's
proj_in/proj_out are Linear on both sides, we keep names, not shapes).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

# The SD2.x layout (4 levels, 2 resnets per level, cross-attention on all but the deepest level).
SD2_LAYOUT: dict[str, Any] = dict(
    num_levels=4,
    layers_per_block=2,
    down_attention=(True, True, True, False),
    up_attention=(False, True, True, True),
)

LDM_PREFIX = "model.diffusion_model."
KOHYA_UNET_PREFIX = "lora_unet_"

# diffusers ResnetBlock2D leaf -> LDM ResBlock leaf (index = position in the LDM nn.Sequential).
_RESNET_RENAMES: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

# Modules outside the down/mid/up blocks.
_TOP_LEVEL: dict[str, str] = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

_DOWN_BLOCK_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_BLOCK_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
_MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn",)


# --- small helpers -------------------------------------------------------------------------


def _resnet(mapping: dict[str, str], diffusers_prefix: str, ldm_prefix: str) -> None:
    """Add one resnet's leaves; mapped per leaf because the inner names differ."""
    for diffusers_leaf, ldm_leaf in _RESNET_RENAMES.items():
        mapping[f"{diffusers_prefix}.{diffusers_leaf}"] = f"{ldm_prefix}.{ldm_leaf}"


def _normalise_layout(
    num_levels: int,
    layers_per_block: int,
    down_attention: Sequence[bool],
    up_attention: Sequence[bool],
) -> tuple[int, int, tuple[bool, ...], tuple[bool, ...]]:
    """Validate a layout and make it hashable (for the cache), naming what is wrong."""
    down, up = tuple(bool(a) for a in down_attention), tuple(bool(a) for a in up_attention)
    if num_levels < 1 or layers_per_block < 1:
        raise ValueError(f"num_levels ({num_levels}) and layers_per_block ({layers_per_block}) must be >= 1")
    if len(down) != num_levels or len(up) != num_levels:
        raise ValueError(
            f"down_attention ({len(down)} entries) and up_attention ({len(up)} entries) "
            f"must have num_levels={num_levels} entries"
        )
    return int(num_levels), int(layers_per_block), down, up


def _split_lookup(key: str, table: Mapping[str, str]) -> str | None:
    """Map ``key`` by its longest dotted prefix found in ``table``; None when no prefix maps."""
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        mapped = table.get(".".join(parts[:cut]))
        if mapped is not None:
            rest = parts[cut:]
            return ".".join([mapped, *rest]) if rest else mapped
    return None


def _unmapped_error(direction: str, keys: list[str], hint: str = "") -> ValueError:
    shown = ", ".join(keys[:10]) + (f", ... ({len(keys) - 10} more)" if len(keys) > 10 else "")
    return ValueError(f"{direction}: {len(keys)} key(s) have no mapping for this layout: {shown}{hint}")


# --- the map ---------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _build_map(
    num_levels: int, layers_per_block: int, down: tuple[bool, ...], up: tuple[bool, ...]
) -> dict[str, str]:
    """diffusers module prefix -> LDM module prefix (cached: layouts are few, keys are many)."""
    mapping = dict(_TOP_LEVEL)
    per_level = layers_per_block + 1  # LDM: each level's resnets, then its down/upsampler slot

    for level in range(num_levels):
        for j in range(layers_per_block):
            index = 1 + level * per_level + j  # input_blocks.0 is conv_in
            _resnet(mapping, f"down_blocks.{level}.resnets.{j}", f"input_blocks.{index}.0")
            if down[level]:
                mapping[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{index}.1"
        if level < num_levels - 1:  # the deepest level does not downsample
            index = 1 + level * per_level + layers_per_block
            mapping[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"

    _resnet(mapping, "mid_block.resnets.0", "middle_block.0")
    mapping["mid_block.attentions.0"] = "middle_block.1"
    _resnet(mapping, "mid_block.resnets.1", "middle_block.2")

    for level in range(num_levels):
        for j in range(per_level):  # up blocks have one resnet more (skip concatenation)
            index = level * per_level + j
            _resnet(mapping, f"up_blocks.{level}.resnets.{j}", f"output_blocks.{index}.0")
            if up[level]:
                mapping[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{index}.1"
        if level < num_levels - 1:  # the last (finest) level does not upsample
            index = level * per_level + layers_per_block
            slot = 2 if up[level] else 1  # the upsampler follows the attention when there is one
            mapping[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{index}.{slot}.conv"

    if len(set(mapping.values())) != len(mapping):  # cannot happen for valid layouts; guard anyway
        raise AssertionError("LDM key map is not injective")
    return mapping


@lru_cache(maxsize=16)
def _build_inverse(
    num_levels: int, layers_per_block: int, down: tuple[bool, ...], up: tuple[bool, ...]
) -> dict[str, str]:
    return {ldm: diffusers for diffusers, ldm in _build_map(num_levels, layers_per_block, down, up).items()}


def unet_key_map(
    num_levels: int = 4,
    layers_per_block: int = 2,
    down_attention: Sequence[bool] = (True, True, True, False),
    up_attention: Sequence[bool] = (False, True, True, True),
) -> dict[str, str]:
    """diffusers MODULE-path prefix -> LDM module-path prefix for an SD2.x-layout UNet.

    Keys are module paths, not parameter keys: each resnet leaf (``down_blocks.0.resnets.0.conv1``
    -> ``input_blocks.1.0.in_layers.2``), each attention block as a whole
    (``down_blocks.0.attentions.0`` -> ``input_blocks.1.1``; inner names are the same in both),
    each down/upsampler conv and the top-level modules. A parameter key is mapped by its longest
    mapped prefix (:func:`diffusers_to_ldm`). The map is name-level: it lists ``conv_shortcut``
    for every resnet although a model has it only where the channel count changes.
    A fresh dict is returned, so callers may change it.
    """
    layout = _normalise_layout(num_levels, layers_per_block, down_attention, up_attention)
    return dict(_build_map(*layout))


def layout_from_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Layout kwargs (for the functions here) from a UNet2DConditionModel config dict.

    Refuses layouts whose LDM naming this module does not know (other block types, per-level
    layers_per_block lists that differ), so a wrong mapping can never be produced silently.
    """
    down_types = list(config.get("down_block_types", ()))
    up_types = list(config.get("up_block_types", ()))
    unknown = [t for t in down_types if t not in _DOWN_BLOCK_TYPES] + [
        t for t in up_types if t not in _UP_BLOCK_TYPES
    ]
    mid = config.get("mid_block_type") or _MID_BLOCK_TYPES[0]
    if mid not in _MID_BLOCK_TYPES:
        unknown.append(mid)
    if unknown or not down_types or len(down_types) != len(up_types):
        raise ValueError(
            f"not an SD2.x-layout UNet config: down_block_types={down_types}, "
            f"up_block_types={up_types}, mid_block_type={mid} (unsupported: {unknown})"
        )
    layers = config.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise ValueError(f"layers_per_block differs per level ({list(layers)}); LDM layout needs one value")
        layers = layers[0]
    return dict(
        num_levels=len(down_types),
        layers_per_block=int(layers),
        down_attention=tuple(_DOWN_BLOCK_TYPES[t] for t in down_types),
        up_attention=tuple(_UP_BLOCK_TYPES[t] for t in up_types),
    )


def layout_from_diffusers_names(names: Iterable[str]) -> dict[str, Any]:
    """Layout kwargs inferred from diffusers-style module or parameter names.

    Why: LoRA export/merge must work on any module that mirrors diffusers paths (PrunedUNet,
    peft-wrapped UNets) without a config; the names themselves say how many levels and resnets
    there are and where attention sits.
    """
    levels: set[int] = set()
    resnets: set[int] = set()
    down_attn: set[int] = set()
    up_attn: set[int] = set()
    for name in names:
        parts = name.split(".")
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        if parts[0] == "down_blocks":
            levels.add(int(parts[1]))
            if parts[2] == "resnets" and len(parts) > 3 and parts[1] == "0":
                resnets.add(int(parts[3]))
            if parts[2] == "attentions":
                down_attn.add(int(parts[1]))
        elif parts[0] == "up_blocks" and parts[2] == "attentions":
            up_attn.add(int(parts[1]))
    if not levels or not resnets:
        raise ValueError("cannot infer the UNet layout: no 'down_blocks.<i>.resnets.<j>' names found")
    num_levels = max(levels) + 1
    return dict(
        num_levels=num_levels,
        layers_per_block=max(resnets) + 1,
        down_attention=tuple(level in down_attn for level in range(num_levels)),
        up_attention=tuple(level in up_attn for level in range(num_levels)),
    )


# --- single names ------------------------------------------------------------------------------


def diffusers_module_to_ldm(name: str, **layout: Any) -> str:
    """One diffusers module (or parameter) name -> LDM name, e.g.
    ``down_blocks.0.resnets.0.conv1`` -> ``input_blocks.1.0.in_layers.2``. Unmapped -> ValueError."""
    mapped = _split_lookup(name, _build_map(*_normalise_layout(**{**SD2_LAYOUT, **layout})))
    if mapped is None:
        raise ValueError(f"diffusers name {name!r} has no LDM equivalent in this layout")
    return mapped


def ldm_module_to_diffusers(name: str, **layout: Any) -> str:
    """One LDM module (or parameter) name -> diffusers name; the inverse of
    :func:`diffusers_module_to_ldm`. Unmapped -> ValueError."""
    mapped = _split_lookup(name, _build_inverse(*_normalise_layout(**{**SD2_LAYOUT, **layout})))
    if mapped is None:
        raise ValueError(f"LDM name {name!r} has no diffusers equivalent in this layout")
    return mapped


# --- whole state dicts -------------------------------------------------------------------------


def _convert(state_dict: Mapping[str, Any], table: Mapping[str, str], direction: str, hint: str) -> dict:
    converted: dict[str, Any] = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        new_key = _split_lookup(key, table)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = value
    if unmapped:
        raise _unmapped_error(direction, unmapped, hint if any(k.startswith(LDM_PREFIX) for k in unmapped) else "")
    return converted


def diffusers_to_ldm(state_dict: Mapping[str, Any], **layout: Any) -> dict[str, Any]:
    """A diffusers UNet state dict -> a NEW dict with LDM keys (no ``model.diffusion_model.``
    prefix); the same tensor objects, nothing copied, the input untouched."""
    table = _build_map(*_normalise_layout(**{**SD2_LAYOUT, **layout}))
    return _convert(state_dict, table, "diffusers -> LDM", "")


def ldm_to_diffusers(state_dict: Mapping[str, Any], **layout: Any) -> dict[str, Any]:
    """An LDM UNet state dict (keys without ``model.diffusion_model.``) -> a NEW diffusers dict."""
    table = _build_inverse(*_normalise_layout(**{**SD2_LAYOUT, **layout}))
    hint = f" (strip the {LDM_PREFIX!r} prefix of full-checkpoint keys first)"
    return _convert(state_dict, table, "LDM -> diffusers", hint)


# --- kohya names -------------------------------------------------------------------------------


def kohya_unet_name(ldm_module: str) -> str:
    """``input_blocks.1.0.in_layers.2`` -> ``lora_unet_input_blocks_1_0_in_layers_2`` (the name
    ComfyUI's and A1111's LoRA loaders look for)."""
    return KOHYA_UNET_PREFIX + ldm_module.replace(".", "_")


def kohya_unet_table(ldm_module_names: Iterable[str]) -> dict[str, str]:
    """kohya name -> LDM module name for a set of known modules.

    Why a table: turning underscores back into dots is ambiguous (``in_layers`` vs ``in.layers``),
    so names are resolved only against modules that exist. Two modules that collapse to one
    kohya name would make that name ambiguous: ValueError.
    """
    table: dict[str, str] = {}
    for name in ldm_module_names:
        kohya = kohya_unet_name(name)
        if table.get(kohya, name) != name:
            raise ValueError(f"kohya name {kohya!r} is ambiguous: {table[kohya]!r} and {name!r}")
        table[kohya] = name
    return table


def resolve_kohya_unet_name(kohya_name: str, ldm_module_names: Iterable[str]) -> str:
    """kohya UNet LoRA name -> the LDM module it names, among ``ldm_module_names``.
    Unknown (or not a ``lora_unet_`` name) -> ValueError naming it."""
    if not kohya_name.startswith(KOHYA_UNET_PREFIX):
        raise ValueError(f"{kohya_name!r} is not a kohya UNet LoRA name (expected prefix {KOHYA_UNET_PREFIX!r})")
    resolved = kohya_unet_table(ldm_module_names).get(kohya_name)
    if resolved is None:
        raise ValueError(f"kohya name {kohya_name!r} matches no known UNet module")
    return resolved


# --- the VAE encoder (OSEDiff's VAE LoRA) ------------------------------------------------------

# diffusers ResnetBlock2D leaf -> LDM VAE ResnetBlock leaf (the VAE keeps its own leaf names).
_VAE_RESNET_RENAMES: dict[str, str] = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
# diffusers Attention (Linear) -> LDM AttnBlock (1x1 Conv2d): same weights, 2-D vs 4-D.
_VAE_ATTENTION_RENAMES: dict[str, str] = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
VAE_ENCODER_LEVELS = 4  # SD2.1-base's VAE: block_out_channels (128, 256, 512, 512)
VAE_LAYERS_PER_BLOCK = 2


@lru_cache(maxsize=4)
def _build_vae_encoder_map(num_levels: int, layers_per_block: int) -> dict[str, str]:
    mapping = {
        "encoder.conv_in": "encoder.conv_in",
        "encoder.conv_norm_out": "encoder.norm_out",
        "encoder.conv_out": "encoder.conv_out",
        "quant_conv": "quant_conv",
    }
    for level in range(num_levels):
        for j in range(layers_per_block):
            for leaf, ldm_leaf in _VAE_RESNET_RENAMES.items():
                mapping[f"encoder.down_blocks.{level}.resnets.{j}.{leaf}"] = f"encoder.down.{level}.block.{j}.{ldm_leaf}"
        if level < num_levels - 1:
            mapping[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
    for j in range(2):
        for leaf, ldm_leaf in _VAE_RESNET_RENAMES.items():
            mapping[f"encoder.mid_block.resnets.{j}.{leaf}"] = f"encoder.mid.block_{j + 1}.{ldm_leaf}"
    for leaf, ldm_leaf in _VAE_ATTENTION_RENAMES.items():
        mapping[f"encoder.mid_block.attentions.0.{leaf}"] = f"encoder.mid.attn_1.{ldm_leaf}"
    return mapping


def vae_encoder_key_map(
    num_levels: int = VAE_ENCODER_LEVELS, layers_per_block: int = VAE_LAYERS_PER_BLOCK
) -> dict[str, str]:
    """diffusers MODULE path -> LDM module path for the VAE encoder and ``quant_conv`` (never the
    decoder or ``post_quant_conv``), e.g. ``encoder.down_blocks.1.resnets.0.conv_shortcut`` ->
    ``encoder.down.1.block.0.nin_shortcut``, ``encoder.mid_block.attentions.0.to_q`` ->
    ``encoder.mid.attn_1.q``. LDM names are those inside ``first_stage_model`` (what ComfyUI's
    and A1111's VAE modules are called). The attention projections are Linear in diffusers and
    1x1 Conv2d in LDM: same numbers, two more dimensions. A fresh dict is returned."""
    return dict(_build_vae_encoder_map(int(num_levels), int(layers_per_block)))


def vae_encoder_module_to_ldm(name: str) -> str:
    """One diffusers VAE encoder module name -> its LDM name (exact module names only)."""
    mapped = _build_vae_encoder_map(VAE_ENCODER_LEVELS, VAE_LAYERS_PER_BLOCK).get(name)
    if mapped is None:
        raise ValueError(f"diffusers VAE module {name!r} is not a VAE encoder module of SD2.1-base (or quant_conv)")
    return mapped


def vae_encoder_module_to_diffusers(name: str) -> str:
    """The inverse of :func:`vae_encoder_module_to_ldm`."""
    inverse = {ldm: d for d, ldm in _build_vae_encoder_map(VAE_ENCODER_LEVELS, VAE_LAYERS_PER_BLOCK).items()}
    mapped = inverse.get(name)
    if mapped is None:
        raise ValueError(f"LDM VAE module {name!r} is not a VAE encoder module of SD2.1-base (or quant_conv)")
    return mapped
