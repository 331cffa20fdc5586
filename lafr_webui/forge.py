"""The Forge model as a lafr_core.host_chain.HostModel, through Forge's own patcher and memory manager.

Facts relied on (lllyasviel/stable-diffusion-webui-forge, 2025-06; HOSTS.md):
  * shared.sd_model is a ForgeDiffusionEngine; sd_model.forge_objects.unet is a UnetPatcher whose
    .model is a KModel. KModel.apply_model(x, sigma, c_crossattn=...) scales its input by
    1/sqrt(sigma^2 + 1), maps sigma to the nearest timestep of predictor.sigmas and returns x0.
  * LoRA goes the way Forge's own Lora extension does it: backend.patcher.lora.model_lora_keys_unet
    + load_lora turn kohya keys into weight patches, a UnetPatcher.clone() gets them with
    add_patches, and backend.memory_management.load_model_gpu(clone) merges them (LoraLoader keeps
    the unpatched weights as its backup). The user's patcher is never modified; after the step the
    user's own patch set is re-applied with its refresh_loras(), so no LAFR delta stays merged.
  * Replacements (OSEDiff's retrained conv_in) are Forge "set" patches on the same clone
    (merge_lora_to_weight copies the tensor over the weight; the LoraLoader backs the weight up
    like any patched one), added at strength 1: part of the model, not of the LoRA.
  * forge_objects.vae.encode samples the posterior unless the patcher has a "VAE regulation":
    a clone of the VAE with set_model_vae_regulation(posterior -> posterior.mode()) gives the MODE
    (also for a file that asks for a sampled latent: service says so once). VAE.encode takes
    [n, S, S, 3] 0..1 and returns the RAW latent; VAE.decode the reverse. Forge's VAE module
    (IntegratedAutoencoderKL) uses the LDM names, so a VAE-encoder LoRA (`lora_vae.<module>`)
    becomes "lora" patches on that clone's ModelPatcher, merged by the load_models_gpu each
    encode makes, and taken out again by the user's VAE patcher's refresh_loras().
`backend` is imported lazily: this module imports (and is tested) without Forge.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from lafr_core.host_chain import DEFAULT_OOM_ERRORS, HostModel
from lafr_core.lafr_file import LafrWeights
from lafr_core.schedule import comfy_sigma

PATCH_NAME = "LAFR"  # the patch set's file name in Forge's LoRA bookkeeping
REPLACEMENT_NAME = "LAFR replacements"  # strength 1 whatever the LoRA strength
SIGMA_RTOL = 1e-3  # predictor.sigmas is float32; sigma_999 = 14.6146 agrees to ~1e-6


def _mode(posterior: Any) -> torch.Tensor:
    return posterior.mode()


def lafr_patches(unet_patcher: Any, kohya: dict[str, torch.Tensor]) -> dict:
    """The LAFR LoRA as Forge weight patches, every layer matched to the UNet or an error."""
    from backend.patcher.lora import load_lora, model_lora_keys_unet

    key_map = model_lora_keys_unet(unet_patcher.model, {})
    patches, unmatched = load_lora(kohya, key_map)
    if unmatched:
        names = sorted(unmatched)
        raise ValueError(f"the LAFR LoRA does not fit this UNet: {len(names)} tensors match no layer "
                         f"(e.g. {names[:3]}). Is the loaded checkpoint SD2.1-base?")
    return patches


def _unknown(what: str, names: set[str], key_map: dict) -> None:
    unknown = sorted(name for name in names if name not in key_map)
    if unknown:
        raise ValueError(f"the {what} does not fit this model: {len(unknown)} layers match none of its weights "
                         f"(e.g. {unknown[:3]}). Is the loaded checkpoint SD2.1-base?")


def replacement_patches(unet_patcher: Any, unet_set: dict[str, torch.Tensor] | None) -> dict:
    """`lora_unet_<m>.set_weight | .set_bias` as Forge "set" patches on <m>'s weight and bias."""
    if not unet_set:
        return {}
    from backend.patcher.lora import model_lora_keys_unet

    key_map = model_lora_keys_unet(unet_patcher.model, {})
    _unknown("LAFR file's replaced layers", {key.rsplit(".", 1)[0] for key in unet_set}, key_map)
    patches = {}
    for key, tensor in unet_set.items():
        layer, kind = key.rsplit(".", 1)
        weight = key_map[layer]
        target = weight if kind == "set_weight" else weight.removesuffix(".weight") + ".bias"
        patches[target] = ("set", (tensor,))
    return patches


def vae_lora_patches(vae: Any, vae_lora: dict[str, torch.Tensor]) -> dict:
    """A VAE-encoder LoRA (`lora_vae.<LDM module>`) as Forge weight patches on the VAE's module."""
    from backend.patcher.lora import load_lora

    key_map = {"lora_vae." + k.removesuffix(".weight"): k for k in vae.first_stage_model.state_dict() if k.endswith(".weight")}
    _unknown("LAFR file's VAE-encoder LoRA", {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in vae_lora}, key_map)
    patches, unmatched = load_lora(vae_lora, key_map)
    if unmatched:
        raise ValueError(f"Forge's LoRA loader left {len(unmatched)} VAE LoRA tensors unused (e.g. {sorted(unmatched)[:3]})")
    return patches


def _add(patcher: Any, name: str, patches: dict, strength: float) -> None:
    """patcher.add_patches, every patch taken or an error."""
    taken = patcher.add_patches(filename=name, patches=patches, strength_patch=float(strength))
    skipped = sorted(set(patches) - set(taken))
    if skipped:
        raise ValueError(f"Forge did not take {len(skipped)} {name} patches (e.g. {skipped[:3]})")


class ForgeModel:
    """encode / denoise / decode on a loaded Forge engine (SD2.1-base checked by the caller)."""

    def __init__(self, sd_model: Any, weights: LafrWeights, lora_strength: float = 1.0) -> None:
        objects = sd_model.forge_objects
        self.weights = weights
        self.user_unet, self.user_vae = objects.unet, objects.vae
        self.unet = objects.unet.clone()
        if weights.kohya_lora and lora_strength:
            _add(self.unet, PATCH_NAME, lafr_patches(self.unet, weights.kohya_lora), lora_strength)
        if weights.unet_set:
            _add(self.unet, REPLACEMENT_NAME, replacement_patches(self.unet, weights.unet_set), 1.0)
        self.vae = objects.vae.clone()
        self.vae.patcher.set_model_vae_regulation(_mode)
        if weights.vae_lora:
            _add(self.vae.patcher, PATCH_NAME, vae_lora_patches(self.vae, weights.vae_lora), 1.0)
        self.device = torch.device(self.unet.load_device)
        self._patched = False
        self._vae_patched = False

    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        self._vae_patched = self._vae_patched or bool(self.weights.vae_lora)  # encode merges them (Forge loads the clone)
        return self.vae.encode(crops).float().to(self.device)

    def _sigma(self) -> torch.Tensor:
        predictor = self.unet.model.predictor
        timestep = self.weights.timestep
        sigma = predictor.sigmas[timestep].float()
        expected = comfy_sigma(timestep)
        if not math.isclose(float(sigma), expected, rel_tol=SIGMA_RTOL):
            raise ValueError(f"this model's noise schedule gives sigma {float(sigma):.4f} at t={timestep}, not SD2.1's "
                             f"{expected:.4f} (a changed schedule, e.g. zero terminal SNR?): LAFR cannot run on it")
        return sigma

    def denoise(self, z_t: torch.Tensor) -> torch.Tensor:
        from backend import memory_management

        memory_management.load_model_gpu(self.unet)  # merges the LAFR patches into the shared UNet
        self._patched = True
        n = z_t.shape[0]
        sigma = self._sigma().to(self.device)
        x = z_t.to(self.device).float() * math.sqrt(1.0 + float(sigma) ** 2)
        prompt = self.weights.prompt_embeds.to(self.device).expand(n, -1, -1)
        x0 = self.unet.model.apply_model(x, sigma.expand(n), c_crossattn=prompt, transformer_options={})
        return x0.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).float().to(self.device)

    def restore_user_weights(self) -> None:
        """Put the user's own LoRA sets (or none) back into the shared UNet and VAE weights."""
        if self._patched:
            self.user_unet.refresh_loras()
            self._patched = False
        if self._vae_patched:
            self.user_vae.patcher.refresh_loras()
            self._vae_patched = False

    def host_model(self, on_oom: Callable[[int], None] | None = None) -> HostModel:
        return HostModel(self.encode, self.denoise, self.decode, self.device, DEFAULT_OOM_ERRORS, on_oom)
