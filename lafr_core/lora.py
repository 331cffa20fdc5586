"""LAFR's rank-4 conv LoRA: inject (peft), export as kohya/LDM keys, merge or re-load a kohya dict.

Why kohya keys: the LAFR file stores the LoRA as ``lora_unet_<ldm module>.lora_down.weight |
.lora_up.weight | .alpha`` so ComfyUI's and A1111's own LoRA loaders read it too (HOSTS.md); the
trainer works in diffusers + peft. This module converts between the two.

peft (and diffusers) are imported lazily inside the functions that need them: hosts import this
module for :func:`kohya_lora_layers` and :func:`merge_kohya_lora`, which need only torch.
Only Conv2d LoRA (and Linear, for merging kohya files from elsewhere) is handled; LoCon "mid"
tensors, DoRA scales and text-encoder keys are refused with a message, never dropped silently.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from .ldm_keys import (
    KOHYA_UNET_PREFIX,
    diffusers_module_to_ldm,
    kohya_unet_name,
    kohya_unet_table,
    ldm_module_to_diffusers,
    layout_from_diffusers_names,
    unet_key_map,
    vae_encoder_module_to_diffusers,
)

# Last name component of every UNet conv LAFR trains (DESIGN.md 1: 66 Conv2d on SD2.1-base).
LORA_TARGET_MODULES = ("conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out")

_PEFT_MODEL_PREFIX = "base_model.model."  # what get_peft_model's wrapper adds to module names
_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


# --- small helpers -------------------------------------------------------------------------


def _strip_peft_prefix(name: str) -> str:
    return name[len(_PEFT_MODEL_PREFIX) :] if name.startswith(_PEFT_MODEL_PREFIX) else name


def _shown(names: Iterable[str], limit: int = 10) -> str:
    names = sorted(names)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def lora_target_names(model: nn.Module) -> list[str]:
    """Module paths LAFR puts a LoRA on: Conv2d whose last name component is a target.

    Matching is by exact last component AND by class, so a Linear that happens to be called
    ``conv`` or a module called ``conv1_extra`` is never hit, and any module mirroring diffusers
    paths (PrunedUNet) gets the same targets as the UNet it came from.
    """
    return [
        name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in LORA_TARGET_MODULES and isinstance(module, nn.Conv2d)
    ]


def _is_peft_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "lora_alpha")


def _ldm_names_of(model: nn.Module, module_names: list[str]) -> dict[str, str]:
    """diffusers module name (as in ``model``) -> LDM module name, layout inferred from the model."""
    plain = [_strip_peft_prefix(n) for n in module_names]
    layout = layout_from_diffusers_names(_strip_peft_prefix(n) for n, _ in model.named_modules())
    return {name: diffusers_module_to_ldm(p, **layout) for name, p in zip(module_names, plain)}


# --- peft side -------------------------------------------------------------------------------


def add_conv_lora(unet: nn.Module, rank: int = 4, alpha: float = 4.0, adapter_name: str = "default") -> nn.Module:
    """Inject a rank-``rank`` LoRA (scale alpha/rank) on the UNet's target convs and freeze the rest.

    Uses peft's ``inject_adapter_in_model`` with the exact module paths as targets, so the
    model keeps its class and names (no PeftModel wrapper, no ``base_model.model.`` prefix).
    Returns the same (mutated) module; only LoRA parameters require grad afterwards.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_target_names(unet)
    if not targets:
        raise ValueError(f"no Conv2d named one of {LORA_TARGET_MODULES} found in {type(unet).__name__}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,  # lora_B = 0: the fresh LoRA leaves the UNet unchanged
        target_modules=targets,
    )
    inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    for name, param in unet.named_parameters():
        param.requires_grad_(f".lora_A.{adapter_name}." in name or f".lora_B.{adapter_name}." in name)
    return unet


def _peft_layers(unet: nn.Module, adapter_name: str) -> dict[str, nn.Module]:
    layers = {
        name: module
        for name, module in unet.named_modules()
        if _is_peft_lora_layer(module) and adapter_name in module.lora_A
    }
    if not layers:
        raise ValueError(f"the model has no peft LoRA layers for adapter {adapter_name!r}")
    return layers


def lora_state_to_kohya(unet: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """peft LoRA weights of ``unet`` -> kohya LDM dict (contiguous CPU tensors).

    ``lora_down`` = peft lora_A weight [r,in,k,k], ``lora_up`` = lora_B weight [out,r,1,1],
    ``alpha`` = lora_alpha as a float32 scalar (ComfyUI assumes scale 1.0 without it). Refuses
    layers whose scale is not alpha/r (rsLoRA) or that use DoRA: kohya keys cannot express them.
    """
    layers = _peft_layers(unet, adapter_name)
    ldm_names = _ldm_names_of(unet, list(layers))
    kohya: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        rank, alpha = layer.r[adapter_name], float(layer.lora_alpha[adapter_name])
        if getattr(layer, "use_dora", {}).get(adapter_name, False):
            raise ValueError(f"{name}: DoRA layers cannot be exported as kohya LoRA")
        if abs(layer.scaling[adapter_name] - alpha / rank) > 1e-6 * max(1.0, alpha / rank):
            raise ValueError(f"{name}: LoRA scale {layer.scaling[adapter_name]} is not alpha/r (rsLoRA?)")
        base = kohya_unet_name(ldm_names[name])
        kohya[base + _DOWN] = layer.lora_A[adapter_name].weight.detach().to("cpu").contiguous()
        kohya[base + _UP] = layer.lora_B[adapter_name].weight.detach().to("cpu").contiguous()
        kohya[base + _ALPHA] = torch.tensor(alpha, dtype=torch.float32)
    return kohya


# --- kohya side (torch only) -----------------------------------------------------------------


def kohya_lora_layers(kohya: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Group a kohya UNet LoRA dict: name -> (down, up, alpha/rank scale).

    Every layer must have all three of lora_down, lora_up and alpha (ComfyUI would silently use
    scale 1.0 without alpha, and a lone half is a broken file), and ranks must agree.
    Non-UNet keys (``lora_te_*``) and other LoRA flavours are refused by name.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    foreign: list[str] = []
    for key, value in kohya.items():
        suffix = next((s for s in (_DOWN, _UP, _ALPHA) if key.endswith(s)), None)
        if not key.startswith(KOHYA_UNET_PREFIX) or suffix is None:
            foreign.append(key)
            continue
        parts.setdefault(key[: -len(suffix)], {})[suffix] = value
    if foreign:
        raise ValueError(
            f"not kohya UNet LoRA keys (only lora_unet_*.lora_down.weight/.lora_up.weight/.alpha "
            f"are supported): {_shown(foreign)}"
        )
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, found in sorted(parts.items()):
        missing = [s for s in (_DOWN, _UP, _ALPHA) if s not in found]
        if missing:
            raise ValueError(f"kohya LoRA layer {name!r} is missing {', '.join(missing)}")
        down, up = found[_DOWN], found[_UP]
        rank = down.shape[0]
        if up.ndim < 2 or up.shape[1] != rank or any(s != 1 for s in up.shape[2:]):
            raise ValueError(
                f"kohya LoRA layer {name!r}: lora_up {tuple(up.shape)} does not fit lora_down {tuple(down.shape)}"
            )
        layers[name] = (down, up, float(found[_ALPHA]) / rank)
    return layers


def kohya_rank_alpha(kohya: Mapping[str, torch.Tensor]) -> tuple[int, float]:
    """The single (rank, alpha) of a kohya LoRA, as add_conv_lora needs to re-create it;
    ValueError when layers disagree (one peft config cannot hold them)."""
    layers = kohya_lora_layers(kohya)
    pairs = {(int(down.shape[0]), float(kohya[name + _ALPHA])) for name, (down, _, _) in layers.items()}
    if len(pairs) != 1:
        raise ValueError(f"kohya LoRA layers use different (rank, alpha) pairs: {sorted(pairs)}")
    return pairs.pop()


def _delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """up @ down in float32: [out,r(,1,1)] x [r,in(,k,k)] -> [out,in(,k,k)]."""
    delta = up.flatten(1).float() @ down.flatten(1).float()
    return delta.reshape(up.shape[0], *down.shape[1:])


def merge_kohya_lora(unet: nn.Module, kohya: Mapping[str, torch.Tensor], strength: float = 1.0) -> int:
    """Merge a kohya UNet LoRA into a plain diffusers-named UNet, in place; returns layers merged.

    W += strength * (alpha/rank) * (up @ down), computed in float32 and cast back to W's
    dtype/device. Names resolve against the model's own Conv2d/Linear modules, so unknown
    names (a LoRA for another model) raise ValueError listing them instead of being skipped.
    """
    layers = kohya_lora_layers(kohya)
    if any(_is_peft_lora_layer(m) for m in unet.modules()):
        raise ValueError("merge_kohya_lora expects a plain UNet; this one has peft LoRA layers")
    targets = {name: module.weight for name, module in _kohya_modules(unet, layers, "kohya LoRA").items()}
    misfits = [
        f"{name} {(up.shape[0], *down.shape[1:])} vs weight {tuple(targets[name].shape)}"
        for name, (down, up, _) in layers.items()
        if (up.shape[0], *down.shape[1:]) != tuple(targets[name].shape)
    ]
    if misfits:  # checked before touching any weight: a failed merge leaves the UNet as it was
        raise ValueError(f"kohya LoRA deltas do not fit this UNet's weights: {'; '.join(misfits[:10])}")

    with torch.no_grad():
        for name, (down, up, scale) in layers.items():
            weight = targets[name]
            merged = weight.float() + (strength * scale) * _delta(down, up).to(weight.device)
            weight.copy_(merged.to(weight.dtype))
    return len(layers)


def _kohya_modules(unet: nn.Module, kohya_names: Iterable[str], what: str) -> dict[str, nn.Module]:
    """kohya name -> the UNet's own Conv2d/Linear it names; ValueError listing names that match none."""
    modules = {n: m for n, m in unet.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    ldm_names: dict[str, str] = {}
    layout = layout_from_diffusers_names(modules)
    for name in modules:
        try:
            ldm_names[diffusers_module_to_ldm(name, **layout)] = name
        except ValueError:
            continue  # a module without an LDM name cannot be a kohya target
    table = kohya_unet_table(ldm_names)
    names = list(kohya_names)
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"{what} names match no Conv2d/Linear of this UNet: {_shown(unknown)}")
    return {name: modules[ldm_names[table[name]]] for name in names}


def apply_kohya_replacements(unet: nn.Module, replacements: Mapping[str, torch.Tensor]) -> int:
    """Full-weight replacements (`lora_unet_<m>.set_weight | .set_bias`, LAFR format 2) into a plain
    diffusers-named UNet, in place; returns the modules replaced. Every shape is checked before
    any weight changes; values are cast to the module's dtype and device."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in replacements.items():
        base, dot, suffix = key.rpartition(".")
        if not dot or suffix not in ("set_weight", "set_bias"):
            raise ValueError(f"{key!r} is not a replacement key (lora_unet_<module>.set_weight or .set_bias)")
        parts.setdefault(base, {})[suffix] = value
    modules = _kohya_modules(unet, parts, "replacement")
    misfits = []
    for name, found in parts.items():
        module = modules[name]
        for suffix, param in (("set_weight", module.weight), ("set_bias", module.bias)):
            if suffix in found and (param is None or tuple(found[suffix].shape) != tuple(param.shape)):
                misfits.append(f"{name}.{suffix} {tuple(found[suffix].shape)} vs {None if param is None else tuple(param.shape)}")
    if misfits:
        raise ValueError(f"replacements do not fit this UNet: {'; '.join(misfits[:10])}")
    with torch.no_grad():
        for name, found in parts.items():
            module = modules[name]
            module.weight.copy_(found["set_weight"].to(module.weight))
            if "set_bias" in found:
                module.bias.copy_(found["set_bias"].to(module.bias))
    return len(parts)


def merge_vae_lora(vae: nn.Module, vae_lora: Mapping[str, torch.Tensor], strength: float = 1.0) -> int:
    """Merge a LAFR file's VAE-encoder LoRA (`lora_vae.<LDM module>.lora_down.weight | .lora_up.weight
    | .alpha`) into a diffusers AutoencoderKL, in place; returns the layers merged.

    W += strength * (alpha/rank) * (up @ down) in float32, reshaped to W (the LDM 1x1-conv shape of
    the attention projections becomes diffusers' Linear). All shapes are checked first."""
    from .lafr_file import VAE_LORA_PREFIX as prefix

    renamed = {}
    for key, value in vae_lora.items():
        if not key.startswith(prefix):
            raise ValueError(f"{key!r} is not a VAE LoRA key (lora_vae.<module>...)")
        renamed[KOHYA_UNET_PREFIX + key[len(prefix):]] = value  # reuse the kohya grouping and checks
    layers = kohya_lora_layers(renamed)
    modules = dict(vae.named_modules())
    targets: dict[str, torch.Tensor] = {}
    misfits = []
    for name, (down, up, _) in layers.items():
        diffusers_name = vae_encoder_module_to_diffusers(name[len(KOHYA_UNET_PREFIX):])
        module = modules.get(diffusers_name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"VAE LoRA layer {prefix}{name[len(KOHYA_UNET_PREFIX):]} names no Conv2d/Linear of this VAE")
        targets[name] = module.weight
        if _delta(down, up).numel() != module.weight.numel() or up.shape[0] != module.weight.shape[0]:
            misfits.append(f"{diffusers_name} {(up.shape[0], *down.shape[1:])} vs weight {tuple(module.weight.shape)}")
    if misfits:
        raise ValueError(f"VAE LoRA deltas do not fit this VAE's weights: {'; '.join(misfits[:10])}")
    with torch.no_grad():
        for name, (down, up, scale) in layers.items():
            weight = targets[name]
            delta = _delta(down, up).reshape(weight.shape).to(weight.device)
            weight.copy_((weight.float() + (strength * scale) * delta).to(weight.dtype))
    return len(layers)


def kohya_to_peft_state(
    kohya: Mapping[str, torch.Tensor], adapter_name: str | None = "default", **layout
) -> dict[str, torch.Tensor]:
    """kohya dict -> peft LoRA state with diffusers module names, to load a LoRA un-merged.

    With an ``adapter_name`` the keys are the model's own (``<module>.lora_A.<adapter>.weight``):
    ``unet.load_state_dict(state, strict=False)`` on a model prepared by :func:`add_conv_lora`.
    With ``adapter_name=None`` they are peft's saved form (``<module>.lora_A.weight``), for
    ``peft.set_peft_model_state_dict(unet, state, adapter_name)``. Prepare the model with
    :func:`kohya_rank_alpha`'s rank and alpha: the scale lives in peft's config, not in the state.
    ``layout`` as in ldm_keys (default SD2.x); names resolve against that layout's modules.
    """
    layers = kohya_lora_layers(kohya)
    table = kohya_unet_table(unet_key_map(**layout).values())
    unknown = [name for name in layers if name not in table]
    if unknown:
        raise ValueError(f"kohya LoRA names match no UNet module of this layout: {_shown(unknown)}")
    infix = f".{adapter_name}" if adapter_name else ""
    state: dict[str, torch.Tensor] = {}
    for name, (down, up, _) in layers.items():
        module = ldm_module_to_diffusers(table[name], **layout)
        state[f"{module}.lora_A{infix}.weight"] = down
        state[f"{module}.lora_B{infix}.weight"] = up
    return state
