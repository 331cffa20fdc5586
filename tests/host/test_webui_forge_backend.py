"""lafr_webui.forge on Forge's REAL backend (FORGE_DIR): IntegratedUNet2DConditionModel built with
Forge's operations, UnetPatcher/KModel with the predictor from a diffusers scheduler config,
backend.patcher.lora's key map and loader, memory_management.load_model_gpu merging the patches,
IntegratedAutoencoderKL behind Forge's VAE patcher. The SD2 layout at toy widths, weights from a
diffusers UNet; the engine object is a namespace with the attributes sd20.StableDiffusion2 sets
(forge_objects, is_sd2) because that class also builds the text encoder LAFR never uses.

Checks ForgeModel.denoise against a merged-LoRA diffusers reference, that the user's patcher and
the shared weights come back bit for bit, that encode takes the posterior mode, and the whole face
restorer on the fake `modules` tree with this real backend. For a converted OSEDiff file: the
all-layer LoRA (attention, feed-forward, projections, convs) and conv_in's "set" patches through
Forge's own merge_lora_to_weight, the VAE-encoder LoRA as patches on a clone of Forge's VAE
patcher, against merged-weight references, the shared UNet and VAE bit-identical afterwards. Skipped unless FORGE_DIR is set (the
python needs what backend/ imports: Forge's requirements, or sentencepiece for its bundled gguf):

    FORGE_DIR=/path/to/stable-diffusion-webui-forge python -m pytest tests/host/test_webui_forge_backend.py
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import build_unet  # noqa: E402
from ldm_fixtures import diffusers_vae_to_ldm  # noqa: E402
from webui_fakes import FakeWebui, lafr_entries, photo  # noqa: E402
from webui_models import OSEDIFF_META, lafr_weights, merged_vae_copy, osediff_sections, text_embedding, tiny_sd2_config, write_lafr_file  # noqa: E402

import lafr_webui.messages as messages  # noqa: E402
from lafr_core.ldm_keys import diffusers_to_ldm, layout_from_diffusers_config  # noqa: E402
from lafr_core.lafr_file import LafrWeights  # noqa: E402
from lafr_core.lora import apply_kohya_replacements, merge_kohya_lora  # noqa: E402
from lafr_core.schedule import x0_from_eps  # noqa: E402

FORGE_DIR = os.environ.get("FORGE_DIR")
pytestmark = pytest.mark.skipif(not FORGE_DIR, reason="set FORGE_DIR to a Forge tree whose backend/ this python can import")

# SD2's UNet in Forge's (ComfyUI-style) config, at toy widths: attention on levels 0-2, not 3
UNET_CONFIG = dict(
    in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 1, 2, 2],
    num_head_channels=16, use_spatial_transformer=True, use_linear_in_transformer=True, context_dim=1024,
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1, transformer_depth_output=[1] * 9 + [0] * 3,
)
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 32, 32, 32], layers_per_block=1,
                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32)


def forge_backend():
    for path in (FORGE_DIR, os.path.join(FORGE_DIR, "packages_3rdparty")):  # as modules_forge/initialization.py does
        if path not in sys.path:
            sys.path.insert(0, path)
    argv = sys.argv
    sys.argv = [argv[0]] + ([] if torch.cuda.is_available() else ["--always-cpu"])  # backend.args parses at import
    try:
        from backend import memory_management
    finally:
        sys.argv = argv
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL
    from backend.operations import using_forge_operations
    from backend.patcher.unet import UnetPatcher
    from backend.patcher.vae import VAE

    return SimpleNamespace(mm=memory_management, UNet=IntegratedUNet2DConditionModel, AE=IntegratedAutoencoderKL,
                           ops=using_forge_operations, UnetPatcher=UnetPatcher, VAE=VAE)


@pytest.fixture(scope="module")
def forge():
    from diffusers import AutoencoderKL, DDIMScheduler

    lib = forge_backend()
    config = {**tiny_sd2_config(), "norm_num_groups": 32}  # Forge's GroupNorm uses 32 groups, as LDM's
    unet = build_unet(config, seed=0)
    device, dtype = lib.mm.get_torch_device(), torch.float32
    with lib.ops(device=device, dtype=dtype, manual_cast_enabled=False):
        model = lib.UNet(**UNET_CONFIG)
    converted = diffusers_to_ldm(unet.state_dict(), **layout_from_diffusers_config(config))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    model.storage_dtype, model.computation_dtype = dtype, dtype
    model.load_device, model.offload_device, model.initial_device = device, device, device
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")
    patcher = lib.UnetPatcher.from_model(model=model, diffusers_scheduler=scheduler,
                                         config=SimpleNamespace(huggingface_repo="stabilityai/stable-diffusion-2-1-base"))
    torch.manual_seed(3)
    with lib.ops(device=device, dtype=dtype):  # Forge's operations allocate, they do not initialise
        ae = lib.AE(**VAE_CONFIG)
    diffusers_vae = AutoencoderKL(**VAE_CONFIG).state_dict()
    ldm_vae = {k.removeprefix("first_stage_model."): v for k, v in diffusers_vae_to_ldm(diffusers_vae, num_blocks=4).items()}
    missing, unexpected = ae.load_state_dict(ldm_vae, strict=False)  # Forge's VAE uses the LDM names
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    engine = SimpleNamespace(forge_objects=SimpleNamespace(unet=patcher, vae=lib.VAE(model=ae)), is_sd1=False, is_sd2=True,
                             is_sdxl=False, is_sd3=False, sd_checkpoint_info=SimpleNamespace(title="tiny-forge-sd21"))
    weights = lafr_weights(SimpleNamespace(unet=unet, config=config))
    return SimpleNamespace(lib=lib, unet=unet, kmodel=patcher.model, engine=engine, weights=weights, ae=ae)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(module, before):
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


@torch.no_grad()
def test_denoise_on_forges_patcher_matches_the_merged_reference_and_restores_the_weights(forge):
    from lafr_webui.forge import ForgeModel

    user = forge.engine.forge_objects.unet
    user_patches = dict(user.lora_patches)
    before = _snapshot(forge.kmodel)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    reference = copy.deepcopy(forge.unet)
    merge_kohya_lora(reference, forge.weights.kohya_lora)
    eps = reference(z, 999, encoder_hidden_states=forge.weights.prompt_embeds.expand(2, -1, -1)).sample

    model = ForgeModel(forge.engine, forge.weights)
    x0 = model.denoise(z)

    assert (x0 - x0_from_eps(z, eps, 999)).abs().max() < 2e-3
    assert model.unet is not user and user.lora_patches == user_patches
    assert _changed(forge.kmodel, before)  # Forge merged LAFR into the shared weights for the step
    model.restore_user_weights()
    assert not _changed(forge.kmodel, before)


@torch.no_grad()
def test_encode_is_the_posterior_mode(forge):
    from lafr_webui.forge import ForgeModel

    model = ForgeModel(forge.engine, forge.weights)
    crops = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    first, second = model.encode(crops), model.encode(crops)
    assert first.shape == (1, 4, 8, 8) and torch.equal(first, second)
    assert forge.engine.forge_objects.vae.patcher.model_options.get("model_vae_regulation") is None  # user's VAE as it was
    pixels = model.decode(first)
    assert pixels.shape == (1, 64, 64, 3) and 0 <= float(pixels.min()) and float(pixels.max()) <= 1


def test_face_restorer_with_the_real_forge_backend(forge, tmp_path, monkeypatch):
    monkeypatch.setattr(messages, "_shown", set())
    webui = FakeWebui(tmp_path / "models").install(monkeypatch)
    write_lafr_file(webui.models_path / "LAFR" / "forge.safetensors", forge.weights)
    webui.shared.sd_model = forge.engine
    webui.shared.opts.lafr_detector = "mtcnn"
    webui.load_script()
    before = _snapshot(forge.kmodel)
    image = photo()

    out = lafr_entries(webui)[0].restore(image)

    assert np.abs(out[90:150, 195:255].astype(int) - image[90:150, 195:255]).mean() > 5
    assert np.array_equal(out[:40, :40], image[:40, :40])
    assert not _changed(forge.kmodel, before)


@torch.no_grad()
def test_an_osediff_file_on_forges_backend_equals_the_merged_references_and_restores_the_weights(forge):
    from lafr_webui.forge import ForgeModel

    kmodel, ae = forge.kmodel, forge.ae
    sections = osediff_sections(SimpleNamespace(model=kmodel, first_stage_model=ae))
    assert any(v.ndim == 2 for v in sections["kohya_lora"].values()) and sections["unet_set"] and sections["vae_lora"]
    prompt = text_embedding(OSEDIFF_META["lafr.prompt"])
    weights = LafrWeights(aligner=None, prompt_embeds=prompt, meta=dict(OSEDIFF_META), **sections)
    before_unet, before_vae = _snapshot(kmodel), _snapshot(ae)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    reference = copy.deepcopy(forge.unet)
    apply_kohya_replacements(reference, weights.unet_set)
    merge_kohya_lora(reference, weights.kohya_lora)
    eps = reference(z, 999, encoder_hidden_states=prompt.expand(2, -1, -1)).sample
    crops = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(6))
    expected = merged_vae_copy(ae, weights.vae_lora).encode(crops.movedim(-1, 1) * 2 - 1, regulation=lambda p: p.mode())

    model = ForgeModel(forge.engine, weights)
    try:
        latent = model.encode(crops)
        x0 = model.denoise(z)
        assert _changed(kmodel, before_unet) and _changed(ae, before_vae)  # Forge merged the file for our calls...
    finally:
        model.restore_user_weights()
    assert not _changed(kmodel, before_unet) and not _changed(ae, before_vae)  # ...and merged it out again

    error = (x0 - x0_from_eps(z, eps, 999)).abs().max()
    vae_error = (latent - expected).abs().max()
    vae_effect = (ae.encode(crops.movedim(-1, 1) * 2 - 1, regulation=lambda p: p.mode()) - expected).abs().max()
    print(f"OSEDiff file on Forge's backend: x0 max abs {error:.2e}, VAE latent max abs {vae_error:.2e} "
          f"(the VAE LoRA moves it by {vae_effect:.3f})")
    assert error < 2e-3 and vae_error < 1e-4 and vae_effect > 1e-2
    assert forge.engine.forge_objects.vae.patcher.lora_patches == {}
