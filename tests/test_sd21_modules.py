"""The diffusers-free SD2.1-base layer table equals diffusers' own models (built on meta)."""

from __future__ import annotations

import torch

from lafr_core.sd21_modules import ModuleShape, sd21_unet_modules, sd21_vae_encoder_modules
from osediff_fixtures import meta_model


def _shapes(model: torch.nn.Module, keep=lambda name: True) -> dict[str, ModuleShape]:
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and keep(name):
            kind = "linear" if isinstance(module, torch.nn.Linear) else "conv"
            bias = tuple(module.bias.shape) if module.bias is not None else None
            out[name] = ModuleShape(kind, tuple(module.weight.shape), bias)
    return out


def test_unet_table_equals_diffusers():
    expected = _shapes(meta_model("unet"))
    got = sd21_unet_modules()
    assert sorted(set(got) ^ set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    assert len(got) == 282  # 258 OSEDiff targets + 2 time-embedding linears + 22 time_emb_proj


def test_vae_encoder_table_equals_diffusers():
    expected = _shapes(meta_model("vae"), lambda name: name.startswith("encoder.") or name == "quant_conv")
    got = sd21_vae_encoder_modules()
    assert sorted(set(got) ^ set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
