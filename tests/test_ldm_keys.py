"""diffusers <-> LDM key mapping: round trips, bijectivity, and diffusers' own converter as referee."""

from __future__ import annotations

import pytest
import torch

from conftest import build_unet, sd21_unet_config, tiny_unet_config
from lafr_core import ldm_keys
from lafr_core.ldm_keys import (
    diffusers_module_to_ldm,
    diffusers_to_ldm,
    kohya_unet_name,
    kohya_unet_table,
    layout_from_diffusers_config,
    layout_from_diffusers_names,
    ldm_module_to_diffusers,
    ldm_to_diffusers,
    resolve_kohya_unet_name,
    unet_key_map,
)


@pytest.fixture(scope="module")
def full_state() -> dict[str, torch.Tensor]:
    """The full SD2.1-base UNet's state dict on the meta device: real keys and shapes, no memory."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unet_config())
    return unet.state_dict()


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return build_unet(tiny_unet_config()).state_dict()


def _assert_same_keys(got, expected) -> None:
    """Key sets equal, with the differences listed (as diffusers' single-file tests do)."""
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:10]}, extra {extra[:10]}"


def _diffusers_convert(ldm_state: dict, config: dict) -> dict:
    """diffusers' own LDM -> diffusers converter, an implementation independent of ours."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    checkpoint = {ldm_keys.LDM_PREFIX + key: value for key, value in ldm_state.items()}
    return convert_ldm_unet_checkpoint(checkpoint, config)


def _variant_config() -> dict:
    """A non-SD2 layout (3 levels, 1 resnet per level, attention on the middle level only)."""
    config = tiny_unet_config()
    config.update(
        block_out_channels=[16, 32, 32],
        attention_head_dim=[2, 4, 4],
        layers_per_block=1,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    )
    return config


# --- full SD2.1 config -------------------------------------------------------------------------


def test_full_round_trip_diffusers_first(full_state):
    layout = layout_from_diffusers_config(sd21_unet_config())
    ldm = diffusers_to_ldm(full_state, **layout)
    assert len(ldm) == len(full_state)  # no two diffusers keys collapse onto one LDM key
    back = ldm_to_diffusers(ldm, **layout)
    assert list(back) == list(full_state)
    assert all(back[key] is full_state[key] for key in full_state)


def test_full_round_trip_ldm_first(full_state):
    ldm = diffusers_to_ldm(full_state)
    again = diffusers_to_ldm(ldm_to_diffusers(ldm))
    assert list(again) == list(ldm)
    assert all(again[key] is ldm[key] for key in ldm)


def test_full_matches_diffusers_converter(full_state):
    converted = _diffusers_convert(diffusers_to_ldm(full_state), sd21_unet_config())
    _assert_same_keys(converted, full_state)
    assert all(converted[key] is full_state[key] for key in full_state)


@pytest.mark.parametrize(
    "ldm_key, shape",
    [  # names and shapes as in the released v2-1_512-ema-pruned checkpoint
        ("time_embed.0.weight", (1280, 320)),
        ("input_blocks.0.0.weight", (320, 4, 3, 3)),
        ("input_blocks.1.1.proj_in.weight", (320, 320)),  # Linear in SD2 (use_linear_projection)
        ("input_blocks.4.0.skip_connection.weight", (640, 320, 1, 1)),
        ("input_blocks.9.0.op.weight", (1280, 1280, 3, 3)),
        ("middle_block.1.transformer_blocks.0.attn2.to_k.weight", (1280, 1024)),
        ("output_blocks.2.1.conv.weight", (1280, 1280, 3, 3)),
        ("output_blocks.8.2.conv.weight", (640, 640, 3, 3)),
        ("output_blocks.11.1.transformer_blocks.0.norm1.bias", (320,)),
        ("out.2.weight", (4, 320, 3, 3)),
    ],
)
def test_full_known_ldm_keys(full_state, ldm_key, shape):
    ldm = diffusers_to_ldm(full_state)
    assert tuple(ldm[ldm_key].shape) == shape


# --- tiny configs (real tensors) ------------------------------------------------------------------


@pytest.mark.parametrize("make_config", [tiny_unet_config, _variant_config], ids=["tiny", "variant"])
def test_tiny_round_trips_and_converter(make_config):
    config = make_config()
    state = build_unet(config).state_dict()
    layout = layout_from_diffusers_config(config)
    assert layout_from_diffusers_names(state) == layout
    ldm = diffusers_to_ldm(state, **layout)
    assert len(ldm) == len(state)
    _assert_same_keys(ldm_to_diffusers(ldm, **layout), state)

    converted = _diffusers_convert(ldm, config)
    _assert_same_keys(converted, state)
    assert all(torch.equal(converted[key], state[key]) for key in state)


def test_variant_layout_indices():
    layout = layout_from_diffusers_config(_variant_config())
    assert layout == dict(
        num_levels=3, layers_per_block=1, down_attention=(False, True, False), up_attention=(False, True, False)
    )
    assert diffusers_module_to_ldm("down_blocks.1.attentions.0", **layout) == "input_blocks.3.1"
    assert diffusers_module_to_ldm("down_blocks.1.downsamplers.0.conv", **layout) == "input_blocks.4.0.op"
    assert diffusers_module_to_ldm("up_blocks.0.upsamplers.0.conv", **layout) == "output_blocks.1.1.conv"
    assert diffusers_module_to_ldm("up_blocks.1.upsamplers.0.conv", **layout) == "output_blocks.3.2.conv"


def test_converters_build_new_dicts(tiny_state):
    before = dict(tiny_state)
    ldm = diffusers_to_ldm(tiny_state)
    ldm_before = dict(ldm)
    ldm_to_diffusers(ldm)
    assert tiny_state == before and ldm == ldm_before


# --- single names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "diffusers_name, ldm_name",
    [
        ("down_blocks.0.resnets.0.conv1", "input_blocks.1.0.in_layers.2"),
        ("down_blocks.0.resnets.1.norm1", "input_blocks.2.0.in_layers.0"),
        ("down_blocks.1.resnets.0.time_emb_proj", "input_blocks.4.0.emb_layers.1"),
        ("down_blocks.1.resnets.0.norm2", "input_blocks.4.0.out_layers.0"),
        ("down_blocks.1.resnets.0.conv2", "input_blocks.4.0.out_layers.3"),
        ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
        ("down_blocks.3.resnets.1.conv1", "input_blocks.11.0.in_layers.2"),
        ("down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"),
        ("mid_block.resnets.0.conv1", "middle_block.0.in_layers.2"),
        ("mid_block.attentions.0.proj_out", "middle_block.1.proj_out"),
        ("mid_block.resnets.1.conv_shortcut", "middle_block.2.skip_connection"),
        ("up_blocks.0.resnets.2.conv_shortcut", "output_blocks.2.0.skip_connection"),
        (
            "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_out.0",
            "output_blocks.5.1.transformer_blocks.0.attn1.to_out.0",
        ),
        ("up_blocks.3.resnets.2.conv2", "output_blocks.11.0.out_layers.3"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("conv_norm_out", "out.0"),
        ("conv_in", "input_blocks.0.0"),
        ("conv_out.weight", "out.2.weight"),
        ("down_blocks.0.resnets.0.conv1.lora_A.default.weight", "input_blocks.1.0.in_layers.2.lora_A.default.weight"),
    ],
)
def test_single_names(diffusers_name, ldm_name):
    assert diffusers_module_to_ldm(diffusers_name) == ldm_name
    assert ldm_module_to_diffusers(ldm_name) == diffusers_name


def test_unet_key_map_is_injective_and_fresh():
    mapping = unet_key_map()
    assert len(set(mapping.values())) == len(mapping)
    mapping["conv_in"] = "changed"
    assert unet_key_map()["conv_in"] == "input_blocks.0.0"


# --- errors -----------------------------------------------------------------------------------------


def test_unmapped_keys_are_listed(tiny_state):
    bad = dict(tiny_state)
    bad["foo.weight"] = torch.zeros(1)
    bad["down_blocks.0.resnets.0.weird.weight"] = torch.zeros(1)
    bad["down_blocks.3.attentions.0.norm.weight"] = torch.zeros(1)  # level 3 has no attention in SD2
    with pytest.raises(ValueError, match=r"3 key\(s\) have no mapping.*foo\.weight"):
        diffusers_to_ldm(bad)


def test_prefixed_ldm_keys_get_a_hint(tiny_state):
    prefixed = {ldm_keys.LDM_PREFIX + k: v for k, v in diffusers_to_ldm(tiny_state).items()}
    with pytest.raises(ValueError, match="strip the 'model.diffusion_model.' prefix"):
        ldm_to_diffusers(prefixed)


@pytest.mark.parametrize(
    "name, call",
    [
        ("down_blocks.0.resnets.0", diffusers_module_to_ldm),  # a resnet as a whole has no LDM twin
        ("input_blocks.12.0.in_layers.2", ldm_module_to_diffusers),
        ("input_blocks.1.0.in_layers.1", ldm_module_to_diffusers),  # SiLU: no parameters, not mapped
    ],
)
def test_single_name_errors(name, call):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        call(name)


def test_layout_errors():
    config = sd21_unet_config()
    with pytest.raises(ValueError, match="SimpleCrossAttnDownBlock2D"):
        layout_from_diffusers_config({**config, "down_block_types": ["SimpleCrossAttnDownBlock2D"] * 4})
    with pytest.raises(ValueError, match="UNetMidBlock2DSimpleCrossAttn"):
        layout_from_diffusers_config({**config, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"})
    with pytest.raises(ValueError, match="differs per level"):
        layout_from_diffusers_config({**config, "layers_per_block": [2, 2, 1, 2]})
    assert layout_from_diffusers_config({**config, "layers_per_block": [3, 3, 3, 3]})["layers_per_block"] == 3
    with pytest.raises(ValueError, match="num_levels=4"):
        unet_key_map(down_attention=(True, False))
    with pytest.raises(ValueError, match="cannot infer"):
        layout_from_diffusers_names(["conv_in.weight"])


# --- kohya names --------------------------------------------------------------------------------------


def test_kohya_names():
    assert kohya_unet_name("input_blocks.1.0.in_layers.2") == "lora_unet_input_blocks_1_0_in_layers_2"
    known = list(unet_key_map().values())
    assert resolve_kohya_unet_name("lora_unet_input_blocks_1_0_in_layers_2", known) == "input_blocks.1.0.in_layers.2"
    assert resolve_kohya_unet_name("lora_unet_output_blocks_11_0_skip_connection", known) == (
        "output_blocks.11.0.skip_connection"
    )
    assert len(kohya_unet_table(known)) == len(known)  # SD2's names never collide once underscored


def test_kohya_name_errors():
    known = list(unet_key_map().values())
    with pytest.raises(ValueError, match="lora_unet_input_blocks_1_0_in_layers_9"):
        resolve_kohya_unet_name("lora_unet_input_blocks_1_0_in_layers_9", known)
    with pytest.raises(ValueError, match="not a kohya UNet LoRA name"):
        resolve_kohya_unet_name("lora_te_text_model_encoder_layers_0_mlp_fc1", known)
    with pytest.raises(ValueError, match="ambiguous"):
        kohya_unet_table(["a.b_c", "a_b.c"])
