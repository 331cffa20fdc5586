"""The Forge path against small stand-ins of the Forge objects it touches, with Forge's semantics as
read from its source (backend/patcher/*.py, backend/modules/k_model.py, HOSTS.md): a ModelPatcher
(UNet and VAE) whose clone shares the model, add_patches recording patch sets, load_model_gpu
merging the loaded patcher's set ("lora" and "set" patches) into the shared weights (keeping a
backup), KModel.apply_model(x, sigma) scaling its input by 1/sqrt(sigma^2+1) and returning x0, a
VAE whose encode loads its patcher and samples unless a regulation is set. Also a converted
OSEDiff-face file (all-layer LoRA, conv_in replaced, VAE-encoder LoRA) against lafr_core.pipeline."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import lafr_webui.messages as messages
from lafr_core.lora import merge_kohya_lora
from lafr_core.schedule import sd21_alphas_cumprod, x0_from_eps
from lafr_core.host_chain import restore_crops
from lafr_core.lafr_file import load_lafr
from lafr_webui.forge import REPLACEMENT_NAME, ForgeModel
from lafr_webui.prompt import with_run_prompt
from webui_fakes import FakeWebui, lafr_entries, photo
from webui_models import (FakeLatentDiffusion, LdmNamedUNet, TinyVAE, build_unet, lafr_weights, pipeline_restore, tiny_sd2_config,
                          write_lafr_file, write_osediff_file)


class LoraLoader:
    """One per model, as Forge's: merges the given patch sets, restoring its backup first."""

    def __init__(self, model):
        self.model, self.backup, self.loaded = model, {}, str([])

    @torch.no_grad()
    def refresh(self, lora_patches):
        if str(list(lora_patches)) == self.loaded:
            return
        params = dict(self.model.named_parameters())
        for key, weight in self.backup.items():
            params[key].copy_(weight)
        self.backup = {}
        for (_, strength, _, _), patches in lora_patches.items():
            for key, (kind, value) in patches.items():
                self.backup.setdefault(key, params[key].detach().clone())
                if kind == "set":  # merge_lora_to_weight: weight.copy_(v[0]), strength ignored
                    params[key].copy_(value[0])
                    continue
                assert kind == "lora"
                up, down, alpha, _, _ = value
                delta = (up.flatten(1).float() @ down.flatten(1).float()).reshape(params[key].shape)
                params[key].add_(strength * alpha / down.shape[0] * delta)
        self.loaded = str(list(lora_patches))


class KModel(nn.Module):
    def __init__(self, unet, config):
        super().__init__()
        self.diffusion_model = LdmNamedUNet(unet, config)
        sigmas = ((1 - sd21_alphas_cumprod()) / sd21_alphas_cumprod()).sqrt().float()
        self.predictor = SimpleNamespace(prediction_type="epsilon", sigmas=sigmas, log_sigmas=sigmas.log())
        self.lora_loader = LoraLoader(self)
        self.calls = 0

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        self.calls += 1
        sigma = t.reshape(-1, 1, 1, 1)
        timestep = (t.log()[None, :] - self.predictor.log_sigmas[:, None]).abs().argmin(dim=0)
        eps = self.diffusion_model(x / (sigma**2 + 1) ** 0.5, timestep.float(), context=c_crossattn)
        return x - eps * sigma


class ModelPatcher:
    """backend.patcher.base.ModelPatcher: one LoraLoader per model, shared by the patcher's clones."""

    def __init__(self, model):
        self.model, self.lora_patches, self.model_options, self.load_device = model, {}, {}, torch.device("cpu")
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)

    def clone(self):
        other = ModelPatcher(self.model)
        other.lora_patches, other.model_options = dict(self.lora_patches), dict(self.model_options)
        return other

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        keys = {k for k, _ in self.model.named_parameters()}
        taken = {k: v for k, v in patches.items() if k in keys}
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = taken
        return set(taken)

    def refresh_loras(self):
        self.model.lora_loader.refresh(self.lora_patches)

    def set_model_vae_regulation(self, regulation):
        self.model_options["model_vae_regulation"] = regulation


class VAE:
    def __init__(self, first_stage_model, patcher=None):
        self.first_stage_model, self.patcher = first_stage_model, patcher or ModelPatcher(first_stage_model)

    def clone(self):
        return VAE(self.first_stage_model, self.patcher.clone())

    def encode(self, pixels):
        self.patcher.refresh_loras()  # load_models_gpu([patcher]) -> LoadedModel.model_load -> refresh_loras()
        posterior = self.first_stage_model.encode(pixels.movedim(-1, 1) * 2 - 1)
        regulation = self.patcher.model_options.get("model_vae_regulation")
        return regulation(posterior) if regulation else posterior.sample()

    def decode(self, latents):
        self.patcher.refresh_loras()
        return ((self.first_stage_model.decode(latents) + 1) / 2).clamp(0, 1).movedim(1, -1)


def backend_modules(loaded: list) -> dict[str, types.ModuleType]:
    def model_lora_keys_unet(model, key_map):
        for key in model.state_dict():
            if key.startswith("diffusion_model.") and key.endswith(".weight"):
                key_map["lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")] = key
        return key_map

    def load_lora(lora, to_load):
        patches, used = {}, set()
        for name, key in to_load.items():
            if f"{name}.lora_up.weight" in lora:
                parts = [f"{name}.lora_up.weight", f"{name}.lora_down.weight", f"{name}.alpha"]
                up, down, alpha = (lora[p] for p in parts)
                patches[key] = ("lora", (up, down, float(alpha), None, None))
                used.update(parts)
        return patches, {k: v for k, v in lora.items() if k not in used}

    def load_model_gpu(patcher):
        loaded.append(patcher)
        patcher.refresh_loras()

    backend = types.ModuleType("backend")
    backend.__path__ = []
    patcher = types.ModuleType("backend.patcher")
    patcher.__path__ = []
    lora = types.ModuleType("backend.patcher.lora")
    lora.model_lora_keys_unet, lora.load_lora = model_lora_keys_unet, load_lora
    memory = types.ModuleType("backend.memory_management")
    memory.load_model_gpu = load_model_gpu
    backend.patcher, backend.memory_management, patcher.lora = patcher, memory, lora
    return {"backend": backend, "backend.patcher": patcher, "backend.patcher.lora": lora, "backend.memory_management": memory}


@pytest.fixture(scope="module")
def parts():
    config = tiny_sd2_config()
    unet = build_unet(config)
    kmodel = KModel(unet, config)
    engine = SimpleNamespace(forge_objects=SimpleNamespace(unet=ModelPatcher(kmodel), vae=VAE(TinyVAE())), is_sd1=False,
                             is_sd2=True, is_sdxl=False, sd_checkpoint_info=SimpleNamespace(title="tiny-forge-sd21"))
    weights = lafr_weights(SimpleNamespace(unet=unet, config=config))
    return SimpleNamespace(config=config, unet=unet, kmodel=kmodel, engine=engine, weights=weights)


@pytest.fixture
def loaded(monkeypatch):
    record: list = []
    for name, module in backend_modules(record).items():
        monkeypatch.setitem(sys.modules, name, module)
    return record


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(module, before):
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


@torch.no_grad()
def test_denoise_through_a_patched_clone_equals_the_merged_reference_and_user_weights_come_back(parts, loaded):
    user = parts.engine.forge_objects.unet
    before = _snapshot(parts.kmodel)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    reference = copy.deepcopy(parts.unet)  # before the step: Forge merges into the shared weights
    merge_kohya_lora(reference, parts.weights.kohya_lora)
    eps = reference(z, 999, encoder_hidden_states=parts.weights.prompt_embeds.expand(2, -1, -1)).sample
    model = ForgeModel(parts.engine, parts.weights)

    x0 = model.denoise(z)

    assert (x0 - x0_from_eps(z, eps, 999)).abs().max() < 2e-3
    assert loaded == [model.unet] and model.unet is not user and user.lora_patches == {}
    assert _changed(parts.kmodel, before)  # Forge merged the LAFR patches into the shared weights...
    model.restore_user_weights()
    assert not _changed(parts.kmodel, before)  # ...and the user's (empty) patch set is back, bit for bit


@torch.no_grad()
def test_encode_takes_the_posterior_mode_without_touching_the_users_vae(parts, loaded):
    model = ForgeModel(parts.engine, parts.weights)
    crops = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    expected = parts.engine.forge_objects.vae.first_stage_model.encoder(crops.movedim(-1, 1) * 2 - 1).chunk(2, dim=1)[0]
    assert torch.equal(model.encode(crops), expected)
    assert parts.engine.forge_objects.vae.patcher.model_options == {}


def test_a_changed_noise_schedule_is_refused(parts, loaded, monkeypatch):
    predictor = parts.kmodel.predictor
    monkeypatch.setattr(predictor, "sigmas", predictor.sigmas * 1.5)
    model = ForgeModel(parts.engine, parts.weights)
    with pytest.raises(ValueError, match="noise schedule"):
        model.denoise(torch.zeros(1, 4, 8, 8))
    model.restore_user_weights()


def test_the_face_restorer_on_forge_restores_and_leaves_the_shared_unet_as_it_was(parts, loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(messages, "_shown", set())
    webui = FakeWebui(tmp_path / "models").install(monkeypatch)
    write_lafr_file(webui.models_path / "LAFR" / "forge.safetensors", parts.weights)
    webui.shared.sd_model = parts.engine
    webui.shared.opts.lafr_detector = "mtcnn"
    webui.load_script()
    before = _snapshot(parts.kmodel)
    parts.kmodel.calls = 0
    image = photo()

    out = lafr_entries(webui)[0].restore(image)

    assert np.abs(out[90:150, 195:255].astype(int) - image[90:150, 195:255]).mean() > 5
    assert np.array_equal(out[:40, :40], image[:40, :40])
    assert parts.kmodel.calls == 1 and len(loaded) == 1
    assert not _changed(parts.kmodel, before)
    assert math.isclose(float(parts.kmodel.predictor.sigmas[999]), 14.6146, rel_tol=1e-4)


# ----------------------------------------------------------------------------- a converted OSEDiff file


@pytest.fixture(scope="module")
def osediff(tmp_path_factory):
    """A Forge engine over the A1111 stand-in's modules (LDM-named UNet and VAE), its text encoder,
    and an OSEDiff-face file for it; `run` carries the file's prompt as that encoder gives it."""
    model = FakeLatentDiffusion(vae="ldm")
    kmodel = KModel(model.unet, model.config)
    engine = SimpleNamespace(forge_objects=SimpleNamespace(unet=ModelPatcher(kmodel), vae=VAE(model.first_stage_model)),
                             is_sd1=False, is_sd2=True, is_sdxl=False, sd_checkpoint_info=SimpleNamespace(title="tiny-forge-osediff"),
                             get_learned_conditioning=model.get_learned_conditioning)
    weights = load_lafr(write_osediff_file(tmp_path_factory.mktemp("osediff") / "osediff_face.safetensors", model))
    crops = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    run = with_run_prompt(weights, engine, "")
    return SimpleNamespace(model=model, kmodel=kmodel, engine=engine, weights=weights, run=run, crops=crops,
                           reference=pipeline_restore(model, run, crops))


def _fingerprints(osediff):
    return _snapshot(osediff.kmodel), _snapshot(osediff.model.first_stage_model)


def _unchanged(osediff, before):
    return not _changed(osediff.kmodel, before[0]) and not _changed(osediff.model.first_stage_model, before[1])


@torch.no_grad()
def test_an_osediff_file_on_forge_equals_the_pipeline_and_every_weight_comes_back(osediff, loaded):
    before = _fingerprints(osediff)
    model = ForgeModel(osediff.engine, osediff.run)
    replaced = model.unet.lora_patches[(REPLACEMENT_NAME, 1.0, 1.0, False)]
    assert {k: v[0] for k, v in replaced.items()} == {"diffusion_model.input_blocks.0.0.weight": "set",
                                                       "diffusion_model.input_blocks.0.0.bias": "set"}
    try:
        out = restore_crops(osediff.run, osediff.crops, model.host_model())
        assert not _unchanged(osediff, before)  # Forge merged the file into the shared UNet and VAE...
    finally:
        model.restore_user_weights()
    assert _unchanged(osediff, before)  # ...and the user's (empty) patch sets are back, bit for bit

    bare = dataclasses.replace(osediff.run, kohya_lora=None, unet_set=None, vae_lora=None)
    plain = ForgeModel(osediff.engine, bare)
    effect = (restore_crops(bare, osediff.crops, plain.host_model()) - osediff.reference).abs().max()
    plain.restore_user_weights()
    error = (out - osediff.reference).abs().max()
    print(f"Forge path vs pipeline: max abs {error:.2e}; the file's weights change the output by {effect:.3f}")
    assert error < 2e-3 and effect > 0.1
    assert osediff.engine.forge_objects.unet.lora_patches == {} and osediff.engine.forge_objects.vae.patcher.lora_patches == {}


@torch.no_grad()
def test_a_raising_forge_step_leaves_the_shared_weights_as_they_were(osediff, loaded):
    before = _fingerprints(osediff)
    model = ForgeModel(osediff.engine, osediff.run)

    def boom(module, args):
        raise RuntimeError("boom inside the UNet")

    handle = osediff.kmodel.diffusion_model.get_submodule("middle_block.1").register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom inside"):
            restore_crops(osediff.run, osediff.crops, model.host_model())
    finally:
        handle.remove()
        model.restore_user_weights()  # what service.restore's finally does
    assert _unchanged(osediff, before)
