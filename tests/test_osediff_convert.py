"""`lafr convert` on checkpoints in OSEDiff's exact saved structure (random tensors, no weights):
every tensor lands where it should, and every bad input gets one message naming the file, with
nothing written."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from lafr_core.__main__ import main
from lafr_core.lafr_file import load_lafr
from lafr_core.ldm_keys import diffusers_module_to_ldm, kohya_unet_name, vae_encoder_module_to_ldm
from lafr_core.osediff import OSEDiffCheckpointError, convert, default_prompt
from osediff_fixtures import ADAPTERS, structure_checkpoint, write_tokenizer

UNET_LISTS = ("unet_lora_encoder_modules", "unet_lora_decoder_modules", "unet_lora_others_modules")


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return structure_checkpoint(rank=4, seed=0)


@pytest.fixture(scope="module")
def pkl(checkpoint, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("osediff") / "osediff_face.pkl"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def converted(pkl, tmp_path_factory) -> Path:
    return convert(pkl, tmp_path_factory.mktemp("lafr") / "osediff_face.safetensors")


def test_checkpoint_structure_matches_osediff_facts(checkpoint):
    """ENGINES.md: 8 keys; rank 4 gives 518 UNet tensors (258 LoRA pairs + conv_in) and 64 VAE
    tensors; the VAE module list has 65 names, 32 of them unique."""
    assert len(checkpoint) == 8
    assert len(checkpoint["state_dict_unet"]) == 518
    assert sum(len(checkpoint[k]) for k in UNET_LISTS) == 258
    assert len(checkpoint["state_dict_vae"]) == 64
    assert (len(checkpoint["vae_lora_encoder_modules"]), len(set(checkpoint["vae_lora_encoder_modules"]))) == (65, 32)


def test_round_trip_every_tensor(checkpoint, converted):
    weights = load_lafr(converted)
    sd = checkpoint["state_dict_unet"]
    expected_unet = set()
    for key, adapter in zip(UNET_LISTS, ADAPTERS):
        for module in checkpoint[key]:
            if module == "conv_in":
                continue
            name = kohya_unet_name(diffusers_module_to_ldm(module))
            expected_unet |= {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
            assert torch.equal(weights.kohya_lora[f"{name}.lora_down.weight"], sd[f"{module}.lora_A.{adapter}.weight"]), module
            assert torch.equal(weights.kohya_lora[f"{name}.lora_up.weight"], sd[f"{module}.lora_B.{adapter}.weight"]), module
            assert float(weights.kohya_lora[f"{name}.alpha"]) == 8.0
    assert set(weights.kohya_lora) == expected_unet
    assert len(weights.kohya_lora) == 257 * 3

    # conv_in: the retrained weight with its own LoRA folded in at scale alpha/r = 8/4
    a, b = sd["conv_in.lora_A.default_encoder.weight"].double(), sd["conv_in.lora_B.default_encoder.weight"].double()
    folded = sd["conv_in.base_layer.weight"].double() + 2.0 * (b.flatten(1) @ a.flatten(1)).reshape(320, 4, 3, 3)
    assert set(weights.unet_set) == {"lora_unet_input_blocks_0_0.set_weight", "lora_unet_input_blocks_0_0.set_bias"}
    assert torch.equal(weights.unet_set["lora_unet_input_blocks_0_0.set_weight"], folded.float())
    assert torch.equal(weights.unet_set["lora_unet_input_blocks_0_0.set_bias"], sd["conv_in.base_layer.bias"])

    vae_sd = checkpoint["state_dict_vae"]
    expected_vae = set()
    for module in set(checkpoint["vae_lora_encoder_modules"]):
        name = "lora_vae." + vae_encoder_module_to_ldm(module)
        down, up = vae_sd[f"{module}.lora_A.default_encoder.weight"], vae_sd[f"{module}.lora_B.default_encoder.weight"]
        if down.ndim == 2:  # attention: Linear in diffusers, 1x1 conv in LDM
            down, up = down[:, :, None, None], up[:, :, None, None]
        assert torch.equal(weights.vae_lora[f"{name}.lora_down.weight"], down), module
        assert torch.equal(weights.vae_lora[f"{name}.lora_up.weight"], up), module
        assert float(weights.vae_lora[f"{name}.alpha"]) == 8.0
        expected_vae |= {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    assert set(weights.vae_lora) == expected_vae and len(expected_vae) == 32 * 3
    assert "lora_vae.quant_conv.lora_down.weight" in weights.vae_lora
    assert "lora_vae.encoder.mid.attn_1.q.lora_down.weight" in weights.vae_lora
    assert not any(".decoder." in k or "post_quant_conv" in k for k in weights.vae_lora)


def test_metadata(converted, pkl):
    weights = load_lafr(converted)
    meta = weights.meta
    assert meta["lafr.format"] == "2"
    assert (weights.engine, weights.stages, weights.lora_rank, weights.lora_alpha) == ("osediff-face", "2", 4, 8.0)
    assert (weights.vae_lora_rank, weights.vae_lora_alpha) == (4, 8.0)
    assert (weights.latent_rule, weights.latent_seed, weights.colour_fix) == ("mode", None, "adain")
    assert weights.prompt == default_prompt("osediff-face") == "face, close-up, portrait, ,"
    assert weights.prompt_embeds is None
    assert meta["lafr.licence"] == "Apache-2.0"
    assert meta["lafr.source"].startswith("https://github.com/cswry/OSEDiff (osediff_face.pkl, sha256 ")
    assert (meta["lafr.base"], meta["lafr.prediction"], weights.timestep, weights.latent_scale) == ("sd2.1-base", "epsilon", 999, 0.18215)
    assert weights.aligner is None and weights.replaced_layers == ["lora_unet_input_blocks_0_0"]


def test_general_checkpoint_is_labelled(checkpoint, tmp_path):
    src = tmp_path / "osediff.pkl"
    torch.save(checkpoint, src)
    weights = load_lafr(convert(src, tmp_path / "osediff.safetensors", latent="sample", seed=7, colour_fix="wavelet"))
    assert (weights.engine, weights.engine_label) == ("osediff", "OSEDiff (general photos)")
    assert (weights.latent_rule, weights.latent_seed, weights.colour_fix) == ("sample", 7, "wavelet")
    assert weights.prompt == "photo, ,"


def test_prompt_embeds_are_stored(pkl, tmp_path):
    embeds = torch.randn(1, 77, 1024)
    weights = load_lafr(convert(pkl, tmp_path / "x.safetensors", prompt="a face, ,", prompt_embeds=embeds))
    assert torch.equal(weights.prompt_embeds, embeds) and weights.prompt == "a face, ,"


def test_cli_convert_and_info(pkl, tmp_path, capsys):
    assert main(["convert", str(pkl), "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "osediff_face.safetensors"
    assert f"-> {path}: valid LAFR file" in out
    assert "no prompt embedding stored" in out
    assert main(["info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  format:         2" in lines
    assert "  what:           OSEDiff-face (one-step face restoration), converted from its published checkpoint" in lines
    assert any(line.startswith("  needs:          SD2.1-base (512, epsilon): its UNet and VAE (the VAE encoder with the file's LoRA); and its text encoder for the prompt") for line in lines)
    assert "  replaced:       lora_unet_input_blocks_0_0" in lines
    assert "  licence:        Apache-2.0" in lines


def test_cli_prompt_embeds_file(pkl, converted, tmp_path, capsys):
    from safetensors.torch import save_file

    embeds_file = tmp_path / "embeds.safetensors"
    embeds = torch.randn(1, 77, 1024)
    save_file({"prompt_embeds": embeds}, str(embeds_file))
    out = tmp_path / "with_embeds.safetensors"
    assert main(["convert", str(pkl), "-o", str(out), "--prompt-embeds", str(embeds_file), "--prompt", "face, ,"]) == 0
    assert torch.equal(load_lafr(out).prompt_embeds, embeds)
    assert "needs:          SD2.1-base (512, epsilon): its UNet and VAE (the VAE encoder with the file's LoRA)\n" in capsys.readouterr().out


def test_cli_base_folder_stores_the_prompt_embedding(pkl, tmp_path, capsys):
    """--base with a diffusers folder: the prompt through ITS tokenizer (77 tokens, padded with
    "!" = id 0 as SD2.1's) and text encoder, last hidden state, no attention mask (as OSEDiff)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    base = tmp_path / "sd21"
    write_tokenizer(base / "tokenizer")
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")
    CLIPTextModel(config).save_pretrained(base / "text_encoder")
    out = tmp_path / "osediff_face.safetensors"
    assert main(["convert", str(pkl), "-o", str(out), "--base", str(base)]) == 0
    assert "no prompt embedding stored" not in capsys.readouterr().out

    prompt = default_prompt("osediff-face")
    ids = CLIPTokenizer.from_pretrained(base / "tokenizer")(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, 0] == 49406 and ids[0, -1] == 0 and 49407 in ids[0].tolist()
    with torch.no_grad():
        expected = CLIPTextModel.from_pretrained(base / "text_encoder")(ids)[0]
    weights = load_lafr(out)
    assert weights.prompt == prompt
    assert torch.allclose(weights.prompt_embeds, expected, atol=1e-6)


def test_cli_single_file_base_says_what_is_missing(pkl, tmp_path, capsys):
    base = tmp_path / "v2-1_512-ema-pruned.safetensors"
    base.write_bytes(b"x")
    assert main(["convert", str(pkl), "-o", str(tmp_path / "out.safetensors"), "--base", str(base)]) == 1
    err = capsys.readouterr().err
    assert "single-file checkpoint: it holds no tokenizer" in err and "Nothing was written." in err
    assert not (tmp_path / "out.safetensors").exists()


# --------------------------------------------------------------------------- bad input


def _broken(checkpoint: dict, change) -> dict:
    ckpt = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in checkpoint.items()}
    change(ckpt)
    return ckpt


def _first_lora_key(ckpt, part="lora_B"):
    return next(k for k in ckpt["state_dict_unet"] if f".{part}." in k and "attn2.to_k" in k)


BAD = {
    "unknown top-level key": (lambda c: c.update(optimizer={}), r"unknown key\(s\) \['optimizer'\]"),
    "missing top-level key": (lambda c: c.pop("rank_vae"), r"missing key\(s\) \['rank_vae'\]"),
    "unknown tensor": (
        lambda c: c["state_dict_unet"].update({"mid_block.foo.lora_A.default_others.weight": torch.zeros(4, 4)}),
        r"state_dict_unet has 1 tensor\(s\) its module lists do not explain, e.g. 'mid_block.foo",
    ),
    "missing tensor": (
        lambda c: c["state_dict_unet"].pop(_first_lora_key(c)),
        r"state_dict_unet lacks 1 tensor\(s\) its module lists need, e.g. 'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B",
    ),
    "missing vae tensor": (
        lambda c: c["state_dict_vae"].pop("quant_conv.lora_A.default_encoder.weight"),
        r"state_dict_vae lacks 1 tensor\(s\) .* 'quant_conv.lora_A.default_encoder.weight'",
    ),
    "wrong shape (SD1.5 context width)": (
        lambda c: c["state_dict_unet"].update({_first_lora_key(c, "lora_A"): torch.zeros(4, 768)}),
        r"attn2.to_k.lora_A.default_encoder.weight'\] has shape \[4, 768\], but the SD2.1-base layer and the recorded rank need \[4, 1024\]",
    ),
    "wrong rank": (lambda c: c.update(rank_unet=8), r"has shape \[4, .*recorded rank need \[8, "),
    "wrong conv_in": (
        lambda c: c["state_dict_unet"].update({"conv_in.base_layer.weight": torch.zeros(320, 9, 3, 3)}),
        r"conv_in.base_layer.weight'\] has shape \[320, 9, 3, 3\]",
    ),
    "foreign module": (
        lambda c: c["unet_lora_others_modules"].append("mid_block.attentions.0.transformer_blocks.0.attn3.to_q"),
        r"names 'mid_block.attentions.0.transformer_blocks.0.attn3.to_q', which is not a Linear or Conv2d layer of the SD2.1-base UNet",
    ),
    "vae decoder target": (
        lambda c: c["vae_lora_encoder_modules"].append("decoder.conv_in"),
        r"'decoder.conv_in': only the VAE encoder and quant_conv can carry a LoRA here",
    ),
    "integer tensor": (
        lambda c: c["state_dict_vae"].update({"quant_conv.lora_A.default_encoder.weight": torch.zeros(4, 8, 1, 1, dtype=torch.int64)}),
        r"state_dict_vae\['quant_conv.lora_A.default_encoder.weight'\] is not a finite floating-point tensor",
    ),
    "rank not an int": (lambda c: c.update(rank_unet="4"), r"rank_unet is '4'; expected a positive integer"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint(checkpoint, tmp_path, case):
    change, message = BAD[case]
    src = tmp_path / "osediff_face.pkl"
    torch.save(_broken(checkpoint, change), src)
    out = tmp_path / "out"
    with pytest.raises(OSEDiffCheckpointError, match=message) as info:
        convert(src, out / "osediff_face.safetensors")
    assert f"OSEDiff checkpoint '{src}'" in str(info.value)
    assert not out.exists()


class Payload:
    """Unpickling this runs os.system: weights_only must refuse it before anything runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_objects_are_refused_unrun(checkpoint, tmp_path, capsys):
    marker = tmp_path / "ran"
    src = tmp_path / "osediff_face.pkl"
    torch.save({**checkpoint, "rank_unet": Payload(marker)}, src)
    out = tmp_path / "out" / "osediff_face.safetensors"
    assert main(["convert", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"OSEDiff checkpoint '{src}' holds more than tensors and plain values (code objects or custom classes" in err
    assert "refused unread" in err and "Nothing was written." in err
    assert not marker.exists() and not out.parent.exists()


def test_plain_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    src = tmp_path / "osediff_face.pkl"
    src.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(OSEDiffCheckpointError, match=f"'{src}'"):
        convert(src, tmp_path / "o.safetensors")
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)), "is not a torch-saved OSEDiff checkpoint|cannot be read"),
        (lambda p: torch.save(torch.zeros(3), p), "holds a Tensor, not OSEDiff's dict of 8 entries"),
        (lambda p: None, "does not exist"),
    ],
    ids=["image", "tensor", "missing"],
)
def test_not_a_checkpoint(tmp_path, content, message):
    src = tmp_path / "osediff_face.pkl"
    content(src)
    with pytest.raises(OSEDiffCheckpointError, match=message):
        convert(src, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_truncated_checkpoint(pkl, tmp_path):
    src = tmp_path / "osediff_face.pkl"
    src.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    with pytest.raises(OSEDiffCheckpointError, match=f"'{src}' cannot be read as a torch-saved OSEDiff checkpoint .truncated"):
        convert(src, tmp_path / "o.safetensors")
    assert list(tmp_path.iterdir()) == [src]


def test_failed_conversion_keeps_an_existing_file(pkl, converted, tmp_path):
    """Atomic: a failure never touches what is already there."""
    before = converted.read_bytes()
    src = tmp_path / "osediff_face.pkl"
    src.write_bytes(b"not a pickle")
    with pytest.raises(OSEDiffCheckpointError):
        convert(src, converted)
    assert converted.read_bytes() == before


def test_convert_runs_without_diffusers(pkl, tmp_path):
    """ComfyUI's Python has no diffusers/peft/transformers: the converter must not need them."""
    from test_host_free_imports import run_blocked

    out = tmp_path / "osediff_face.safetensors"
    result = run_blocked(f"from lafr_core.__main__ import main; raise SystemExit(main(['convert', {str(pkl)!r}, '-o', {str(out)!r}]))")
    assert result.returncode == 0, result.stderr
    assert load_lafr(out).engine == "osediff-face"
