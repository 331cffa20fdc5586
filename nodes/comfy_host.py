"""Everything that touches ComfyUI itself, in one thin module (DESIGN §3, HOSTS.md).

comfy and folder_paths are imported inside the functions: the node classes (and their
INPUT_TYPES) import without ComfyUI, so CI can check the example workflows against them.
"""

from __future__ import annotations

import logging
import math
import os

import torch

from ..lafr_core.base_model import BaseModelInfo, require_sd2_epsilon
from ..lafr_core.batching import run_in_chunks
from ..lafr_core.lafr_file import LafrWeights
from ..lafr_core.latent_ops import require_unet_step, with_prompt_embeds
from ..lafr_core.schedule import LAFR_TIMESTEP

log = logging.getLogger("ComfyUI-LAFR")
LAFR_FOLDER = "lafr"
LAFR_EXTENSIONS = {".safetensors"}


def register_lafr_folder() -> None:
    """models/lafr with a .safetensors filter, keeping paths extra_model_paths.yaml added."""
    import folder_paths

    paths, _ = folder_paths.folder_names_and_paths.get(LAFR_FOLDER, ([], set()))
    default = os.path.join(folder_paths.models_dir, LAFR_FOLDER)
    if default not in paths:
        paths = [default] + list(paths)
    folder_paths.folder_names_and_paths[LAFR_FOLDER] = (paths, set(LAFR_EXTENSIONS))


def lafr_filenames(engine: str | None = None) -> list[str]:
    """The .safetensors in models/lafr; with `engine` ("lafr" or "interlcm") only that engine's
    files (a header read each, cached per file version), so LAFR Loader does not offer InterLCM
    files and the reverse. A file whose header cannot be read stays in every list: its loader
    then says what is wrong with it."""
    import folder_paths

    names = folder_paths.get_filename_list(LAFR_FOLDER)
    if engine is None:
        return names
    return [name for name in names if file_engine(name) in (engine, None)]


_ENGINES: dict[tuple[str, float], str | None] = {}


def file_engine(name: str) -> str | None:
    """"interlcm" for a converted InterLCM file in models/lafr, "lafr" for LAFR and converted
    OSEDiff files, None when the header cannot be read."""
    import folder_paths

    from ..lafr_core.model_paths import file_engine as engine_in_header

    try:
        path = folder_paths.get_full_path(LAFR_FOLDER, name)
        key = (path, os.path.getmtime(path))
    except Exception:  # noqa: BLE001 - listed anyway; loading it names the problem
        return None
    if key not in _ENGINES:
        engine = engine_in_header(path)
        _ENGINES[key] = None if engine is None else "interlcm" if engine == "interlcm" else "lafr"  # OSEDiff runs as LAFR
    return _ENGINES[key]


def lafr_full_path(name: str) -> str:
    import folder_paths

    return folder_paths.get_full_path_or_raise(LAFR_FOLDER, name)


def face_models_folder() -> str:
    """models/facedetection: where face packs keep facexlib's RetinaFace/ParseNet weights."""
    import folder_paths

    return os.path.join(folder_paths.models_dir, "facedetection")


def compute_device() -> torch.device:
    import comfy.model_management as mm

    return mm.get_torch_device()


def intermediate_device() -> torch.device:
    import comfy.model_management as mm

    return mm.intermediate_device()


def check_interrupt() -> None:
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


class Progress:
    """comfy.utils.ProgressBar over `total` items, set to the number done."""

    def __init__(self, total: int) -> None:
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, done: int) -> None:
        self.bar.update_absolute(done)


def model_info(model) -> BaseModelInfo:
    """What a ComfyUI MODEL is, in lafr_core's terms."""
    import comfy.model_sampling as ms_mod

    base = model.model
    unet_config = getattr(base.model_config, "unet_config", {}) or {}
    context = unet_config.get("context_dim")
    family = {768: "sd1.x", 1024: "sd2.x", 2048: "sdxl"}.get(context, type(base.model_config).__name__)
    if unet_config.get("adm_in_channels"):
        family = f"{family} with image/size conditioning ({type(base.model_config).__name__})"
    sampling = model.get_model_object("model_sampling")
    if isinstance(sampling, ms_mod.V_PREDICTION):
        prediction = "v_prediction"
    elif isinstance(sampling, ms_mod.EPS):
        prediction = "epsilon"
    else:
        prediction = type(sampling).__name__
    return BaseModelInfo(family, prediction, context, unet_config.get("in_channels"))


def check_model(model, node: str) -> None:
    require_sd2_epsilon(model_info(model), f"{node}: the MODEL input")


def with_conditioning(weights: LafrWeights, conditioning, node: str) -> LafrWeights:
    """The weights with the prompt of a CONDITIONING input (CLIP Text Encode output: a list of
    [tensor, options]); unchanged without one."""
    if not conditioning:
        return weights
    return with_prompt_embeds(weights, conditioning[0][0], node)


def _unknown_layers(what: str, layers: set[str], key_map: dict) -> None:
    unknown = sorted(layer for layer in layers if layer not in key_map)
    if unknown:
        raise ValueError(f"the {what} does not fit this MODEL: {len(unknown)} layers unknown, e.g. {unknown[:3]}")


def lora_patches(model, weights: LafrWeights) -> dict:
    """The file's UNet LoRA as ComfyUI weight patches (comfy.lora reads kohya names); every layer
    must map onto the MODEL, otherwise the model is not the UNet the LoRA was trained on."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    _unknown_layers("LAFR LoRA", {k.rsplit(".lora_", 1)[0] for k in weights.kohya_lora if ".lora_" in k}, key_map)
    return comfy.lora.load_lora(weights.kohya_lora, key_map, log_missing=False)


def replacement_patches(model, weights: LafrWeights) -> dict:
    """Whole-weight replacements (OSEDiff retrains conv_in) as ComfyUI "set" patches: the
    file's tensor is copied over the weight while the clone is patched, and the user's weight is
    restored on unpatch. comfy.lora reads `.set_weight` itself; `.set_bias` is ours."""
    import comfy.lora

    if not weights.unet_set:
        return {}
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    _unknown_layers("replaced layers of this file", {k.rsplit(".", 1)[0] for k in weights.unet_set}, key_map)
    patches = {}
    for key, tensor in weights.unet_set.items():
        layer, kind = key.rsplit(".", 1)
        target = key_map[layer] if kind == "set_weight" else key_map[layer].removesuffix(".weight") + ".bias"
        patches[target] = ("set", (tensor,))
    return patches


def vae_with_encoder_lora(vae, weights: LafrWeights, node: str):
    """The user's VAE, or (for a file with a VAE-encoder LoRA, as OSEDiff's) a copy of the VAE
    object whose patcher is a CLONE carrying the LoRA as patches: ComfyUI loads and patches it at
    each encode/decode, and the user's VAE (its own patcher) is never changed."""
    import copy

    import comfy.lora

    if not weights.has_vae_lora:
        return vae
    key_map = {"lora_vae." + k.removesuffix(".weight"): k for k in vae.first_stage_model.state_dict() if k.endswith(".weight")}
    layers = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in weights.vae_lora}
    try:
        _unknown_layers("VAE-encoder LoRA", layers, key_map)
    except ValueError as exc:
        raise ValueError(f"{node}: {exc} (the VAE input is not SD2.1's VAE)") from None
    patched = copy.copy(vae)
    patched.patcher = vae.patcher.clone()
    patched.patcher.add_patches(comfy.lora.load_lora(weights.vae_lora, key_map, log_missing=False), 1.0)
    if weights.latent_rule != "mode":
        log.warning("LAFR: ComfyUI's VAE encodes to the posterior mode; this file asks for a sampled latent "
                    "(%s), so the mode is used", weights.latent_rule)
    return patched


class PatchedUNet:
    """The user's MODEL cloned with the LAFR LoRA as patches; `denoise` is one step at t = 999 on
    SCALED latents. The user's MODEL is untouched: the patches live on the clone, as with
    ComfyUI's own LoraLoader.

    Nothing is loaded here. ComfyUI may unload or partly offload any model whenever another one
    loads (the VAE's encode right before our step; every load under --disable-smart-memory; low
    VRAM), and an unloaded clone runs WITHOUT its patches. So, like ComfyUI's samplers
    (sampler_helpers.prepare_sampling), every `denoise` call loads the clone with that batch's
    memory estimate right before the forward, then runs it through the patcher's wrappers and
    model_options."""

    def __init__(self, model, weights: LafrWeights, lora_strength: float, node: str) -> None:
        require_unet_step(weights, node)  # the file first: it is what the message can fix without a model
        check_model(model, node)
        self.patcher = model.clone()
        if weights.kohya_lora and lora_strength:
            self.patcher.add_patches(lora_patches(self.patcher, weights), lora_strength)
        replacements = replacement_patches(self.patcher, weights)
        if replacements:  # part of the model, not of the LoRA: not scaled by lora_strength
            self.patcher.add_patches(replacements, 1.0)
        self.latent_format = self.patcher.model.latent_format
        self.sigma = self.patcher.get_model_object("model_sampling").sigmas[LAFR_TIMESTEP].float()
        self.prompt = weights.prompt_embeds

    def load(self, batch_shape: tuple[int, ...]) -> torch.device:
        """Load (and patch) the clone for one forward of `batch_shape` latents (load_for_forward)."""
        return load_for_forward(self.patcher, batch_shape)

    def denoise(self, z_t: torch.Tensor) -> torch.Tensor:
        """Scaled x_t -> scaled x0 (apply_model of an EPS model returns x0 for x = x_t*sqrt(1+sigma^2))."""
        n = z_t.shape[0]
        device = self.load(tuple(z_t.shape))
        x = z_t.to(device) * math.sqrt(1.0 + float(self.sigma) ** 2)
        sigma = self.sigma.to(device).expand(n)
        return apply_model(self.patcher, x, sigma, {"c_crossattn": self.prompt.to(device).expand(n, -1, -1)})


def load_for_forward(patcher, batch_shape: tuple[int, ...], also: tuple = ()) -> torch.device:
    """Load (and patch) `patcher`, and the models in `also` (a ControlNet's), for one forward of
    `batch_shape` latents, right before it: ComfyUI frees what it must for the weights plus that
    batch's activations, or loads part of the weights (lowvram) and streams the rest."""
    import comfy.model_management as mm

    memory = patcher.model.memory_required(list(batch_shape))
    mm.load_models_gpu([patcher, *also], memory_required=memory, minimum_memory_required=memory)
    return patcher.load_device


def sampler_options(patcher, sigma: torch.Tensor) -> tuple[dict, dict]:
    """(model_options, transformer_options) for one call, built as samplers.py builds them: a
    copy of the patcher's options with its wrappers and callbacks merged in, so attention patches
    and APPLY_MODEL wrappers of other packs on the user's MODEL still apply."""
    import comfy.model_patcher
    import comfy.patcher_extension as ext

    options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
    transformer = options.setdefault("transformer_options", {})
    ext.merge_nested_dicts(transformer.setdefault("wrappers", {}), patcher.wrappers, copy_dict1=False)
    ext.merge_nested_dicts(transformer.setdefault("callbacks", {}), patcher.callbacks, copy_dict1=False)
    transformer["cond_or_uncond"] = [0]  # one conditioned batch, no CFG
    transformer["sigmas"] = sigma
    return options, transformer


def apply_model(patcher, x: torch.Tensor, sigma: torch.Tensor, cond: dict, control_for=None) -> torch.Tensor:
    """The loaded patcher's apply_model on k-diffusion input x (= x_t * sqrt(1 + sigma^2)) at
    `sigma` [n] with `cond` (c_crossattn, ...): its denoised output (x0 for EPS models), float32,
    through the patcher's model_function_wrapper when another pack set one.

    `control_for(x, sigma, cond, transformer_options)` -> a ControlNet's residuals for this call
    (what samplers.py puts in cond["control"]), made with the same transformer options."""
    base = patcher.model
    options, transformer = sampler_options(patcher, sigma)
    c = {**cond, "transformer_options": transformer}
    if control_for is not None:
        c["control"] = control_for(x, sigma, c, transformer)
    wrapper = options.get("model_function_wrapper")
    if wrapper is not None:
        out = wrapper(base.apply_model, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": [0]})
    else:
        out = base.apply_model(x, sigma, **c)
    return out.float()


def oom_errors() -> tuple[type[BaseException], ...]:
    import comfy.model_management as mm

    return (mm.OOM_EXCEPTION,)


def free_memory_after_oom(chunk: int) -> None:
    import comfy.model_management as mm

    mm.soft_empty_cache()
    log.warning("LAFR: out of memory, retrying %d faces per forward", chunk)


def unet_step(model, weights: LafrWeights, raw: torch.Tensor, lora_strength: float, batch_size: int, node: str) -> torch.Tensor:
    """Raw latent x_t (t = 999) -> raw x0 latent through the host's own UNet, all faces per
    forward, chunked on OOM, with progress and interruption."""
    unet = PatchedUNet(model, weights, lora_strength, node)
    z_t = unet.latent_format.process_in(raw.float())
    x0 = run_in_chunks(
        lambda chunk: unet.denoise(chunk).to(raw.device), z_t, chunk=batch_size or None, oom_errors=oom_errors(),
        before_chunk=check_interrupt, after_chunk=Progress(z_t.shape[0]), on_oom=free_memory_after_oom,
    )
    return unet.latent_format.process_out(x0)
