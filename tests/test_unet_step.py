"""The pruned one-step UNet equals the unpruned diffusers UNet + the x0 formula (DESIGN §2)."""

import gc

import pytest
import torch

from conftest import build_unet, sd21_unet_config, tiny_unet_config
from lafr_core.lora import add_conv_lora, lora_state_to_kohya, merge_kohya_lora
from lafr_core.schedule import x0_from_eps
from lafr_core.unet_step import PrunedUNet

TOLERANCE = 1e-4  # max abs error on x0, float32 (x0 of random weights reaches ~60)


def unpruned_x0(unet, z, prompt):
    with torch.no_grad():
        eps = unet(z, 999, encoder_hidden_states=prompt.expand(z.shape[0], -1, -1)).sample
    return x0_from_eps(z, eps)


def pruned_x0(unet, z, prompt):
    with torch.no_grad():
        return PrunedUNet.from_diffusers(unet, prompt)(z)


def randomize_lora_up(unet, seed=2):
    """peft initialises lora_B to zero (a no-op); give it values so the LoRA matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def assert_pruned_matches_plain_lora_and_merged(config, size, batch):
    cross = config["cross_attention_dim"]
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, 77, cross, generator=gen)
    z = torch.randn(batch, 4, size, size, generator=gen)

    unet = build_unet(config)
    plain_ref = unpruned_x0(unet, z, prompt)
    assert (pruned_x0(unet, z, prompt) - plain_ref).abs().max() < TOLERANCE

    add_conv_lora(unet, rank=4, alpha=4)
    randomize_lora_up(unet)
    lora_ref = unpruned_x0(unet, z, prompt)
    assert (lora_ref - plain_ref).abs().max() > 100 * TOLERANCE  # the LoRA really changes x0
    assert (pruned_x0(unet, z, prompt) - lora_ref).abs().max() < TOLERANCE  # LoRA active

    kohya = lora_state_to_kohya(unet)
    del unet
    gc.collect()
    merged = build_unet(config)
    merge_kohya_lora(merged, kohya)
    assert (pruned_x0(merged, z, prompt) - lora_ref).abs().max() < TOLERANCE  # LoRA merged


def test_tiny_pruned_equals_unpruned_plain_lora_and_merged():
    assert_pruned_matches_plain_lora_and_merged(tiny_unet_config(), size=16, batch=2)


def test_full_sd21_base_pruned_equals_unpruned_plain_lora_and_merged():
    """Full SD2.1-base config, random weights, 64x64 latent (the real size of a 512 face)."""
    assert_pruned_matches_plain_lora_and_merged(sd21_unet_config(), size=64, batch=1)


def test_odd_latent_sizes_match(tiny_unet, tiny_prompt_embeds):
    z = torch.randn(1, 4, 19, 11)
    ref = unpruned_x0(tiny_unet, z, tiny_prompt_embeds)
    out = pruned_x0(tiny_unet, z, tiny_prompt_embeds)
    assert out.shape == z.shape
    assert (out - ref).abs().max() < TOLERANCE


def test_full_config_drops_exactly_the_time_and_prompt_modules():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unet_config())
        pruned = PrunedUNet.from_diffusers(unet, torch.zeros(1, 77, 1024))
    full = sum(p.numel() for p in unet.parameters())
    kept = sum(p.numel() for p in pruned.parameters())
    time_path = sum(p.numel() for n, p in unet.named_parameters() if "time_emb" in n)
    prompt_kv = sum(p.numel() for n, p in unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n)
    assert full == 865_910_724
    assert round(time_path / 1e6, 1) == 27.9 and round(prompt_kv / 1e6, 1) == 25.6
    assert kept == full - time_path - prompt_kv
    names = [n for n, _ in pruned.named_parameters()]
    assert not any("time_emb" in n or ".attn2.to_k" in n or ".attn2.to_v" in n for n in names)
    # module paths mirror diffusers, so LDM key maps and LoRA names apply unchanged
    diffusers_names = {n for n, _ in unet.named_parameters()}
    assert set(names) <= diffusers_names


def test_lora_on_pruned_unet_trains_only_lora(tiny_unet, tiny_prompt_embeds):
    add_conv_lora(tiny_unet)
    pruned = PrunedUNet.from_diffusers(tiny_unet, tiny_prompt_embeds)
    trainable = [n for n, p in pruned.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    pruned(torch.randn(1, 4, 16, 16)).square().mean().backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for p in pruned.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_in_its_dtype_and_is_close_to_float32(tiny_unet, tiny_prompt_embeds, dtype):
    """A half-precision UNet gives half-precision x0 (the float64 x0 coefficients must not upcast
    it) and everything the fold made (biases, prompt K/V, from a float32 prompt) is in that dtype."""
    z = torch.randn(2, 4, 16, 16)
    ref = pruned_x0(tiny_unet, z, tiny_prompt_embeds)
    with torch.no_grad():
        pruned = PrunedUNet.from_diffusers(tiny_unet.to(dtype), tiny_prompt_embeds)
        low = pruned(z.to(dtype))
    assert low.dtype == dtype
    assert {t.dtype for t in [*pruned.parameters(), *pruned.buffers()]} == {dtype}
    assert (low.float() - ref).abs().max() / ref.abs().max() < 0.05


def test_wrong_prompt_width_names_the_expected_width(tiny_unet):
    with pytest.raises(ValueError, match=r"prompt_embeds must be \[1, tokens, 32\].*got \(1, 77, 768\)"):
        PrunedUNet.from_diffusers(tiny_unet, torch.zeros(1, 77, 768))


def test_wrong_latent_channels_is_refused(tiny_unet, tiny_prompt_embeds):
    pruned = PrunedUNet.from_diffusers(tiny_unet, tiny_prompt_embeds)
    with pytest.raises(ValueError, match=r"expects latents \[batch, 4, h, w\]"):
        pruned(torch.zeros(1, 3, 16, 16))
