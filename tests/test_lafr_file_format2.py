"""LAFR file format 2 (other engines' weights): replacements, a VAE-encoder LoRA, engine metadata;
format-1 files keep loading and the trainer's files stay format 1."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lafr_core.lafr_file import LafrFileError, load_lafr, read_lafr_metadata, save_lafr
from lafr_core.ldm_keys import vae_encoder_key_map, vae_encoder_module_to_diffusers, vae_encoder_module_to_ldm

CONV = "lora_unet_input_blocks_1_0_in_layers_2"
ATTN = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
CONV_IN = "lora_unet_input_blocks_0_0"
VAE = "lora_vae.encoder.mid.attn_1.q"
FOREIGN = {
    "lafr.engine": "osediff-face",
    "lafr.latent": "mode",
    "lafr.colour_fix": "adain",
    "lafr.source": "https://github.com/cswry/OSEDiff (osediff_face.pkl)",
    "lafr.licence": "Apache-2.0",
}


def kohya(alpha: float = 8.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        f"{CONV}.lora_down.weight": torch.randn(4, 320, 3, 3, generator=g),
        f"{CONV}.lora_up.weight": torch.randn(320, 4, 1, 1, generator=g),
        f"{CONV}.alpha": torch.tensor(alpha),
        f"{ATTN}.lora_down.weight": torch.randn(4, 1024, generator=g),
        f"{ATTN}.lora_up.weight": torch.randn(320, 4, generator=g),
        f"{ATTN}.alpha": torch.tensor(alpha),
    }


def replacements() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {f"{CONV_IN}.set_weight": torch.randn(320, 4, 3, 3, generator=g), f"{CONV_IN}.set_bias": torch.randn(320, generator=g)}


def vae_lora() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        f"{VAE}.lora_down.weight": torch.randn(4, 512, 1, 1, generator=g),
        f"{VAE}.lora_up.weight": torch.randn(512, 4, 1, 1, generator=g),
        f"{VAE}.alpha": torch.tensor(8.0),
    }


@pytest.fixture
def foreign_file(tmp_path):
    return save_lafr(tmp_path / "osediff_face.safetensors", kohya_lora=kohya(), meta=FOREIGN,
                     unet_set=replacements(), vae_lora=vae_lora())


def raw(path):
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def rewrite(src, dst, *, drop=(), add=None, meta=None, drop_meta=()):
    tensors, metadata = raw(src)
    tensors = {k: v for k, v in tensors.items() if k not in drop}
    tensors.update(add or {})
    metadata.update(meta or {})
    for key in drop_meta:
        metadata.pop(key)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_round_trip(foreign_file):
    weights = load_lafr(foreign_file)
    assert weights.meta["lafr.format"] == "2"
    assert (weights.engine, weights.stages, weights.lora_rank, weights.lora_alpha) == ("osediff-face", "2", 4, 8.0)
    assert (weights.vae_lora_rank, weights.vae_lora_alpha) == (4, 8.0)
    assert weights.prompt_embeds is None and weights.aligner is None
    for section, expected in ((weights.kohya_lora, kohya()), (weights.unet_set, replacements()), (weights.vae_lora, vae_lora())):
        assert section.keys() == expected.keys()
        assert all(torch.equal(section[k], expected[k]) for k in expected)
    assert weights.replaced_layers == [CONV_IN]
    assert read_lafr_metadata(foreign_file) == weights.meta


def test_trainer_files_stay_format_1(tmp_path):
    path = save_lafr(tmp_path / "lafr.safetensors", kohya_lora=kohya(4.0), prompt_embeds=torch.randn(1, 77, 1024))
    weights = load_lafr(path)
    assert weights.meta["lafr.format"] == "1" and "lafr.engine" not in weights.meta
    assert (weights.engine, weights.latent_rule, weights.colour_fix, weights.unet_set, weights.vae_lora) == ("lafr", "mode", "none", None, None)


def test_lafr_file_with_a_replacement_is_format_2(tmp_path):
    path = save_lafr(tmp_path / "lafr.safetensors", kohya_lora=kohya(4.0), prompt_embeds=torch.randn(1, 77, 1024),
                     unet_set=replacements())
    weights = load_lafr(path)
    assert (weights.meta["lafr.format"], weights.engine) == ("2", "lafr")


def test_lafr_engine_still_needs_its_prompt(tmp_path):
    with pytest.raises(ValueError, match="a LoRA needs its prompt_embeds"):
        save_lafr(tmp_path / "x.safetensors", kohya_lora=kohya(), unet_set=replacements())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(meta={"lafr.format": "1"}), "a format-1 file cannot carry 'lafr.engine' .format 2 metadata"),
        (dict(drop_meta=["lafr.engine"]), r"missing metadata \['lafr.engine'\]"),
        (dict(meta={"lafr.engine": "supir"}), "lafr.engine is 'supir'; this ComfyUI-LAFR runs"),
        (dict(drop_meta=["lafr.licence"]), r"must record \['lafr.licence'\]"),
        (dict(meta={"lafr.latent": "sample"}), "lafr.latent is 'sample' but lafr.latent_seed is None, not an integer"),
        (dict(meta={"lafr.latent": "mean"}), "lafr.latent is 'mean'; expected one of"),
        (dict(meta={"lafr.colour_fix": "lab"}), "lafr.colour_fix is 'lab'; expected one of"),
        (dict(meta={"lafr.stages": "1+2"}), "has lafr.stages '2'"),
        (dict(drop=[f"{CONV_IN}.set_weight"]), "replacement 'lora_unet_input_blocks_0_0' has .set_bias but no .set_weight"),
        (
            dict(add={f"{CONV_IN}.lora_down.weight": torch.zeros(4, 4, 3, 3), f"{CONV_IN}.lora_up.weight": torch.zeros(320, 4, 1, 1),
                      f"{CONV_IN}.alpha": torch.tensor(8.0)}),
            "has both a replacement .*ComfyUI would keep only one",
        ),
        (dict(add={f"{CONV_IN}.set_bias": torch.zeros(7)}), r"replacement 'lora_unet_input_blocks_0_0' has weight \[320, 4, 3, 3\] and bias \[7\]"),
        (dict(drop_meta=["lafr.vae_lora_rank"]), "no 'lafr.vae_lora_rank' metadata"),
        (dict(meta={"lafr.vae_lora_rank": "8"}), "but lafr.vae_lora_rank is 8"),
        (dict(meta={"lafr.vae_lora_alpha": "4"}), "is 8 but lafr.vae_lora_alpha is 4"),
        (dict(drop=[f"{VAE}.alpha"]), "lacks 'lora_vae.encoder.mid.attn_1.q.alpha'"),
    ],
)
def test_format_2_problems(foreign_file, tmp_path, change, message):
    path = rewrite(foreign_file, tmp_path / "bad.safetensors", **change)
    with pytest.raises(LafrFileError, match=message):
        load_lafr(path)


def test_format_1_file_cannot_carry_format_2_tensors(tmp_path):
    path = save_lafr(tmp_path / "lafr.safetensors", kohya_lora=kohya(4.0), prompt_embeds=torch.randn(1, 77, 1024))
    bad = rewrite(path, tmp_path / "bad.safetensors", add=replacements())
    with pytest.raises(LafrFileError, match="unexpected tensor 'lora_unet_input_blocks_0_0.set_bias' .a format-1 LAFR file holds only"):
        load_lafr(bad)


def test_format_1_file_cannot_carry_format_2_metadata(tmp_path):
    path = save_lafr(tmp_path / "lafr.safetensors", kohya_lora=kohya(4.0), prompt_embeds=torch.randn(1, 77, 1024))
    bad = rewrite(path, tmp_path / "bad.safetensors", meta={"lafr.colour_fix": "adain"})
    with pytest.raises(LafrFileError, match="a format-1 file cannot carry 'lafr.colour_fix'"):
        load_lafr(bad)


# --------------------------------------------------------------------------- VAE encoder names


def test_vae_encoder_map_agrees_with_diffusers_converter():
    """Our diffusers -> LDM names, read back by diffusers' own LDM -> diffusers VAE converter."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from lafr_core.pipeline import bundled_config

    with torch.device("meta"):
        vae = AutoencoderKL(**bundled_config("vae"))
    table = vae_encoder_key_map()
    keys = [k for k in vae.state_dict() if k.startswith(("encoder.", "quant_conv."))]
    ldm = {}
    for i, key in enumerate(keys):
        module, leaf = key.rsplit(".", 1)
        ldm[f"first_stage_model.{table[module]}.{leaf}"] = torch.full((1, 1, 1, 1), float(i))
    back = convert_ldm_vae_checkpoint(ldm, bundled_config("vae"))
    assert set(back) == set(keys)
    assert all(float(back[k].reshape(-1)[0]) == i for i, k in enumerate(keys))
    modules = {k.rsplit(".", 1)[0] for k in keys}
    assert modules <= set(table)  # name-level, like the UNet map: it lists conv_shortcut for every resnet
    assert all(name.endswith(".conv_shortcut") for name in set(table) - modules)
    assert vae_encoder_module_to_ldm("encoder.down_blocks.1.resnets.0.conv_shortcut") == "encoder.down.1.block.0.nin_shortcut"
    assert vae_encoder_module_to_diffusers("encoder.mid.attn_1.proj_out") == "encoder.mid_block.attentions.0.to_out.0"
    with pytest.raises(ValueError, match="not a VAE encoder module"):
        vae_encoder_module_to_ldm("post_quant_conv")
