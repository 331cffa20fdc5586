"""LCM's guidance embedding as a bias change (lafr_core.interlcm.guidance): equal to diffusers'
TimestepEmbedding with `cond_proj`, and the weight read from checkpoints of either layout, with
the refusals a user meets when the file is not LCM Dreamshaper v7."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lafr_core.interlcm.guidance import GuidanceWeightError, guidance_time_bias, read_guidance_weights
from lafr_core.interlcm.lcm import guidance_embedding


def test_the_bias_change_equals_diffusers_guided_time_embedding():
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    torch.manual_seed(0)
    guided = TimestepEmbedding(32, 128, cond_proj_dim=256).eval()
    torch.nn.init.normal_(guided.cond_proj.weight, std=0.05)
    t_emb = Timesteps(32, True, 0)(torch.tensor([759.0, 259.0]))
    w = guidance_embedding(2, 8.0, 256)
    with torch.no_grad():
        reference = guided(t_emb, condition=w)
        unguided = guided(t_emb)
        patched = torch.nn.Linear(32, 128)
        patched.load_state_dict(guided.linear_1.state_dict())
        patched.bias += guidance_time_bias(guided.cond_proj.weight, guided.linear_1.weight, 8.0)
        ours = guided.linear_2(guided.act(patched(t_emb)))
    assert (ours - reference).abs().max() < 1e-5
    assert (unguided - reference).abs().max() > 1e-2  # the guidance matters: dropping it is visible


def test_mismatched_layers_are_refused():
    with pytest.raises(ValueError, match="does not take the 320 timestep features"):
        guidance_time_bias(torch.zeros(320, 256), torch.zeros(1280, 1024))


@pytest.mark.parametrize("prefix", ["", "unet.", "model.diffusion_model."])
def test_the_weight_is_read_from_either_layout(tmp_path, prefix):
    cond = torch.randn(320, 256)
    bias = torch.randn(1280)
    name = "time_embed.0.bias" if prefix.startswith("model.") else "time_embedding.linear_1.bias"
    proj = "time_embed.cond_proj.weight" if prefix.startswith("model.") else "time_embedding.cond_proj.weight"
    save_file({prefix + proj: cond, prefix + name: bias, prefix + "conv_in.weight": torch.zeros(320, 4, 3, 3)}, str(tmp_path / "lcm.safetensors"))
    got_cond, got_bias = read_guidance_weights(tmp_path / "lcm.safetensors")
    assert torch.equal(got_cond, cond) and torch.equal(got_bias, bias)


def test_files_that_are_not_lcm_are_named(tmp_path):
    save_file({"time_embedding.linear_1.bias": torch.zeros(1280)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(GuidanceWeightError, match="'sd15.safetensors' has no LCM guidance embedding.*not LCM Dreamshaper v7"):
        read_guidance_weights(tmp_path / "sd15.safetensors")
    (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04 a pickle")
    with pytest.raises(GuidanceWeightError, match="from .safetensors files only"):
        read_guidance_weights(tmp_path / "model.ckpt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(GuidanceWeightError, match="cannot be read as .safetensors"):
        read_guidance_weights(tmp_path / "broken.safetensors")
    save_file({"time_embedding.cond_proj.weight": torch.zeros(320, 128)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(GuidanceWeightError, match=r"shape \[320, 128\]"):
        read_guidance_weights(tmp_path / "odd.safetensors")
