"""A converted OSEDiff-face file (LAFR format 2) on the A1111 path: LoRA on every Conv2d and
attention / feed-forward / projection Linear, conv_in replaced, a LoRA on the VAE encoder and
quant_conv, no prompt embedding (the host encodes the file's prompt text). Against
lafr_core.pipeline with the same file merged into copies of the same diffusers modules; the host's
parameters bit-identical afterwards, also when a forward raises; the prompt setting; the face
restorer end to end on the fake webui."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import lafr_webui.messages as messages
import lafr_webui.prompt as prompt_module
from lafr_core.face import COLOUR_CORRECTIONS
from lafr_core.host_chain import restore_crops
from lafr_core.lafr_file import load_lafr
from lafr_webui.a1111 import A1111Model
from lafr_webui.args import RestoreArgs
from lafr_webui.prompt import with_run_prompt
from lafr_webui.service import run_colour
from webui_fakes import FakeWebui, lafr_entries, photo
from webui_models import OSEDIFF_META, FakeLatentDiffusion, pipeline_restore, text_embedding, write_osediff_file

TOL = 2e-3  # fp32, output pixels in 0..1 (the bound)
FILE_PROMPT = OSEDIFF_META["lafr.prompt"]


@pytest.fixture(scope="module")
def model():
    return FakeLatentDiffusion(vae="ldm")


@pytest.fixture(scope="module")
def osediff_file(model, tmp_path_factory):
    return write_osediff_file(tmp_path_factory.mktemp("osediff") / "osediff_face.safetensors", model)


@pytest.fixture(scope="module")
def weights(osediff_file):
    return load_lafr(osediff_file)


@pytest.fixture(scope="module")
def crops():
    return torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(4))


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch):
    monkeypatch.setattr(messages, "_shown", set())
    monkeypatch.setattr(prompt_module, "_cache", {})


class OtherCheckpoint:
    """Another loaded SD2 checkpoint, as far as the prompt encoder is concerned."""

    def __init__(self):
        self.text_calls = []

    def get_learned_conditioning(self, texts):
        self.text_calls.append(list(texts))
        return torch.cat([text_embedding(text) * 2 for text in texts])


def fingerprint(module: nn.Module) -> dict[str, int]:
    return {k: hash(v.detach().numpy().tobytes()) for k, v in module.state_dict().items()}


def hooks_left(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if m._forward_hooks]


def plain(weights):
    """The same run without any of the file's weights: what the file must change."""
    return dataclasses.replace(weights, kohya_lora=None, unet_set=None, vae_lora=None)


def test_the_file_is_what_the_a1111_path_needs(weights, model):
    linear = {k.split(".")[0] for k, v in weights.kohya_lora.items() if k.endswith(".lora_down.weight") and v.ndim == 2}
    for layer in ("attn1_to_q", "attn2_to_k", "attn1_to_out_0", "ff_net_0_proj", "ff_net_2", "proj_in", "proj_out"):
        assert any(name.endswith(layer) for name in linear), layer
    assert weights.replaced_layers == ["lora_unet_input_blocks_0_0"] and weights.has_vae_lora
    assert (weights.engine, weights.latent_rule, weights.colour_fix, weights.prompt_embeds) == ("osediff-face", "sample", "adain", None)


@torch.no_grad()
def test_a1111_path_equals_the_pipeline_with_the_file_merged_and_leaves_the_model_as_it_was(model, weights, crops):
    run = with_run_prompt(weights, model, "")
    assert torch.equal(run.prompt_embeds, text_embedding(FILE_PROMPT)) and weights.prompt_embeds is None  # cache untouched
    before = fingerprint(model)
    host = A1111Model(model, run, torch.device("cpu"), torch.float32)
    assert len(host.unet_hooks) == len(weights.kohya_lora) // 3 + 1 and len(host.vae_hooks) == len(weights.vae_lora) // 3

    out = restore_crops(run, crops, host.host_model())
    expected = pipeline_restore(model, run, crops)

    error = (out - expected).abs().max()
    effect = (restore_crops(run, crops, A1111Model(model, plain(run), torch.device("cpu"), torch.float32).host_model())
              - expected).abs().max()
    print(f"A1111 path vs pipeline: max abs {error:.2e}; the file's weights change the output by {effect:.3f}")
    assert error < TOL and effect > 50 * TOL
    assert fingerprint(model) == before and not hooks_left(model)


@torch.no_grad()
def test_each_section_reaches_its_layer(model, weights, crops):
    """The VAE-encoder LoRA acts in encode only, conv_in's replacement and the Linear LoRA in the UNet step."""
    run = with_run_prompt(weights, model, "")
    full = A1111Model(model, run, torch.device("cpu"), torch.float32)
    bare = A1111Model(model, plain(run), torch.device("cpu"), torch.float32)
    assert (full.encode(crops) - bare.encode(crops)).abs().max() > 1e-3
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(full.decode(z), bare.decode(z))  # the decoder is the base VAE's
    only_conv_in = A1111Model(model, dataclasses.replace(plain(run), unet_set=run.unet_set), torch.device("cpu"), torch.float32)
    linear = {k: v for k, v in run.kohya_lora.items() if run.kohya_lora[k.rsplit(".", 2)[0] + ".lora_down.weight"].ndim == 2}
    only_linear = A1111Model(model, dataclasses.replace(plain(run), kohya_lora=linear), torch.device("cpu"), torch.float32)
    base = bare.denoise(z)
    assert (only_conv_in.denoise(z) - base).abs().max() > 1e-2
    assert (only_linear.denoise(z) - base).abs().max() > 1e-2


def test_a_raising_forward_leaves_every_parameter_and_no_hook(model, weights, crops):
    run = with_run_prompt(weights, model, "")
    host = A1111Model(model, run, torch.device("cpu"), torch.float32)
    before = fingerprint(model)

    def boom(module, args):
        raise RuntimeError("boom inside the forward")

    for where, call in (("model.diffusion_model.middle_block.1", lambda: host.denoise(torch.zeros(1, 4, 8, 8))),
                        ("first_stage_model.encoder.conv_out", lambda: host.encode(crops[:1]))):
        handle = model.get_submodule(where).register_forward_pre_hook(boom)  # after hooked layers ran
        try:
            with pytest.raises(RuntimeError, match="boom inside"):
                call()
        finally:
            handle.remove()
        assert fingerprint(model) == before and not hooks_left(model), where
    assert not host.unet_hooks.active and not host.vae_hooks.active


def test_the_prompt_is_encoded_once_per_model_and_text(model, weights):
    model.text_calls.clear()
    first = with_run_prompt(weights, model, "")
    again = with_run_prompt(weights, model, "  ")
    own = with_run_prompt(weights, model, "a smiling face")
    assert model.text_calls == [[FILE_PROMPT], ["a smiling face"]]
    assert again.prompt_embeds.data_ptr() == first.prompt_embeds.data_ptr()  # the cached tensor itself
    assert not torch.equal(own.prompt_embeds, first.prompt_embeds)
    other = OtherCheckpoint()  # another checkpoint loaded: encoded by it, the old entries dropped
    with_run_prompt(weights, other, "a smiling face")
    assert other.text_calls == [["a smiling face"]] and len(prompt_module._cache) == 1

    lafr = dataclasses.replace(weights, meta={}, prompt_embeds=torch.zeros(1, 77, 1024))  # a LAFR file: its own embedding
    assert with_run_prompt(lafr, model, "").prompt_embeds is lafr.prompt_embeds
    assert torch.equal(with_run_prompt(lafr, model, "a smiling face").prompt_embeds, own.prompt_embeds)
    stage1 = dataclasses.replace(lafr, prompt_embeds=None, kohya_lora=None)  # nothing to prompt: left to say what is missing
    assert with_run_prompt(stage1, model, "a smiling face") is stage1


def test_colour_file_default_is_the_files_own(weights, capsys):
    wavelet = dataclasses.replace(weights, meta={**weights.meta, "lafr.colour_fix": "wavelet"})
    assert run_colour(RestoreArgs(), wavelet, "w.safetensors") == "wavelet"
    assert run_colour(RestoreArgs(colour_correction="lab"), wavelet, "w.safetensors") == "lab"
    lafr = dataclasses.replace(weights, meta={})
    assert run_colour(RestoreArgs(), lafr, "lafr.safetensors") == "none"
    adain = run_colour(RestoreArgs(), weights, "osediff_face.safetensors")
    if "adain" in COLOUR_CORRECTIONS:
        assert adain == "adain"
    else:  # lafr_core.face without AdaIN: said once, none applied
        assert adain == "none" and "asks for the 'adain' colour fix" in capsys.readouterr().err


def test_the_face_restorer_runs_the_file_with_the_prompt_setting(model, osediff_file, tmp_path, monkeypatch, capsys):
    webui = FakeWebui(tmp_path / "models").install(monkeypatch).ready(model, osediff_file)
    restorer = lafr_entries(webui)[0]
    before = fingerprint(model)
    model.text_calls.clear()
    image = photo()

    own = restorer.restore(image)
    webui.shared.opts.lafr_prompt = "a smiling face"
    prompted = restorer.restore(image)

    face = (slice(90, 150), slice(195, 255))
    assert np.abs(own[face].astype(int) - image[face]).mean() > 5  # restored, not refused
    assert np.array_equal(own[:40, :40], image[:40, :40])
    assert np.abs(prompted[face].astype(int) - own[face]).mean() > 1  # the prompt changes the faces
    assert model.text_calls == [[FILE_PROMPT], ["a smiling face"]]  # the file's text, then the setting's
    err = capsys.readouterr().err
    assert err.count("asks for a sampled VAE latent (seed 0); the webui encodes to the posterior mode") == 1, err
    assert "Traceback" not in err and "LAFR error" not in err
    assert fingerprint(model) == before and not hooks_left(model)
