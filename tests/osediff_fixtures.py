"""Checkpoints in OSEDiff's exact saved structure, for the converter's tests (no real weights).

Facts reproduced from OSEDiff's code (github.com/cswry/OSEDiff osediff.py at fcc4f09c, read, not
copied; /work/shared/ENGINES.md):
* `initialize_unet`: over `unet.named_parameters()`, skipping names holding "bias" or "norm", the
  FIRST pattern of UNET_PATTERNS found in the name sends the module (name minus ".weight") to
  the encoder list when the name holds "down_blocks" or "conv_in", to the decoder list when it
  holds "up_blocks" or "conv_out", else to "others"; three `LoraConfig(r, init_lora_weights=
  "gaussian", target_modules=list)` adapters default_encoder / default_decoder / default_others;
* `initialize_vae`: for every pattern of VAE_PATTERNS (no break) a name holding it and "encoder"
  is appended, and any quant_conv (not post_quant_conv) name is appended once per pattern that
  does not send it to the first branch: duplicates are part of the saved list;
* `save_model`: eight keys; `state_dict_unet` = every UNet state entry whose name holds "lora" or
  "conv_in", `state_dict_vae` = every VAE entry holding "lora".

Two builders: `structure_checkpoint` writes random tensors straight into that structure from a
meta-device model (fast; for the error tests), `peft_models` builds it the way OSEDiff does, with
peft on full-size random models (heavy; for the equality tests, which also check that both
builders give the same keys and shapes).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "lafr_core" / "configs" / "sd21_base"
UNET_PATTERNS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
                 "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]  # fmt: skip
VAE_PATTERNS = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]
ADAPTERS = ("default_encoder", "default_decoder", "default_others")
SPECIALS = {"<|startoftext|>": 49406, "<|endoftext|>": 49407}


def config(name: str) -> dict:
    data = json.loads((CONFIG_DIR / f"{name}_config.json").read_text())
    data.pop("_class_name", None)
    return data


def meta_model(name: str) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
    with torch.device("meta"):
        return cls(**config(name))


def unet_target_lists(param_names) -> tuple[list[str], list[str], list[str]]:
    encoder, decoder, others = [], [], []
    for n in param_names:
        if "bias" in n or "norm" in n:
            continue
        for pattern in UNET_PATTERNS:
            if pattern in n and ("down_blocks" in n or "conv_in" in n):
                encoder.append(n.replace(".weight", ""))
                break
            elif pattern in n and ("up_blocks" in n or "conv_out" in n):
                decoder.append(n.replace(".weight", ""))
                break
            elif pattern in n:
                others.append(n.replace(".weight", ""))
                break
    return encoder, decoder, others


def vae_target_list(param_names) -> list[str]:
    targets = []
    for n in param_names:
        if "bias" in n or "norm" in n:
            continue
        for pattern in VAE_PATTERNS:
            if pattern in n and ("encoder" in n):
                targets.append(n.replace(".weight", ""))
            elif ("quant_conv" in n) and ("post_quant_conv" not in n):
                targets.append(n.replace(".weight", ""))
    return targets


def _lora_shapes(module: torch.nn.Module, rank: int):
    if isinstance(module, torch.nn.Linear):
        return (rank, module.in_features), (module.out_features, rank)
    return (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)


def structure_checkpoint(rank: int = 4, seed: int = 0, std: float = 0.05) -> dict:
    """OSEDiff's saved dict with random tensors, built from the meta-device SD2.1-base models."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) * std  # noqa: E731
    unet, vae = meta_model("unet"), meta_model("vae")
    lists = unet_target_lists(n for n, _ in unet.named_parameters())
    modules = dict(unet.named_modules())
    sd_unet = {}
    for adapter, names in zip(ADAPTERS, lists):
        for name in names:
            a, b = _lora_shapes(modules[name], rank)
            sd_unet[f"{name}.lora_A.{adapter}.weight"] = rand(*a)
            sd_unet[f"{name}.lora_B.{adapter}.weight"] = rand(*b)
    sd_unet["conv_in.base_layer.weight"] = rand(320, 4, 3, 3)
    sd_unet["conv_in.base_layer.bias"] = rand(320)
    vae_list = vae_target_list(n for n, _ in vae.named_parameters())
    vae_modules = dict(vae.named_modules())
    sd_vae = {}
    for name in dict.fromkeys(vae_list):
        a, b = _lora_shapes(vae_modules[name], rank)
        sd_vae[f"{name}.lora_A.default_encoder.weight"] = rand(*a)
        sd_vae[f"{name}.lora_B.default_encoder.weight"] = rand(*b)
    return {
        "vae_lora_encoder_modules": vae_list,
        "unet_lora_encoder_modules": lists[0],
        "unet_lora_decoder_modules": lists[1],
        "unet_lora_others_modules": lists[2],
        "rank_unet": rank,
        "rank_vae": rank,
        "state_dict_unet": sd_unet,
        "state_dict_vae": sd_vae,
    }


def random_full_model(name: str, seed: int, std: float = 0.02) -> torch.nn.Module:
    """A full-size SD2.1-base UNet or VAE with seeded random weights (no slow default init)."""
    model = meta_model(name)
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * std for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def _randomise_lora(model: torch.nn.Module, gen: torch.Generator, std: float) -> None:
    """peft's "gaussian" init leaves lora_B at zero: give every LoRA weight a value to test."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def peft_models(base_unet: torch.nn.Module, base_vae: torch.nn.Module, rank: int = 4, seed: int = 1, std: float = 0.05):
    """(peft UNet, peft VAE, checkpoint dict): copies of the bases with OSEDiff's adapters, random
    LoRA weights and a retrained conv_in, all adapters active, and the dict save_model writes."""
    from peft import LoraConfig

    gen = torch.Generator().manual_seed(seed)
    unet = copy.deepcopy(base_unet)
    lists = unet_target_lists(n for n, _ in unet.named_parameters())
    for adapter, names in zip(ADAPTERS, lists):
        unet.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=names), adapter_name=adapter)
    _randomise_lora(unet, gen, std)
    with torch.no_grad():  # OSEDiff trains conv_in itself (set_train: conv_in.requires_grad_(True))
        unet.conv_in.base_layer.weight.add_(torch.randn(unet.conv_in.base_layer.weight.shape, generator=gen) * std)
        unet.conv_in.base_layer.bias.add_(torch.randn(unet.conv_in.base_layer.bias.shape, generator=gen) * std)
    unet.set_adapter(list(ADAPTERS))

    vae = copy.deepcopy(base_vae)
    vae_list = vae_target_list(n for n, _ in vae.named_parameters())
    vae.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=vae_list), adapter_name="default_encoder")
    _randomise_lora(vae, gen, std)
    vae.set_adapter(["default_encoder"])
    ckpt = {
        "vae_lora_encoder_modules": vae_list,
        "unet_lora_encoder_modules": lists[0],
        "unet_lora_decoder_modules": lists[1],
        "unet_lora_others_modules": lists[2],
        "rank_unet": rank,
        "rank_vae": rank,
        "state_dict_unet": {k: v.detach().clone() for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "state_dict_vae": {k: v.detach().clone() for k, v in vae.state_dict().items() if "lora" in k},
    }
    return unet.eval(), vae.eval(), ckpt


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer with a character vocabulary (no merges): every lower-case word splits
    into letters, as the real one would split unknown words; "!" is id 0, SD2.1's pad token."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"!": 0}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.-'":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    vocab.update(SPECIALS)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"})
    )
