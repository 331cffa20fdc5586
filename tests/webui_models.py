"""A tiny A1111-style SD2 model for the webui tests: a diffusers UNet (SD2.1 layout, toy widths,
1024-wide cross-attention so a real LAFR file fits) whose modules also sit in a module tree named
like A1111's openaimodel.UNetModel, an LDM-style VAE with a posterior, and a LatentDiffusion-like
wrapper with apply_model / first_stage_model / decode_first_stage / get_learned_conditioning and
the webui's model flags. Plus a LAFR LoRA (peft on a copy, exported to kohya) and LafrWeights / a
LAFR file for it, and an OSEDiff-style converted file (LAFR format 2): LoRA on every Conv2d and
attention/feed-forward/projection Linear, conv_in replaced, a LoRA on the VAE encoder."""

from __future__ import annotations

import copy
import zlib
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from conftest import build_unet, tiny_unet_config
from lafr_core.adapter import AlignerConfig, LatentAligner
from lafr_core.lafr_file import VAE_LORA_PREFIX, LafrWeights, save_lafr
from lafr_core.ldm_keys import kohya_unet_name, layout_from_diffusers_config, unet_key_map, vae_encoder_key_map
from lafr_core.lora import add_conv_lora, kohya_lora_layers, lora_state_to_kohya

CONTEXT = 1024


def tiny_sd2_config(context: int = CONTEXT) -> dict:
    config = tiny_unet_config()
    config["cross_attention_dim"] = context
    return config


class LdmNamedUNet(nn.Module):
    """The diffusers UNet's own modules, registered under their LDM paths (input_blocks.1.0.in_layers.2,
    ...), so named_modules()/state_dict() look like A1111's UNet while forward runs diffusers."""

    def __init__(self, unet: nn.Module, config: dict):
        super().__init__()
        object.__setattr__(self, "_unet", unet)  # not a child: every module appears once, by its LDM name
        self.in_channels = config["in_channels"]
        register_renamed(self, unet, unet_key_map(**layout_from_diffusers_config(config)))

    def forward(self, x, timesteps, context=None):
        return self._unet(x, timesteps, encoder_hidden_states=context).sample


def register_renamed(root: nn.Module, source: nn.Module, names: dict[str, str]) -> None:
    """Put source's modules into root under new paths ({source path: new path})."""
    for old, new in names.items():
        try:
            module = source.get_submodule(old)
        except AttributeError:  # conv_shortcut exists only where channels change
            continue
        parent = root
        *path, leaf = new.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)


# SD2.1's VAE layout (4 levels, 2 resnets each: what ldm_keys' VAE encoder map knows) at toy widths
TINY_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 8, 8), layers_per_block=2,
                       down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=2)


def build_vae(seed: int = 5) -> nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE_CONFIG).eval()


class LdmNamedVAE(nn.Module):
    """A diffusers AutoencoderKL whose encoder and quant_conv sit under their LDM paths
    (encoder.down.0.block.0.conv1, encoder.mid.attn_1.q, ...: A1111's and Forge's first_stage_model
    names), decoder and post_quant_conv under their own; encode gives the posterior (mode(),
    sample()), decode -1..1, as ldm's AutoencoderKL. The mid attention stays diffusers' Linear
    (LDM has 1x1 convs there: tests/host/test_webui_ldm.py runs those)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        object.__setattr__(self, "_vae", vae)
        register_renamed(self, vae, {**vae_encoder_key_map(), "decoder": "decoder", "post_quant_conv": "post_quant_conv"})

    def encode(self, x):
        return self._vae.encode(x).latent_dist

    def decode(self, z):
        return self._vae.decode(z).sample


class Posterior:
    def __init__(self, moments: torch.Tensor):
        self.mean, self.logvar = moments.chunk(2, dim=1)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self) -> torch.Tensor:
        return self.mean + torch.randn_like(self.mean) * (0.5 * self.logvar).exp()


class TinyVAE(nn.Module):
    """LDM AutoencoderKL's interface: encode(x in -1..1) -> posterior, decode(z) -> -1..1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.encoder = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.decoder = nn.ConvTranspose2d(4, 3, kernel_size=8, stride=8)
        self.encode_calls = 0

    def encode(self, x):
        self.encode_calls += 1
        return Posterior(self.encoder(x))

    def decode(self, z):
        return torch.tanh(self.decoder(z))


class FakeLatentDiffusion(nn.Module):
    """What A1111's shared.sd_model offers LAFR: flags, parameterization, model.diffusion_model,
    first_stage_model, scale_factor, apply_model(x, t, cond) returning eps, decode_first_stage."""

    def __init__(self, family: str = "sd2", parameterization: str = "eps", context: int = CONTEXT, seed: int = 0,
                 vae: str = "tiny"):
        super().__init__()
        self.config = tiny_sd2_config(context)
        self.unet = build_unet(self.config, seed=seed)  # kept for references; its modules are shared
        self.model = nn.Module()
        self.model.diffusion_model = LdmNamedUNet(self.unet, self.config)
        self.first_stage_model = TinyVAE() if vae == "tiny" else LdmNamedVAE(build_vae())
        self.scale_factor = 0.18215
        self.parameterization = parameterization
        self.is_sd1, self.is_sd2, self.is_sdxl = family == "sd1", family == "sd2", family == "sdxl"
        self.sd_checkpoint_info = SimpleNamespace(title=f"tiny-{family}-{parameterization}.safetensors")
        self.apply_calls = 0
        self.text_calls: list[list[str]] = []

    def get_learned_conditioning(self, texts):
        """A stand-in text encoder: [len(texts), 77, context], a function of each text only."""
        self.text_calls.append(list(texts))
        return torch.cat([text_embedding(text, self.config["cross_attention_dim"]) for text in texts])

    def apply_model(self, x_noisy, t, cond):
        self.apply_calls += 1
        context = torch.cat(cond["c_crossattn"], 1)
        return self.model.diffusion_model(x_noisy, t, context=context)

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)


def lafr_lora(unet: nn.Module, seed: int = 1, std: float = 0.05) -> dict[str, torch.Tensor]:
    """A rank-4 LAFR LoRA for this UNet with non-zero lora_up (a fresh one would be a no-op)."""
    work = add_conv_lora(copy.deepcopy(unet))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in work.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return lora_state_to_kohya(work)


def lafr_weights(sd_model: FakeLatentDiffusion, with_adapter: bool = True, seed: int = 1) -> LafrWeights:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return LafrWeights(
        aligner=LatentAligner(AlignerConfig()).eval() if with_adapter else None,
        kohya_lora=lafr_lora(sd_model.unet, seed),
        prompt_embeds=torch.randn(1, 77, sd_model.config["cross_attention_dim"], generator=gen),
        meta={},
    )


def write_lafr_file(path: Path, weights: LafrWeights) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_lafr(path, aligner=weights.aligner, kohya_lora=weights.kohya_lora, prompt_embeds=weights.prompt_embeds)


def text_embedding(text: str, context: int = CONTEXT) -> torch.Tensor:
    """What the stand-in text encoders give for `text`: [1, 77, context], seeded by the text."""
    return torch.randn(1, 77, context, generator=torch.Generator().manual_seed(zlib.crc32(text.encode())))


# --------------------------------------------------------------------------- OSEDiff-style file

OSEDIFF_META = {
    "lafr.engine": "osediff-face",
    "lafr.latent": "sample",  # OSEDiff draws from the posterior; the webuis use the mode
    "lafr.latent_seed": "0",
    "lafr.colour_fix": "adain",
    "lafr.prompt": "face, close-up, portrait, ,",
    "lafr.source": "tests (random OSEDiff-style weights)",
    "lafr.licence": "Apache-2.0",
}
OSEDIFF_RANK, OSEDIFF_ALPHA = 4, 8.0  # peft's default alpha with OSEDiff's rank: scale 2
CONV_IN = "input_blocks.0.0"


def _weighted(module: nn.Module) -> bool:
    """A Conv2d or Linear by its weight (Forge's Linear is no nn.Linear subclass)."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.ndim in (2, 4)


def _lora_pair(module: nn.Module, gen: torch.Generator, std: float, ldm_vae: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for a module; VAE Linear layers in LDM's 1x1-conv shapes, as the converter writes them."""
    r, (out, inp, *kernel) = OSEDIFF_RANK, module.weight.shape
    if not kernel and ldm_vae:
        kernel = [1, 1]
    down, up = (r, inp, *kernel), (out, r, *([1, 1] if kernel else []))
    return torch.randn(down, generator=gen) * std, torch.randn(up, generator=gen) * std


def osediff_sections(sd_model: FakeLatentDiffusion, seed: int = 11, std: float = 0.05) -> dict[str, dict[str, torch.Tensor]]:
    """kohya_lora (every Conv2d and Linear of the UNet but the time-embedding path and conv_in),
    unet_set (conv_in replaced) and vae_lora (every Conv2d/Linear of the encoder and quant_conv)."""
    gen = torch.Generator().manual_seed(seed)
    kohya, unet_set, vae_lora = {}, {}, {}
    for name, module in sd_model.model.diffusion_model.named_modules():
        if not _weighted(module) or "time_embed" in name or "emb_layers" in name:
            continue
        key = kohya_unet_name(name)
        if name == CONV_IN:
            unet_set[f"{key}.set_weight"] = module.weight.detach() + torch.randn(module.weight.shape, generator=gen) * std
            unet_set[f"{key}.set_bias"] = module.bias.detach() + torch.randn(module.bias.shape, generator=gen) * std
            continue
        down, up = _lora_pair(module, gen, std)
        kohya.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(OSEDIFF_ALPHA)})
    for name, module in sd_model.first_stage_model.named_modules():
        if _weighted(module) and name.startswith(("encoder.", "quant_conv")):
            down, up = _lora_pair(module, gen, std, ldm_vae=True)
            key = VAE_LORA_PREFIX + name
            vae_lora.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(OSEDIFF_ALPHA)})
    return {"kohya_lora": kohya, "unet_set": unet_set, "vae_lora": vae_lora}


def merged_vae_copy(vae: nn.Module, vae_lora: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of an LDM-named VAE with a file's VAE-encoder LoRA merged into its weights
    (W += alpha/r * up @ down, reshaped to W): the merged-weight reference of the hooks/patches."""
    merged = copy.deepcopy(vae)
    renamed = {"lora_unet_" + k.removeprefix(VAE_LORA_PREFIX): v for k, v in vae_lora.items()}  # kohya grouping
    with torch.no_grad():
        for name, (down, up, scale) in kohya_lora_layers(renamed).items():
            weight = merged.get_submodule(name.removeprefix("lora_unet_")).weight
            weight += scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    return merged


def write_osediff_file(path: Path, sd_model: FakeLatentDiffusion, meta: dict[str, str] | None = None, **sections) -> Path:
    """A converted OSEDiff-face file (format 2, no prompt embedding) for this model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_lafr(path, meta={**OSEDIFF_META, **(meta or {})}, **(sections or osediff_sections(sd_model)))


def pipeline_restore(sd_model: FakeLatentDiffusion, weights: LafrWeights, crops: torch.Tensor) -> torch.Tensor:
    """The reference: lafr_core.pipeline with the file merged into COPIES of the model's diffusers
    UNet and VAE (replacements, LoRA, VAE-encoder LoRA), restoring aligned crops [n, S, S, 3] with
    the prompt `weights` carries. Posterior mode, as the webuis (and ComfyUI) encode."""
    from lafr_core.host_chain import restore_crops
    from lafr_core.pipeline import LafrPipeline

    pipe = LafrPipeline.from_modules(copy.deepcopy(sd_model.unet), copy.deepcopy(sd_model.first_stage_model._vae), weights,
                                     device="cpu", dtype=torch.float32)
    pipe.latent_rule = "mode"
    return restore_crops(weights, crops, pipe.host_model())
