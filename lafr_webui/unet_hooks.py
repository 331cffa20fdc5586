"""A LAFR file's weights as forward hooks on the host's own modules, for one with-block.

What a file can hold (lafr_file, format 2 included) and how each becomes a hook:
  * a LoRA on a Conv2d or Linear (`lora_unet_<ldm module>` in the UNet, `lora_vae.<ldm module>` on
    the VAE encoder and quant_conv): the output becomes layer(x) + scale * up(down(x)), with
    scale = alpha / rank of that layer times the strength. By linearity that is exactly the layer
    with merged weights W + scale * up @ down;
  * a full-weight replacement (`lora_unet_<m>.set_weight | .set_bias`, OSEDiff's retrained
    conv_in): the output is recomputed with the file's weight and bias instead of the module's.
    Replacements are part of the model, not of the LoRA: the strength never scales them.

Why hooks and not merged weights: A1111's built-in Lora extension merges its networks into the
weights in place and keeps a backup of the weights it first saw. Had we written our delta or our
replacement into the weights, that backup could capture it and every later generation would carry
it. A forward hook leaves every parameter untouched, and the hooks are removed in `__exit__`
whether the forward finished or raised.

Every layer of the file must name a module of the right kind with fitting shapes, checked before
any hook is placed: weights for another model are an error, never a partial application. UNet
layers are found by the kohya name of each module's LDM path (ldm_keys), so the hooks fit any
module tree named like the original UNet (A1111's openaimodel.UNetModel, test stand-ins); VAE
layers by their LDM module path inside first_stage_model. Host-free: torch and lafr_core only.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from lafr_core.lafr_file import VAE_LORA_PREFIX
from lafr_core.ldm_keys import KOHYA_UNET_PREFIX, kohya_unet_name
from lafr_core.lora import kohya_lora_layers

_SET_SUFFIXES = ("set_weight", "set_bias")


def _shown(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _misfit(what: str, name: str, tensor: torch.Tensor, module: nn.Module) -> ValueError:
    return ValueError(f"LAFR {what} {name}: {tuple(tensor.shape)} does not fit the {type(module).__name__} weight "
                      f"{tuple(module.weight.shape)}: this model is not the one the file was made for")


def _conv(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv's own convolution (stride, padding, padding mode, dilation) with other weights."""
    if conv.padding_mode != "zeros":  # as nn.Conv2d does: pad explicitly, then convolve unpadded
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)


class _LayerHook:
    """One module and tensors it runs with, cast on first use to the input's device and dtype
    (cached: --medvram moves the UNet per call, fp16/bf16 hosts run in half precision)."""

    def __init__(self, module: nn.Module, tensors: tuple[torch.Tensor | None, ...]) -> None:
        self.module = module
        self.tensors = tuple(t.detach() if t is not None else None for t in tensors)
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor | None, ...]] = {}

    def cast(self, like: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = tuple(t.to(like.device, like.dtype) if t is not None else None for t in self.tensors)
        return self._cast[key]

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _Lora(_LayerHook):
    """down then up, the layer's own way: a conv with the conv's geometry then a 1x1 conv, or two
    linear maps. LDM stores 1x1-conv LoRA factors as [r, in, 1, 1]; a Linear takes them flat."""

    def __init__(self, name: str, module: nn.Module, down: torch.Tensor, up: torch.Tensor, scale: float) -> None:
        weight = module.weight
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ValueError(f"LAFR LoRA layer {name}: grouped convolutions ({module.groups} groups) are not supported")
            kernel = tuple(weight.shape[2:])
            if down.ndim == 2 and kernel == (1, 1):
                down = down[:, :, None, None]
            fits = down.ndim == 4 and down.shape[1] == weight.shape[1] and tuple(down.shape[2:]) == kernel
            up = up.reshape(up.shape[0], up.shape[1], 1, 1)
        else:
            fits = (down.ndim == 2 or tuple(down.shape[2:]) == (1, 1)) and down.flatten(1).shape[1] == weight.shape[1]
            down, up = down.flatten(1), up.flatten(1)
        if not fits:
            raise _misfit("LoRA layer", name, down, module)
        if up.shape[0] != weight.shape[0]:
            raise _misfit("LoRA layer", name, up, module)
        super().__init__(module, (down, up))
        self.scale = scale

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down, up = self.cast(x)
        if isinstance(self.module, nn.Conv2d):
            return F.conv2d(_conv(x, self.module, down, None), up) * self.scale
        return F.linear(F.linear(x, down), up) * self.scale

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.delta(args[0]).to(output.dtype)


class _Replacement(_LayerHook):
    """The module's output computed with the file's weight (and bias, else the module's own)."""

    def __init__(self, name: str, module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise _misfit("replacement", f"{name}.set_weight", weight, module)
        if bias is not None and (module.bias is None or tuple(bias.shape) != tuple(module.bias.shape)):
            raise ValueError(f"LAFR replacement {name}.set_bias: {tuple(bias.shape)} does not fit the module's bias "
                             f"{None if module.bias is None else tuple(module.bias.shape)}")
        super().__init__(module, (weight, bias))

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        weight, bias = self.cast(x)
        if bias is None and module.bias is not None:
            bias = module.bias.to(x.device, x.dtype)
        if isinstance(module, nn.Conv2d):
            return _conv(x, module, weight, bias).to(output.dtype)
        return F.linear(x, weight, bias).to(output.dtype)


class WeightHooks:
    """`with hooks: model(...)` runs the host's modules with the file's weights; nothing outside
    the with-block sees them. Build with `unet_hooks` or `vae_encoder_hooks`; an empty one (a file
    without that section) is a no-op."""

    def __init__(self, layers: list[_LayerHook]) -> None:
        self.layers = layers
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> "WeightHooks":
        if self._handles:
            raise RuntimeError("LAFR weight hooks are already active")
        try:
            for layer in self.layers:
                self._handles.append(layer.module.register_forward_hook(layer.hook))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        """Take every hook off (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __len__(self) -> int:
        return len(self.layers)


def _layer_modules(root: nn.Module, names: list[str], name_of, what: str) -> dict[str, nn.Module]:
    """{file layer name: the Conv2d/Linear of `root` it names}; ValueError listing names that name
    none (or more than one). `name_of(module path)` is the file's name for a module path."""
    found: dict[str, list[nn.Module]] = {}
    for path, module in root.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            found.setdefault(name_of(path), []).append(module)
    unknown = sorted(name for name in names if len(found.get(name, ())) != 1)
    if unknown:
        raise ValueError(f"the {what} does not fit this model: {len(unknown)} of {len(names)} layers name no Conv2d or "
                         f"Linear of it ({_shown(unknown)}). Is the loaded checkpoint SD2.1-base?")
    return {name: found[name][0] for name in names}


def _replacements(unet_set: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in unet_set.items():
        base, _, suffix = key.rpartition(".")
        if suffix not in _SET_SUFFIXES or not base.startswith(KOHYA_UNET_PREFIX):
            raise ValueError(f"{key!r} is not a replacement key (lora_unet_<module>.set_weight or .set_bias)")
        parts.setdefault(base, {})[suffix] = value
    headless = sorted(name for name, found in parts.items() if "set_weight" not in found)
    if headless:
        raise ValueError(f"replacements {_shown(headless)} have .set_bias but no .set_weight")
    return parts


def unet_hooks(
    unet: nn.Module,
    kohya_lora: Mapping[str, torch.Tensor] | None,
    unet_set: Mapping[str, torch.Tensor] | None = None,
    strength: float = 1.0,
) -> WeightHooks:
    """Hooks for a file's UNet LoRA (scaled by `strength`) and replacements on `unet`, the module
    tree named like the LDM UNet (A1111: sd_model.model.diffusion_model). Replacements are
    placed first, so a LoRA on a replaced module would add to the replaced output."""
    lora = kohya_lora_layers(kohya_lora or {})
    replaced = _replacements(unet_set or {})
    modules = _layer_modules(unet, sorted({*lora, *replaced}), kohya_unet_name, "LAFR file's UNet section")
    layers: list[_LayerHook] = [
        _Replacement(name, modules[name], found["set_weight"], found.get("set_bias")) for name, found in replaced.items()
    ]
    layers += [_Lora(name, modules[name], down, up, scale * strength) for name, (down, up, scale) in lora.items()]
    return WeightHooks(layers)


def vae_encoder_hooks(vae: nn.Module, vae_lora: Mapping[str, torch.Tensor] | None, strength: float = 1.0) -> WeightHooks:
    """Hooks for a file's VAE-encoder LoRA (`lora_vae.<module>`) on `vae`, the LDM AutoencoderKL
    (A1111: sd_model.first_stage_model; module paths such as encoder.down.0.block.0.conv1,
    quant_conv). Only the encoder side is named, so decoding is never affected."""
    # the kohya grouping and checks, with the VAE prefix swapped for the UNet's one and back
    renamed = {}
    for key, value in (vae_lora or {}).items():
        if not key.startswith(VAE_LORA_PREFIX):
            raise ValueError(f"{key!r} is not a VAE LoRA key ({VAE_LORA_PREFIX}<module>...)")
        renamed[KOHYA_UNET_PREFIX + key[len(VAE_LORA_PREFIX):]] = value
    layers = {VAE_LORA_PREFIX + name[len(KOHYA_UNET_PREFIX):]: parts for name, parts in kohya_lora_layers(renamed).items()}
    modules = _layer_modules(vae, sorted(layers), lambda path: VAE_LORA_PREFIX + path, "LAFR file's VAE-encoder LoRA")
    return WeightHooks([_Lora(name, modules[name], down, up, scale * strength) for name, (down, up, scale) in layers.items()])
