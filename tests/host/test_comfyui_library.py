"""The ComfyUI nodes on a real ComfyUI (COMFYUI_DIR), full-size SD2.1-base stand-ins.

LAFR Pruned UNet Step through the host's ModelPatcher + LoRA patches + apply_model must equal
the diffusers path (merged LoRA, PrunedUNet) and leave the user's MODEL bit-identical; so must
both graph forms when ComfyUI unloads every model at each point where it may on a GPU (CPU
ComfyUI never frees memory by itself, so the tests make it)."""

from __future__ import annotations

import gc

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from comfy_support import import_comfy, load_pack, needs_comfyui  # noqa: E402
from conftest import build_unet, sd21_unet_config  # noqa: E402

pytestmark = needs_comfyui


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    from lafr_core.adapter import AlignerConfig, LatentAligner
    from lafr_core.lafr_file import load_lafr, save_lafr
    from lafr_core.lora import add_conv_lora, lora_state_to_kohya

    unet = build_unet(sd21_unet_config(), seed=0)
    base_sd = {k: v.clone() for k, v in unet.state_dict().items()}
    add_conv_lora(unet)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    path = tmp_path_factory.mktemp("lafr") / "stand_in.safetensors"
    save_lafr(path, aligner=LatentAligner(AlignerConfig()), kohya_lora=lora_state_to_kohya(unet),
              prompt_embeds=torch.randn(1, 77, 1024, generator=gen))
    del unet
    return base_sd, load_lafr(path)


def _fingerprint(module) -> dict[str, int]:
    """A cheap bit-exact identity of every tensor (hash of its bytes), instead of a 3.5 GB copy."""
    return {k: hash(v.detach().cpu().numpy().tobytes()) for k, v in module.state_dict().items()}


def _reference_x0(base_sd, weights, raw):
    """diffusers path: base weights (shared, only the LoRA'd convs copied) + merged LoRA + PrunedUNet."""
    from diffusers import UNet2DConditionModel

    from lafr_core.lora import lora_target_names, merge_kohya_lora
    from lafr_core.unet_step import PrunedUNet

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unet_config())
    sd = dict(base_sd)
    for name in lora_target_names(unet):
        sd[name + ".weight"] = sd[name + ".weight"].clone()
    unet.load_state_dict(sd, assign=True)
    merge_kohya_lora(unet.eval(), weights.kohya_lora)
    with torch.no_grad():
        return PrunedUNet.from_diffusers(unet, weights.prompt_embeds)(raw * 0.18215) / 0.18215


def test_unet_step_node_equals_diffusers_path_and_leaves_model_untouched(stand_in):
    comfy_sd = import_comfy()
    pack = load_pack()
    import comfy.model_management

    base_sd, weights = stand_in
    raw = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = _reference_x0(base_sd, weights, raw)
    gc.collect()

    model = comfy_sd.load_diffusion_model_state_dict(dict(base_sd))
    before = _fingerprint(model.model.diffusion_model)
    node = pack.NODE_CLASS_MAPPINGS["LAFRPrunedUNetStep"]()
    (out,) = node.step(model, weights, {"samples": raw}, 1.0, 0)
    assert out["samples"].shape == raw.shape
    assert (out["samples"] - expected).abs().max() < 2e-3  # raw-latent units (x0 scaled by 1/0.18215)
    # ComfyUI's contract (as for its own LoraLoader): the patches live on our clone; the user's
    # ModelPatcher gains none, and loading it again gives its weights back bit-exactly.
    assert not model.patches
    comfy.model_management.load_models_gpu([model])
    assert _fingerprint(model.model.diffusion_model) == before, "the user's MODEL was modified"
    del model
    comfy.model_management.unload_all_models()
    gc.collect()


@pytest.fixture
def forced_unloads(monkeypatch):
    """ComfyUI told to free everything wherever it may on a GPU: right after the VAE's encode
    (its load_models_gpu frees other models when VRAM is short), before each chunk of faces
    (any other model's load between our calls), and with --disable-smart-memory's rule. Yields
    the list of points where it freed, so a test can show the frees happened."""
    import_comfy()
    import comfy.model_management as mm
    import comfy.sd

    frees: list[str] = []

    def free_all(where: str) -> None:
        frees.append(where)
        mm.free_memory(1e30, mm.get_torch_device())

    encode, interrupted = comfy.sd.VAE.encode, mm.throw_exception_if_processing_interrupted

    def encode_then_free(self, pixels):
        out = encode(self, pixels)
        free_all("after VAE encode")
        return out

    def free_then_check():
        free_all("before a chunk")
        interrupted()

    monkeypatch.setattr(comfy.sd.VAE, "encode", encode_then_free)
    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", free_then_check)
    monkeypatch.setattr(mm, "DISABLE_SMART_MEMORY", True)
    yield frees
    mm.unload_all_models()


def test_unet_step_node_keeps_its_lora_when_comfyui_unloads_between_chunks(stand_in, forced_unloads):
    """Defect of 0.1: the clone was loaded once, then ComfyUI unpatched it and the faces after
    the first free ran without the LoRA. One face per chunk: a free before every forward."""
    comfy_sd = import_comfy()
    pack = load_pack()
    base_sd, weights = stand_in
    raw = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = _reference_x0(base_sd, weights, raw)
    gc.collect()
    model = comfy_sd.load_diffusion_model_state_dict(dict(base_sd))
    before = _fingerprint(model.model.diffusion_model)
    # another pack's unet function wrapper on the user's MODEL runs around our forward too, as
    # around a sampler's
    wrapped = []

    def wrapper(apply_model, args):
        wrapped.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(wrapper)
    (out,) = pack.NODE_CLASS_MAPPINGS["LAFRPrunedUNetStep"]().step(model, weights, {"samples": raw}, 1.0, 1)
    assert forced_unloads.count("before a chunk") == 2 and wrapped == [1, 1]
    assert (out["samples"] - expected).abs().max() < 2e-3
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    assert not model.patches and _fingerprint(model.model.diffusion_model) == before
    del model
    gc.collect()


@pytest.fixture(scope="module")
def sd_vae():
    """A full-size SD VAE (random weights, LDM keys) as ComfyUI's own VAE object."""
    from diffusers import AutoencoderKL

    from ldm_fixtures import diffusers_vae_to_ldm, random_state_dict
    from lafr_core.pipeline import bundled_config

    import_comfy()
    import comfy.sd

    sd = diffusers_vae_to_ldm(random_state_dict(AutoencoderKL, bundled_config("vae"), torch.float32, seed=5))
    return comfy.sd.VAE(sd={k.removeprefix("first_stage_model."): v for k, v in sd.items()})


def _portrait() -> torch.Tensor:
    import numpy as np
    from PIL import Image

    from conftest import DATA_DIR

    return torch.from_numpy(np.asarray(Image.open(DATA_DIR / "astronaut.png").convert("RGB"), dtype=np.float32) / 255.0)[None]


def _restore_node(pack, image, model, vae, weights, lora_strength):
    out = pack.NODE_CLASS_MAPPINGS["LAFRRestoreFaces"]().restore(
        image, model, vae, weights, "mtcnn", 0.0, 20, "all", 1.0, "none", 0.3, lora_strength)
    return out["result"]


def test_restore_faces_node_keeps_its_lora_when_comfyui_unloads_after_the_vae(stand_in, sd_vae, monkeypatch):
    """The all-in-one node: the VAE's encode unloads the patched UNet (as it may on a GPU); the
    restored face must still be the LoRA's, and the user's MODEL and VAE unchanged afterwards."""
    comfy_sd = import_comfy()
    pack = load_pack()
    import comfy.model_management as mm

    base_sd, weights = stand_in
    image = _portrait()
    model = comfy_sd.load_diffusion_model_state_dict(dict(base_sd))
    model_before, vae_before = _fingerprint(model.model.diffusion_model), _fingerprint(sd_vae.first_stage_model)
    _, reference, count = _restore_node(pack, image, model, sd_vae, weights, 1.0)
    assert count == 1

    frees = []
    encode = type(sd_vae).encode

    def encode_then_free(self, pixels):
        out = encode(self, pixels)
        frees.append(1)
        mm.free_memory(1e30, mm.get_torch_device())
        return out

    monkeypatch.setattr(type(sd_vae), "encode", encode_then_free)
    monkeypatch.setattr(mm, "DISABLE_SMART_MEMORY", True)
    _, restored, _ = _restore_node(pack, image, model, sd_vae, weights, 1.0)
    _, without_lora, _ = _restore_node(pack, image, model, sd_vae, weights, 0.0)
    assert len(frees) == 2
    assert (restored - reference).abs().max() < 1e-4, "the LoRA was dropped after the VAE's load"
    assert (without_lora - reference).abs().max() > 1e-3  # the LoRA is visible through this random VAE

    mm.load_models_gpu([model, sd_vae.patcher])
    assert not model.patches and not sd_vae.patcher.patches
    assert _fingerprint(model.model.diffusion_model) == model_before, "the user's MODEL was modified"
    assert _fingerprint(sd_vae.first_stage_model) == vae_before, "the user's VAE was modified"
    del model
    mm.unload_all_models()
    gc.collect()


def test_restore_faces_node_without_faces_loads_no_model(stand_in, sd_vae):
    comfy_sd = import_comfy()
    pack = load_pack()
    import comfy.model_management as mm

    base_sd, weights = stand_in
    model = comfy_sd.load_diffusion_model_state_dict(dict(base_sd))
    mm.unload_all_models()
    image = torch.full((1, 256, 320, 3), 0.4)
    out, crops, count = _restore_node(pack, image, model, sd_vae, weights, 1.0)
    assert count == 0 and torch.equal(out, image) and crops.shape == (1, 512, 512, 3)
    assert mm.current_loaded_models == [], [m.model for m in mm.current_loaded_models]
    del model
    gc.collect()


def test_latent_align_node_matches_library(stand_in):
    import_comfy()
    pack = load_pack()
    _, weights = stand_in
    raw = torch.randn(1, 4, 64, 64)
    (out,) = pack.NODE_CLASS_MAPPINGS["LAFRLatentAlign"]().align({"samples": raw, "batch_index": [0]}, weights)
    with torch.no_grad():
        expected = weights.aligner(raw * 0.18215) / 0.18215
    assert torch.allclose(out["samples"], expected, atol=1e-5)
    assert out["batch_index"] == [0]


@pytest.mark.parametrize("change, message", [("sd15", "it is sd1.x"), ("vpred", "it predicts v")])
def test_unet_step_node_refuses_wrong_models(stand_in, change, message):
    comfy_sd = import_comfy()
    pack = load_pack()
    _, weights = stand_in
    config = sd21_unet_config()
    if change == "sd15":
        config.update(cross_attention_dim=768, use_linear_projection=False, attention_head_dim=8)  # SD1.5
    with torch.device("meta"):
        from diffusers import UNet2DConditionModel

        shapes = UNet2DConditionModel(**config).state_dict()
    sd = {k: torch.randn(v.shape) * 0.02 for k, v in shapes.items()}
    if change == "vpred":
        sd["up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias"] = torch.randn(320) * 0.3
    model = comfy_sd.load_diffusion_model_state_dict(sd)
    node = pack.NODE_CLASS_MAPPINGS["LAFRPrunedUNetStep"]()
    with pytest.raises(ValueError, match=f"LAFR Pruned UNet Step: the MODEL input: LAFR needs Stable Diffusion 2.1-base.*{message}"):
        node.step(model, weights, {"samples": torch.zeros(1, 4, 64, 64)}, 1.0, 0)
