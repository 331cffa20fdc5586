"""Conv LoRA: peft injection counts, kohya export, merge == peft, kohya <-> peft state, errors."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import REPO, build_unet, sd21_unet_config, tiny_unet_config
from lafr_core.ldm_keys import diffusers_module_to_ldm, kohya_unet_name
from lafr_core.lora import (
    LORA_TARGET_MODULES,
    add_conv_lora,
    kohya_lora_layers,
    kohya_rank_alpha,
    kohya_to_peft_state,
    lora_state_to_kohya,
    lora_target_names,
    merge_kohya_lora,
)

# Rank-4 LoRA on SD2.1-base's 66 convs: sum over them of 4 * (in*kh*kw + out) (DESIGN.md 1: "2.33M").
SD21_LORA_LAYERS = 66
SD21_LORA_PARAMS = 2_327_200


def _lora_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


@pytest.fixture(scope="module")
def base_unet() -> nn.Module:
    return build_unet(tiny_unet_config())


@pytest.fixture(scope="module")
def peft_unet(base_unet) -> nn.Module:
    """The tiny UNet with a LoRA whose A and B are random (a fresh LoRA has B = 0: a no-op)."""
    unet = add_conv_lora(copy.deepcopy(base_unet))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return unet


@pytest.fixture(scope="module")
def kohya(peft_unet) -> dict[str, torch.Tensor]:
    return lora_state_to_kohya(peft_unet)


def _forward(unet: nn.Module) -> torch.Tensor:
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    prompt = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        return unet(sample, 999, encoder_hidden_states=prompt).sample


# --- import hygiene --------------------------------------------------------------------------------


def test_import_does_not_load_diffusers_or_peft():
    code = (
        "import sys, lafr_core.ldm_keys, lafr_core.lora; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'peft')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


# --- full SD2.1 config (meta device: names and shapes only) ----------------------------------------


@pytest.fixture(scope="module")
def full_meta_unets() -> tuple[nn.Module, nn.Module]:
    """(plain, LoRA'd) full SD2.1-base UNets on the meta device."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        plain = UNet2DConditionModel(**sd21_unet_config())
        lora = add_conv_lora(UNet2DConditionModel(**sd21_unet_config()))
    return plain, lora


def test_full_config_counts(full_meta_unets):
    plain, lora = full_meta_unets
    lora_layers = {n: m for n, m in lora.named_modules() if hasattr(m, "lora_A")}
    assert len(lora_layers) == SD21_LORA_LAYERS
    assert all(n.rsplit(".", 1)[-1] in LORA_TARGET_MODULES for n in lora_layers)
    assert all(type(m.base_layer) is nn.Conv2d for m in lora_layers.values())

    plain_convs = {n: m for n, m in plain.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(lora_layers) == set(plain_convs)  # SD2.1's convs are exactly the targets
    expected = sum(
        4 * (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] + conv.out_channels)
        for conv in plain_convs.values()
    )
    trainable = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected == SD21_LORA_PARAMS
    assert all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)


def test_full_config_kohya_names(full_meta_unets):
    plain, _ = full_meta_unets
    names = {kohya_unet_name(diffusers_module_to_ldm(n)) for n in lora_target_names(plain)}
    assert len(names) == SD21_LORA_LAYERS
    for expected in (
        "lora_unet_input_blocks_0_0",
        "lora_unet_input_blocks_4_0_skip_connection",
        "lora_unet_input_blocks_9_0_op",
        "lora_unet_middle_block_2_out_layers_3",
        "lora_unet_output_blocks_2_1_conv",
        "lora_unet_output_blocks_5_2_conv",
        "lora_unet_output_blocks_11_0_in_layers_2",
        "lora_unet_out_2",
    ):
        assert expected in names


def test_targets_match_name_and_class():
    """A Linear named like a target, or a Conv2d whose name only starts like one, is not hit."""
    model = nn.Module()
    model.conv = nn.Linear(4, 4)
    model.conv1_extra = nn.Conv2d(4, 4, 3)
    model.block = nn.Module()
    model.block.conv2 = nn.Conv2d(4, 8, 3)
    assert lora_target_names(model) == ["block.conv2"]
    with pytest.raises(ValueError, match="no Conv2d named"):
        add_conv_lora(nn.Sequential(nn.Linear(2, 2)))


# --- tiny config: export, merge, forward ---------------------------------------------------------


def test_kohya_export_format(base_unet, peft_unet, kohya):
    # the tiny widths [32, 32, 64, 64] change channels once on the way down (SD2.1: twice): 65 convs
    assert len(lora_target_names(base_unet)) == 65
    assert len(kohya) == 3 * 65
    layers = {n: m for n, m in peft_unet.named_modules() if hasattr(m, "lora_A")}
    for name, layer in layers.items():
        base = kohya_unet_name(diffusers_module_to_ldm(name))
        down, up, alpha = kohya[base + ".lora_down.weight"], kohya[base + ".lora_up.weight"], kohya[base + ".alpha"]
        conv = layer.base_layer
        assert down.shape == (4, conv.in_channels, *conv.kernel_size)
        assert up.shape == (conv.out_channels, 4, 1, 1)
        assert torch.equal(down, layer.lora_A["default"].weight) and torch.equal(up, layer.lora_B["default"].weight)
        assert alpha.dtype == torch.float32 and alpha.ndim == 0 and alpha.item() == 4.0
        assert down.is_contiguous() and up.is_contiguous() and down.device.type == "cpu"
    assert kohya_rank_alpha(kohya) == (4, 4.0)


def test_export_strips_peft_model_prefix(peft_unet, kohya):
    """get_peft_model wraps the UNet as base_model.model.<...>; export names must not change."""
    outer = nn.Module()
    outer.base_model = nn.Module()
    outer.base_model.model = peft_unet
    wrapped = lora_state_to_kohya(outer)
    assert wrapped.keys() == kohya.keys()


def test_merge_equals_peft_merge(base_unet, peft_unet, kohya):
    merged = copy.deepcopy(base_unet)
    assert merge_kohya_lora(merged, kohya) == len(lora_target_names(base_unet))

    peft_merged = copy.deepcopy(peft_unet)
    for module in peft_merged.modules():
        if hasattr(module, "lora_A"):
            module.merge(adapter_names=["default"])
    reference = {k.replace(".base_layer.", "."): v for k, v in peft_merged.state_dict().items() if ".lora_" not in k}
    merged_state, base_state = merged.state_dict(), base_unet.state_dict()
    assert merged_state.keys() == reference.keys()
    changed = 0
    for key, value in merged_state.items():
        torch.testing.assert_close(value, reference[key], atol=1e-5, rtol=0, msg=key)
        changed += not torch.equal(value, base_state[key])
    assert changed == len(lora_target_names(base_unet))  # exactly the LoRA'd conv weights moved


def test_merged_forward_equals_peft_forward(base_unet, peft_unet, kohya):
    merged = copy.deepcopy(base_unet)
    merge_kohya_lora(merged, kohya)
    with_lora, from_file, without = _forward(peft_unet), _forward(merged), _forward(base_unet)
    assert (with_lora - without).abs().max() > 1e-2  # the LoRA does something
    torch.testing.assert_close(from_file, with_lora, atol=1e-4, rtol=0)


def test_merge_strength_and_dtype(base_unet, kohya):
    half = copy.deepcopy(base_unet)
    merge_kohya_lora(half, kohya, strength=0.5)
    full = copy.deepcopy(half)
    merge_kohya_lora(full, kohya, strength=0.5)
    reference = copy.deepcopy(base_unet)
    merge_kohya_lora(reference, kohya)
    key = "down_blocks.0.resnets.0.conv1.weight"
    base_w, half_w = base_unet.state_dict()[key], half.state_dict()[key]
    assert not torch.allclose(half_w, base_w) and not torch.allclose(half_w, reference.state_dict()[key])
    torch.testing.assert_close(full.state_dict()[key], reference.state_dict()[key], atol=1e-5, rtol=0)

    low = copy.deepcopy(base_unet).to(torch.bfloat16)
    merge_kohya_lora(low, kohya)
    assert low.state_dict()[key].dtype == torch.bfloat16
    torch.testing.assert_close(low.state_dict()[key].float(), reference.state_dict()[key], atol=2e-2, rtol=1e-2)


# --- kohya -> peft ---------------------------------------------------------------------------------


def test_kohya_to_peft_state_round_trip(base_unet, peft_unet, kohya):
    state = kohya_to_peft_state(kohya)
    expected = _lora_params(peft_unet)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)

    reloaded = add_conv_lora(copy.deepcopy(base_unet), *kohya_rank_alpha(kohya))
    result = reloaded.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert lora_state_to_kohya(reloaded).keys() == kohya.keys()
    assert all(torch.equal(lora_state_to_kohya(reloaded)[k], kohya[k]) for k in kohya)


def test_kohya_to_peft_state_for_set_peft_model_state_dict(base_unet, peft_unet, kohya):
    from peft import set_peft_model_state_dict

    reloaded = add_conv_lora(copy.deepcopy(base_unet), adapter_name="restore")
    result = set_peft_model_state_dict(reloaded, kohya_to_peft_state(kohya, adapter_name=None), "restore")
    assert not result.unexpected_keys
    loaded = {k.replace(".restore.", ".default."): v for k, v in _lora_params(reloaded).items()}
    expected = _lora_params(peft_unet)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


# --- errors ----------------------------------------------------------------------------------------


def _without(kohya: dict, suffix: str) -> dict:
    victim = sorted(k for k in kohya if k.endswith(suffix))[0]
    return {k: v for k, v in kohya.items() if k != victim}


def test_missing_alpha_or_pair(kohya):
    with pytest.raises(ValueError, match=r"lora_unet_\w+' is missing \.alpha"):
        kohya_lora_layers(_without(kohya, ".alpha"))
    with pytest.raises(ValueError, match=r"is missing \.lora_up\.weight"):
        kohya_lora_layers(_without(kohya, ".lora_up.weight"))
    with pytest.raises(ValueError, match=r"is missing \.lora_down\.weight, \.alpha"):
        kohya_lora_layers({k: v for k, v in kohya.items() if k.endswith(".lora_up.weight")})


def test_rank_mismatch(kohya):
    bad = dict(kohya)
    key = "lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight"
    bad[key] = bad[key][:, :2]
    with pytest.raises(ValueError, match="does not fit lora_down"):
        kohya_lora_layers(bad)


def test_unknown_and_foreign_keys(base_unet, kohya):
    unknown = dict(kohya)
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        source = kohya["lora_unet_input_blocks_1_0_in_layers_2" + suffix]
        unknown["lora_unet_input_blocks_99_0_in_layers_2" + suffix] = source
    target = copy.deepcopy(base_unet)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="match no Conv2d/Linear.*lora_unet_input_blocks_99_0_in_layers_2"):
        merge_kohya_lora(target, unknown)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing half-merged
    with pytest.raises(ValueError, match="lora_unet_input_blocks_99_0_in_layers_2"):
        kohya_to_peft_state(unknown)

    foreign = {**kohya, "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0)}
    with pytest.raises(ValueError, match="not kohya UNet LoRA keys.*lora_te_text_model_encoder"):
        merge_kohya_lora(copy.deepcopy(base_unet), foreign)
    with pytest.raises(ValueError, match="different \\(rank, alpha\\)"):
        kohya_rank_alpha({**kohya, "lora_unet_input_blocks_0_0.alpha": torch.tensor(8.0)})


def test_refuses_peft_model_and_plain_export(base_unet, peft_unet, kohya):
    with pytest.raises(ValueError, match="expects a plain UNet"):
        merge_kohya_lora(copy.deepcopy(peft_unet), kohya)
    with pytest.raises(ValueError, match="no peft LoRA layers for adapter 'default'"):
        lora_state_to_kohya(base_unet)
