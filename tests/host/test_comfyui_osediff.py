"""An OSEDiff checkpoint converted by `lafr convert`, run by the ComfyUI nodes in a real ComfyUI
(COMFYUI_DIR) on full-size SD2.1-base stand-ins, against the reference: the diffusers UNet and
VAE with OSEDiff's peft adapters (three UNet adapters active, scale alpha/r = 2, conv_in
retrained; LoRA on the VAE encoder), as OSEDiff's own code builds them.

What must hold: the UNet step's x0 equals the peft UNet's one-step x0 (with the file's prompt and
with a CONDITIONING input), LAFR VAE encodes as the peft VAE encoder does, ComfyUI unloading
everything between calls changes nothing, and the user's MODEL and VAE are bit-identical after."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from comfy_support import import_comfy, load_pack, needs_comfyui  # noqa: E402

pytestmark = needs_comfyui


def _fingerprint(module) -> dict[str, int]:
    return {k: hash(v.detach().cpu().numpy().tobytes()) for k, v in module.state_dict().items()}


def _x0(unet, raw: torch.Tensor, prompt: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """OSEDiff's step on a raw latent: x0 = (z - sqrt(1-a) eps) / sqrt(a) at t = 999, in raw units."""
    z = raw * 0.18215
    with torch.no_grad():
        eps = unet(z, torch.tensor([999]), encoder_hidden_states=prompt.expand(raw.shape[0], -1, -1)).sample
    return (z - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5 / 0.18215


@pytest.fixture(scope="module")
def osediff(tmp_path_factory):
    """(converted weights, base UNet state dict, base VAE state dict, references)."""
    from osediff_fixtures import peft_models, random_full_model

    from lafr_core.lafr_file import load_lafr
    from lafr_core.osediff import convert
    from lafr_core.pipeline import bundled_config

    config = bundled_config("scheduler")
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = float(torch.cumprod(1 - betas, 0)[999].float())
    gen = torch.Generator().manual_seed(7)
    prompt, user_prompt = torch.randn(1, 77, 1024, generator=gen), torch.randn(1, 77, 1024, generator=gen)
    raw = torch.randn(2, 4, 32, 32, generator=gen)  # 256 px faces: the equality does not depend on size
    pixels = torch.rand(1, 3, 64, 64, generator=gen)

    base_unet, base_vae = random_full_model("unet", seed=0), random_full_model("vae", seed=1)
    peft_unet, peft_vae, ckpt = peft_models(base_unet, base_vae)
    folder = tmp_path_factory.mktemp("osediff")
    torch.save(ckpt, folder / "osediff_face.pkl")
    weights = load_lafr(convert(folder / "osediff_face.pkl", folder / "osediff_face.safetensors", prompt_embeds=prompt))
    with torch.no_grad():
        refs = {
            "x0": _x0(peft_unet, raw, prompt, alpha_bar),
            "x0_user_prompt": _x0(peft_unet, raw, user_prompt, alpha_bar),
            "latent": peft_vae.encode(pixels * 2 - 1).latent_dist.mode(),
        }
    del peft_unet, peft_vae, ckpt
    gc.collect()
    # on disk, not in memory: ComfyUI's patching of an all-layer LoRA keeps a backup of every
    # weight beside the patched one, so the test holds nothing else full-size meanwhile
    from safetensors.torch import save_file

    save_file(base_unet.state_dict(), str(folder / "unet.safetensors"))
    save_file(base_vae.state_dict(), str(folder / "vae.safetensors"))
    del base_unet, base_vae
    gc.collect()
    return weights, folder / "unet.safetensors", folder / "vae.safetensors", refs, raw, pixels, user_prompt


def test_osediff_unet_step_equals_the_peft_reference_also_under_forced_unloads(osediff, monkeypatch):
    comfy_sd = import_comfy()
    pack = load_pack()
    import comfy.model_management as mm

    from safetensors.torch import load_file

    weights, unet_file, _, refs, raw, _, user_prompt = osediff
    model = comfy_sd.load_diffusion_model_state_dict(load_file(str(unet_file)))
    gc.collect()
    before = _fingerprint(model.model.diffusion_model)
    node = pack.NODE_CLASS_MAPPINGS["LAFRPrunedUNetStep"]()

    (out,) = node.step(model, weights, {"samples": raw}, 1.0, 0)
    assert (out["samples"] - refs["x0"]).abs().max() < 2e-3

    frees = []
    interrupted = mm.throw_exception_if_processing_interrupted

    def free_then_check():
        frees.append(1)
        mm.free_memory(1e30, mm.get_torch_device())
        interrupted()

    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", free_then_check)
    conditioning = [[user_prompt, {"pooled_output": None}]]
    (out,) = node.step(model, weights, {"samples": raw}, 1.0, 1, conditioning=conditioning)
    assert len(frees) == 2
    assert (out["samples"] - refs["x0_user_prompt"]).abs().max() < 2e-3
    assert weights.prompt_embeds.shape == (1, 77, 1024) and not torch.equal(weights.prompt_embeds, user_prompt)  # cache untouched

    mm.load_models_gpu([model])
    assert not model.patches and _fingerprint(model.model.diffusion_model) == before, "the user's MODEL was modified"
    del model
    mm.unload_all_models()
    gc.collect()


def test_lafr_vae_encodes_with_the_encoder_lora_and_leaves_the_users_vae(osediff):
    import_comfy()
    pack = load_pack()
    import comfy.model_management as mm
    import comfy.sd

    from safetensors.torch import load_file

    weights, _, vae_file, refs, _, pixels, _ = osediff
    vae = comfy.sd.VAE(sd=load_file(str(vae_file)))
    before = _fingerprint(vae.first_stage_model)
    (patched,) = pack.NODE_CLASS_MAPPINGS["LAFRVAE"]().patch(vae, weights)
    assert patched is not vae and patched.patcher is not vae.patcher
    image = pixels.movedim(1, -1)
    error = (patched.encode(image) - refs["latent"]).abs().max()
    plain = vae.encode(image)  # the user's VAE, loaded after the clone: its own weights again
    lora_effect = (plain - refs["latent"]).abs().max()
    print(f"VAE encoder LoRA: error {error:.3g}, effect of the LoRA {lora_effect:.3g}")
    assert lora_effect > 1e-3 and error < lora_effect / 50
    mm.load_models_gpu([vae.patcher])
    assert not vae.patcher.patches and _fingerprint(vae.first_stage_model) == before, "the user's VAE was modified"
    mm.unload_all_models()


def test_a_file_without_prompt_embedding_asks_for_conditioning(osediff, tmp_path):
    import dataclasses

    import_comfy()
    pack = load_pack()
    weights = dataclasses.replace(osediff[0], prompt_embeds=None)
    node = pack.NODE_CLASS_MAPPINGS["LAFRPrunedUNetStep"]()
    with pytest.raises(ValueError, match="stores its prompt as text only.*CLIP Text Encode.*'conditioning' input"):
        node.step(None, weights, {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, 0)
    with pytest.raises(ValueError, match=r"the conditioning is \(1, 77, 768\), not SD2.x text embeddings"):
        node.step(None, weights, {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, 0, conditioning=[[torch.zeros(1, 77, 768), {}]])
