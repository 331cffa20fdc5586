"""The ComfyUI nodes on a real ComfyUI (COMFYUI_DIR), full-size SD2.1-base stand-ins.

LAFR Pruned UNet Step through the host's ModelPatcher + LoRA patches + apply_model must equal
the diffusers path (merged LoRA, PrunedUNet) and leave the user's MODEL bit-identical."""

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
