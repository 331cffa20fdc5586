"""The LAFR conv LoRA as forward hooks on the host UNet's Conv2d modules, for one with-block.

Why hooks and not merged weights: A1111's built-in Lora extension merges its networks into the
weights in place and keeps a backup of the weights it first saw. Had we added our delta to the
weights, that backup could capture it and every later generation would carry LAFR's LoRA. A forward
hook leaves every parameter untouched: a conv's output becomes conv(x) + scale * up(down(x)),
which is exactly the merged conv (W + scale * up @ down) by linearity, and the hooks are removed
in `__exit__` whether the forward finished or raised.

Layers are found by the kohya name of each Conv2d's LDM module path (ldm_keys), so the hooks fit
any module tree named like the original UNet (A1111's openaimodel.UNetModel, and test stand-ins).
Host-free: torch and lafr_core only.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from lafr_core.ldm_keys import kohya_unet_table
from lafr_core.lora import kohya_lora_layers


def _shown(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class _ConvLora:
    """One layer: down [r, in, k, k] with the conv's stride/padding/dilation, then up [out, r, 1, 1]."""

    def __init__(self, name: str, conv: nn.Conv2d, down: torch.Tensor, up: torch.Tensor, scale: float) -> None:
        out_channels, in_channels = conv.weight.shape[:2]
        kernel = tuple(conv.weight.shape[2:])
        if conv.groups != 1:
            raise ValueError(f"LAFR LoRA layer {name}: grouped convolutions ({conv.groups} groups) are not supported")
        if down.ndim != 4 or down.shape[1] != in_channels or tuple(down.shape[2:]) != kernel:
            raise ValueError(f"LAFR LoRA layer {name}: lora_down {tuple(down.shape)} does not fit the conv weight "
                             f"{tuple(conv.weight.shape)}: this UNet is not the one the LoRA was trained on")
        if up.shape[0] != out_channels:
            raise ValueError(f"LAFR LoRA layer {name}: lora_up {tuple(up.shape)} does not fit the conv weight "
                             f"{tuple(conv.weight.shape)}: this UNet is not the one the LoRA was trained on")
        self.conv = conv
        self.down, self.up = down.detach(), up.detach().reshape(up.shape[0], up.shape[1], 1, 1)
        self.scale = scale
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _weights(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """down/up on the input's device and dtype (cached: --medvram moves the UNet per call)."""
        key = (device, dtype)
        if key not in self._cast:
            self._cast[key] = (self.down.to(device, dtype), self.up.to(device, dtype))
        return self._cast[key]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        down, up = self._weights(x.device, x.dtype)
        if conv.padding_mode != "zeros":  # as nn.Conv2d does: pad explicitly, then convolve unpadded
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            hidden = F.conv2d(x, down, None, conv.stride, 0, conv.dilation)
        else:
            hidden = F.conv2d(x, down, None, conv.stride, conv.padding, conv.dilation)
        return F.conv2d(hidden, up) * self.scale

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.delta(args[0]).to(output.dtype)


class ConvLoraHooks:
    """`with ConvLoraHooks(unet, kohya, strength): unet(...)` runs the UNet with the LoRA added.

    `unet` is the module tree named like the LDM UNet (A1111: sd_model.model.diffusion_model).
    Every LoRA layer must name a Conv2d of it with fitting shapes, checked here before any hook is
    placed: a LoRA for another model is an error, never a partial application."""

    def __init__(self, unet: nn.Module, kohya: Mapping[str, torch.Tensor], strength: float = 1.0) -> None:
        layers = kohya_lora_layers(kohya)
        convs = {name: module for name, module in unet.named_modules() if isinstance(module, nn.Conv2d)}
        table = kohya_unet_table(convs)
        unknown = sorted(name for name in layers if name not in table)
        if unknown:
            raise ValueError(f"the LAFR LoRA does not fit this UNet: {len(unknown)} of {len(layers)} layers name no "
                             f"Conv2d of it ({_shown(unknown)}). Is the loaded checkpoint SD2.1-base?")
        self.layers = [
            _ConvLora(name, convs[table[name]], down, up, scale * strength)
            for name, (down, up, scale) in layers.items()
        ]
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> "ConvLoraHooks":
        if self._handles:
            raise RuntimeError("ConvLoraHooks are already active")
        try:
            for layer in self.layers:
                self._handles.append(layer.conv.register_forward_hook(layer.hook))
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
