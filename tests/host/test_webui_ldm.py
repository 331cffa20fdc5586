"""The A1111 UNet path on the REAL LDM code A1111 runs (Stability-AI/stablediffusion, which A1111
clones into repositories/stable-diffusion-stability-ai): openaimodel.UNetModel in the SD2 layout
at toy widths, the LDM VAE Encoder/Decoder with its DiagonalGaussianDistribution.

Checks that every kohya name of a LAFR LoRA exported from diffusers resolves to a Conv2d of the
genuine LDM module tree (input_blocks.*.in_layers.2, skip_connection, the downsamplers' `op`,
out.2, ...), that the hooked LDM UNet equals the merged-LoRA diffusers UNet, and that A1111Model's
encode/denoise/decode run on these modules. Skipped unless LDM_DIR (the folder holding `ldm/`)
or WEBUI_DIR (an A1111 install with repositories/) is set:

    LDM_DIR=/path/to/stable-diffusion-stability-ai python -m pytest tests/host/test_webui_ldm.py
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import build_unet  # noqa: E402
from webui_models import OSEDIFF_META, lafr_weights, merged_vae_copy, osediff_sections, text_embedding, tiny_sd2_config  # noqa: E402

from lafr_core.ldm_keys import diffusers_to_ldm, layout_from_diffusers_config  # noqa: E402
from lafr_core.lafr_file import LafrWeights  # noqa: E402
from lafr_core.lora import apply_kohya_replacements, merge_kohya_lora  # noqa: E402
from lafr_core.schedule import x0_from_eps  # noqa: E402

_webui = os.environ.get("WEBUI_DIR")
LDM_DIR = os.environ.get("LDM_DIR") or (str(Path(_webui) / "repositories" / "stable-diffusion-stability-ai") if _webui else None)
pytestmark = pytest.mark.skipif(not LDM_DIR, reason="set LDM_DIR (or WEBUI_DIR of an A1111 install) to run on the real LDM code")


def ldm():
    if LDM_DIR not in sys.path:
        sys.path.insert(0, LDM_DIR)
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    return SimpleNamespace(UNetModel=UNetModel, Encoder=Encoder, Decoder=Decoder, Posterior=DiagonalGaussianDistribution)


def diffusers_config() -> dict:
    # LDM's GroupNorm32 always uses 32 groups: match it so the two UNets compute the same thing
    return {**tiny_sd2_config(), "norm_num_groups": 32}


def ldm_unet(lib) -> nn.Module:
    """SD2's v2-inference.yaml UNet parameters at toy widths (channels 32/32/64/64, head dim 16)."""
    return lib.UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 1, 2, 2], num_head_channels=16, use_spatial_transformer=True,
        use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, legacy=False, use_checkpoint=False,
    ).eval()


class LdmVae(nn.Module):
    """ldm.models.autoencoder.AutoencoderKL's encode/decode (without its Lightning base class)."""

    def __init__(self, lib):
        super().__init__()
        ddconfig = dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1, 1],
                        num_res_blocks=1, attn_resolutions=[], dropout=0.0)
        self.encoder, self.decoder, self.Posterior = lib.Encoder(**ddconfig), lib.Decoder(**ddconfig), lib.Posterior
        self.quant_conv, self.post_quant_conv = nn.Conv2d(8, 8, 1), nn.Conv2d(4, 4, 1)

    def encode(self, x):
        return self.Posterior(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


class LatentDiffusionShell(nn.Module):
    """LatentDiffusion.apply_model / decode_first_stage as ldm/models/diffusion/ddpm.py defines them
    for conditioning_key "crossattn" (DiffusionWrapper concatenates c_crossattn on dim 1)."""

    def __init__(self, unet, vae):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
        self.first_stage_model, self.scale_factor = vae, 0.18215
        self.is_sd2, self.parameterization = True, "eps"

    def apply_model(self, x_noisy, t, cond):
        return self.model.diffusion_model(x_noisy, t, context=torch.cat(cond["c_crossattn"], 1))

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)


@pytest.fixture(scope="module")
def models():
    lib = ldm()
    torch.manual_seed(0)
    config = diffusers_config()
    unet = build_unet(config, seed=0)
    real = ldm_unet(lib)
    converted = diffusers_to_ldm(unet.state_dict(), **layout_from_diffusers_config(config))
    missing, unexpected = real.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    weights = lafr_weights(SimpleNamespace(unet=unet, config=config))
    return SimpleNamespace(lib=lib, unet=unet, real=real, weights=weights, shell=LatentDiffusionShell(real, LdmVae(lib).eval()))


@torch.no_grad()
def test_every_lora_layer_is_a_conv_of_the_real_ldm_unet_and_the_hooked_step_matches(models):
    from lafr_webui.a1111 import A1111Model
    from lafr_webui.unet_hooks import unet_hooks

    hooks = unet_hooks(models.real, models.weights.kohya_lora)
    assert len(hooks.layers) == len(models.weights.kohya_lora) // 3
    kinds = {name.rsplit(".", 1)[-1] for name, m in models.real.named_modules() if any(m is layer.module for layer in hooks.layers)}
    assert {"op", "skip_connection", "2", "3", "conv"} <= kinds  # downsamplers, shortcuts, in/out layers, upsamplers

    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    prompt = models.weights.prompt_embeds.expand(2, -1, -1)
    t = torch.full((2,), 999, dtype=torch.long)
    plain = models.unet(z, t, encoder_hidden_states=prompt).sample
    assert (models.real(z, t, context=prompt) - plain).abs().max() < 1e-4  # same weights, same function

    reference = copy.deepcopy(models.unet)
    merge_kohya_lora(reference, models.weights.kohya_lora)
    eps = reference(z, t, encoder_hidden_states=prompt).sample
    before = {k: v.clone() for k, v in models.real.state_dict().items()}
    x0 = A1111Model(models.shell, models.weights, torch.device("cpu"), torch.float32).denoise(z)
    assert (x0 - x0_from_eps(z, eps, 999)).abs().max() < 2e-3
    assert all(torch.equal(v, before[k]) for k, v in models.real.state_dict().items())
    assert not [n for n, m in models.real.named_modules() if m._forward_hooks]


@torch.no_grad()
def test_encode_mode_and_decode_on_the_ldm_vae(models):
    from lafr_webui.a1111 import A1111Model

    host = A1111Model(models.shell, models.weights, torch.device("cpu"), torch.float32)
    crops = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    raw = host.encode(crops)
    assert raw.shape == (1, 4, 8, 8)
    assert torch.equal(raw, host.encode(crops))  # the mode, not a sample
    pixels = host.decode(raw)
    assert pixels.shape == (1, 64, 64, 3) and 0 <= float(pixels.min()) and float(pixels.max()) <= 1


@torch.no_grad()
def test_an_osediff_file_on_the_real_ldm_modules_equals_the_merged_references(models):
    from lafr_webui.a1111 import A1111Model

    sections = osediff_sections(models.shell)
    prompt = text_embedding(OSEDIFF_META["lafr.prompt"])
    weights = LafrWeights(aligner=None, prompt_embeds=prompt, meta=dict(OSEDIFF_META), **sections)
    host = A1111Model(models.shell, weights, torch.device("cpu"), torch.float32)
    hooked = {name for name, m in models.real.named_modules() if any(m is layer.module for layer in host.unet_hooks.layers)}
    linear = {name.split("transformer_blocks.0.")[-1].rsplit(".", 1)[-1] if name.endswith(("proj_in", "proj_out")) else
              name.split("transformer_blocks.0.")[-1] for name in hooked if isinstance(models.real.get_submodule(name), nn.Linear)}
    assert {"attn1.to_q", "attn2.to_k", "attn2.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"} <= linear
    assert "input_blocks.0.0" in hooked  # the replacement
    vae_hooked = {name for name, m in models.shell.first_stage_model.named_modules() if any(m is layer.module for layer in host.vae_hooks.layers)}
    assert {"encoder.mid.attn_1.q", "encoder.mid.attn_1.proj_out", "quant_conv"} <= vae_hooked
    assert not any(name.startswith(("decoder", "post_quant_conv")) for name in vae_hooked)

    before = {k: v.clone() for k, v in models.shell.state_dict().items()}
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    reference = copy.deepcopy(models.unet)
    apply_kohya_replacements(reference, weights.unet_set)
    merge_kohya_lora(reference, weights.kohya_lora)
    eps = reference(z, 999, encoder_hidden_states=prompt.expand(2, -1, -1)).sample
    x0 = host.denoise(z)
    effect = (x0_from_eps(z, models.unet(z, 999, encoder_hidden_states=prompt.expand(2, -1, -1)).sample, 999) - x0).abs().max()
    error = (x0 - x0_from_eps(z, eps, 999)).abs().max()
    print(f"OSEDiff file on the real LDM UNet: x0 max abs {error:.2e} (the file moves x0 by {effect:.2f})")
    assert error < 2e-3 and effect > 0.1

    crops = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(6))
    expected = merged_vae_copy(models.shell.first_stage_model, weights.vae_lora).encode(crops.permute(0, 3, 1, 2) * 2 - 1).mode()
    latent = host.encode(crops)
    plain = models.shell.first_stage_model.encode(crops.permute(0, 3, 1, 2) * 2 - 1).mode()
    print(f"VAE-encoder LoRA on LDM's Encoder: max abs {(latent - expected).abs().max():.2e} (moves it by {(plain - expected).abs().max():.3f})")
    assert (latent - expected).abs().max() < 1e-4 and (plain - expected).abs().max() > 1e-2

    after = models.shell.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in after.items())
    assert not [n for n, m in models.shell.named_modules() if m._forward_hooks]
