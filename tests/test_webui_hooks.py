"""The A1111 UNet path: LAFR LoRA as forward hooks on an LDM-named UNet, and A1111Model's
encode / denoise / decode, against a merged-LoRA diffusers reference (merge_kohya_lora on a copy)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lafr_core.lora import merge_kohya_lora
from lafr_core.schedule import x0_from_eps
from lafr_webui.a1111 import A1111Model
from lafr_webui.unet_hooks import unet_hooks
from conftest import build_unet
from webui_models import FakeLatentDiffusion, lafr_lora, lafr_weights, tiny_sd2_config

TOL = 1e-4  # float32 round-off of conv(x, W) + conv(conv(x, down), up) vs conv(x, W + up @ down)


@pytest.fixture(scope="module")
def model():
    return FakeLatentDiffusion()


@pytest.fixture(scope="module")
def weights(model):
    return lafr_weights(model)


def _inputs(model, n=2, size=16, seed=3):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, size, size, generator=gen)
    prompt = torch.randn(1, 77, model.config["cross_attention_dim"], generator=gen).expand(n, -1, -1)
    return z, torch.full((n,), 999, dtype=torch.long), prompt


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_bit_identical(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"weights changed: {changed[:5]}"


def _hooks_left(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if m._forward_hooks]


@pytest.mark.parametrize("strength", [1.0, 0.5])
@torch.no_grad()
def test_hooked_apply_model_equals_merged_lora_reference(model, weights, strength):
    z, t, prompt = _inputs(model)
    reference = copy.deepcopy(model.unet)
    assert merge_kohya_lora(reference, weights.kohya_lora, strength) == len(weights.kohya_lora) // 3
    expected = reference(z, t, encoder_hidden_states=prompt).sample
    base = model.apply_model(z, t, {"c_crossattn": [prompt]})

    with unet_hooks(model.model.diffusion_model, weights.kohya_lora, strength=strength):
        hooked = model.apply_model(z, t, {"c_crossattn": [prompt]})

    assert (expected - base).abs().max() > 0.05  # the LoRA really changes eps: the check below can fail
    assert (hooked - expected).abs().max() < TOL


@torch.no_grad()
def test_a1111_model_denoise_is_x0_of_the_merged_reference(model, weights):
    z, _, _ = _inputs(model, n=3, seed=4)
    prompt = weights.prompt_embeds.expand(3, -1, -1)
    reference = copy.deepcopy(model.unet)
    merge_kohya_lora(reference, weights.kohya_lora)
    eps = reference(z, 999, encoder_hidden_states=prompt).sample
    host = A1111Model(model, weights, torch.device("cpu"), torch.float32)

    x0 = host.denoise(z)

    assert (x0 - x0_from_eps(z, eps, 999)).abs().max() < TOL / 0.07  # x0 divides eps by sqrt(a_999) ~ 0.069
    assert not _hooks_left(model)


@torch.no_grad()
def test_hooks_leave_every_weight_bit_identical_after_success_and_after_an_exception(model, weights):
    unet = model.model.diffusion_model
    before = _snapshot(unet)
    host = A1111Model(model, weights, torch.device("cpu"), torch.float32)
    z, _, _ = _inputs(model, n=1)

    host.denoise(z)
    _assert_bit_identical(unet, before)
    assert not _hooks_left(unet)

    def boom(module, args):
        raise RuntimeError("boom inside the UNet forward")

    handle = unet.get_submodule("middle_block.1").register_forward_pre_hook(boom)  # after hooked convs ran
    try:
        with pytest.raises(RuntimeError, match="boom inside"):
            host.denoise(z)
    finally:
        handle.remove()
    _assert_bit_identical(unet, before)
    assert not _hooks_left(unet)
    assert not host.unet_hooks.active


def test_a_lora_for_another_unet_is_refused_before_any_hook(model, weights):
    unet = model.model.diffusion_model
    renamed = {k.replace("lora_unet_input_blocks_1_0", "lora_unet_input_blocks_9_9"): v for k, v in weights.kohya_lora.items()}
    with pytest.raises(ValueError, match="does not fit this model: 2 of 65 layers name no Conv2d or Linear"):
        unet_hooks(unet, renamed)

    narrow = build_unet({**tiny_sd2_config(), "block_out_channels": [16, 16, 32, 32], "norm_num_groups": 4}, seed=1)
    with pytest.raises(ValueError, match="does not fit the Conv2d weight"):
        unet_hooks(unet, lafr_lora(narrow))
    assert not _hooks_left(unet)


@torch.no_grad()
def test_encode_uses_the_posterior_mode_and_decode_undoes_the_scale(model, weights):
    host = A1111Model(model, weights, torch.device("cpu"), torch.float32)
    crops = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    raw = host.encode(crops)
    expected = model.first_stage_model.encoder(crops.permute(0, 3, 1, 2) * 2 - 1).chunk(2, dim=1)[0]
    assert torch.equal(raw, expected)  # the mean, never a sample
    assert torch.equal(host.encode(crops), raw)

    pixels = host.decode(raw)
    direct = (model.first_stage_model.decode(raw) + 1) / 2
    assert pixels.shape == (2, 64, 64, 3)
    assert torch.allclose(pixels, direct.clamp(0, 1).permute(0, 2, 3, 1), atol=1e-6)


@torch.no_grad()
def test_hooks_follow_a_half_precision_unet(model, weights):
    """A1111 runs the UNet in fp16 (or bf16): the LoRA factors are cast to the conv input's dtype."""
    half = copy.deepcopy(model).to(torch.bfloat16)
    z, t, prompt = _inputs(model)
    reference = copy.deepcopy(half.unet)
    merge_kohya_lora(reference, weights.kohya_lora)  # merged in float32, stored in bf16
    expected = reference(z.bfloat16(), t, encoder_hidden_states=prompt.bfloat16()).sample.float()
    unmerged = half.unet(z.bfloat16(), t, encoder_hidden_states=prompt.bfloat16()).sample.float()

    with unet_hooks(half.model.diffusion_model, weights.kohya_lora):
        hooked = half.apply_model(z.bfloat16(), t, {"c_crossattn": [prompt.bfloat16()]})

    assert hooked.dtype == torch.bfloat16
    error, effect = (hooked.float() - expected).abs().mean(), (expected - unmerged).abs().mean()
    assert error < 0.1 * effect, (error, effect)  # bf16 round-off, far below what the LoRA changes


class _Tree(nn.Module):
    """Two layers under LDM paths: conv_in (replaced) and a Linear projection (LoRA)."""

    def __init__(self, padding_mode: str = "zeros"):
        super().__init__()
        torch.manual_seed(0)
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(4, 8, 3, padding=1, padding_mode=padding_mode)])])
        self.proj = nn.Linear(8, 6)

    def forward(self, x):
        return self.proj(self.input_blocks[0][0](x).permute(0, 2, 3, 1))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
@torch.no_grad()
def test_replacement_and_linear_lora_hooks_equal_the_merged_layers(padding_mode):
    tree = _Tree(padding_mode)
    gen = torch.Generator().manual_seed(1)
    new_w, new_b = torch.randn(8, 4, 3, 3, generator=gen), torch.randn(8, generator=gen)
    down, up = torch.randn(2, 8, generator=gen), torch.randn(6, 2, generator=gen)
    kohya = {"lora_unet_proj.lora_down.weight": down, "lora_unet_proj.lora_up.weight": up, "lora_unet_proj.alpha": torch.tensor(8.0)}
    unet_set = {"lora_unet_input_blocks_0_0.set_weight": new_w, "lora_unet_input_blocks_0_0.set_bias": new_b}
    x = torch.randn(2, 4, 5, 5, generator=gen)
    merged = copy.deepcopy(tree)
    merged.input_blocks[0][0].weight.copy_(new_w)
    merged.input_blocks[0][0].bias.copy_(new_b)
    merged.proj.weight.add_(0.5 * 4.0 * (up @ down))  # strength 0.5, alpha/rank = 8/2
    before = {k: v.clone() for k, v in tree.state_dict().items()}

    with unet_hooks(tree, kohya, unet_set, strength=0.5) as hooks:
        out = tree(x)
        assert hooks.active
    assert torch.allclose(out, merged(x), rtol=1e-5, atol=1e-5)  # the conv replaced (not scaled by strength), the LoRA added
    assert (out - tree(x)).abs().max() > 0.1
    assert all(torch.equal(v, before[k]) for k, v in tree.state_dict().items()) and not _hooks_left(tree)

    only_weight = {"lora_unet_input_blocks_0_0.set_weight": new_w}  # the module keeps its own bias
    with unet_hooks(tree, None, only_weight):
        conv = tree.input_blocks[0][0]
        expected = nn.Conv2d(4, 8, 3, padding=1, padding_mode=padding_mode)
        expected.load_state_dict({"weight": new_w, "bias": conv.bias})
        assert torch.allclose(conv(x), expected(x), rtol=1e-5, atol=1e-5)

    half = copy.deepcopy(tree).bfloat16()
    with unet_hooks(half, kohya, unet_set, strength=0.5):
        assert half(x.bfloat16()).dtype == torch.bfloat16


def test_replacements_that_do_not_fit_are_refused_before_any_hook():
    tree = _Tree()
    with pytest.raises(ValueError, match=r"replacement lora_unet_input_blocks_0_0.set_weight: \(8, 4, 1, 1\) does not fit"):
        unet_hooks(tree, None, {"lora_unet_input_blocks_0_0.set_weight": torch.zeros(8, 4, 1, 1)})
    with pytest.raises(ValueError, match="set_bias: \\(7,\\) does not fit the module's bias"):
        unet_hooks(tree, None, {"lora_unet_input_blocks_0_0.set_weight": torch.zeros(8, 4, 3, 3),
                                "lora_unet_input_blocks_0_0.set_bias": torch.zeros(7)})
    with pytest.raises(ValueError, match="have .set_bias but no .set_weight"):
        unet_hooks(tree, None, {"lora_unet_input_blocks_0_0.set_bias": torch.zeros(8)})
    with pytest.raises(ValueError, match="LoRA layer lora_unet_proj: \\(2, 5\\) does not fit the Linear weight"):
        unet_hooks(tree, {"lora_unet_proj.lora_down.weight": torch.zeros(2, 5), "lora_unet_proj.lora_up.weight": torch.zeros(6, 2),
                          "lora_unet_proj.alpha": torch.tensor(2.0)})
    assert not _hooks_left(tree)
