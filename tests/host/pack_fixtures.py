"""What every real-host test sets up the same way: this pack copied where the host looks for
extensions, full-size stand-ins (random weights, real key names) of a LAFR file, of a converted
OSEDiff-face file, and of the text encoders a released SD checkpoint holds."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def copy_pack(target: Path, parts: tuple[str, ...]) -> None:
    """Copy `parts` of the repository into `target` (a host's custom_nodes/ or extensions/ entry):
    a copy, not a link, so the host sees a plain folder and no git checkout."""
    target.mkdir(parents=True)
    for part in parts:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, target / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, target / part)


def write_stand_in_lafr(path: Path, seed: int = 0) -> None:
    """A "1+2" LAFR file for the full SD2.1-base UNet: adapter, conv LoRA and prompt embedding."""
    from diffusers import UNet2DConditionModel

    from conftest import sd21_unet_config
    from lafr_core.adapter import AlignerConfig, LatentAligner
    from lafr_core.lafr_file import save_lafr
    from lafr_core.lora import add_conv_lora, lora_state_to_kohya

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unet_config())
    add_conv_lora(unet)
    gen = torch.Generator().manual_seed(seed)
    unet.to_empty(device="cpu")
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.01, generator=gen)
    save_lafr(path, aligner=LatentAligner(AlignerConfig()), kohya_lora=lora_state_to_kohya(unet),
              prompt_embeds=torch.randn(1, 77, 1024, generator=gen))


def write_stand_in_osediff(path: Path, seed: int = 0) -> None:
    """An OSEDiff-face file for the full SD2.1-base, made by `lafr convert`'s own code from a
    checkpoint in OSEDiff's saved structure (random all-layer UNet LoRA, retrained conv_in,
    VAE-encoder LoRA). Its prompt is stored as text only, so a host must take the user's
    CONDITIONING (CLIP Text Encode) or encode `lafr.prompt` itself."""
    from osediff_fixtures import structure_checkpoint

    from lafr_core.osediff import convert

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        pkl = Path(folder) / "osediff_face.pkl"
        torch.save(structure_checkpoint(seed=seed), pkl)
        convert(pkl, path, engine="osediff-face")


def openclip_h14_text(gen: torch.Generator, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """SD2's text encoder as a released checkpoint holds it: OpenCLIP ViT-H-14's text tower under
    cond_stage_model.model. (random; LayerNorms at identity so the activations stay finite)."""
    width, layers, shapes = 1024, 24, {}
    shapes.update({"positional_embedding": (77, width), "text_projection": (width, width), "logit_scale": (),
                   "token_embedding.weight": (49408, width), "ln_final.weight": (width,), "ln_final.bias": (width,)})
    for i in range(layers):
        block = f"transformer.resblocks.{i}."
        shapes.update({block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                       block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
                       block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
                       block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
                       block + "mlp.c_fc.weight": (4 * width, width), block + "mlp.c_fc.bias": (4 * width,),
                       block + "mlp.c_proj.weight": (width, 4 * width), block + "mlp.c_proj.bias": (width,)})
    return {"cond_stage_model.model." + k: _random(k, s, gen, dtype) for k, s in shapes.items()}


def clip_l14_text(gen: torch.Generator, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """SD1's text encoder as a released checkpoint holds it: transformers' CLIPTextModel (ViT-L/14)
    under cond_stage_model.transformer. (random, LayerNorms at identity)."""
    width, layers, shapes = 768, 12, {}
    shapes.update({"embeddings.token_embedding.weight": (49408, width), "embeddings.position_embedding.weight": (77, width),
                   "final_layer_norm.weight": (width,), "final_layer_norm.bias": (width,)})
    for i in range(layers):
        layer = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes.update({layer + f"self_attn.{proj}.weight": (width, width), layer + f"self_attn.{proj}.bias": (width,)})
        shapes.update({layer + "layer_norm1.weight": (width,), layer + "layer_norm1.bias": (width,),
                       layer + "mlp.fc1.weight": (4 * width, width), layer + "mlp.fc1.bias": (4 * width,),
                       layer + "mlp.fc2.weight": (width, 4 * width), layer + "mlp.fc2.bias": (width,),
                       layer + "layer_norm2.weight": (width,), layer + "layer_norm2.bias": (width,)})
    out = {"cond_stage_model.transformer.text_model." + k: _random(k, s, gen, dtype) for k, s in shapes.items()}
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return out


def _random(name: str, shape: tuple, gen: torch.Generator, dtype) -> torch.Tensor:
    if re.search(r"(ln_\d|ln_final|layer_norm\d?|final_layer_norm)\.weight$", name):
        return torch.ones(shape, dtype=dtype)
    if name.endswith("bias") or name == "logit_scale":
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=gen) * 0.02).to(dtype)
