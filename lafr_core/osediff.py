"""OSEDiff (github.com/cswry/OSEDiff, Apache-2.0): its published .pkl -> a format-2 LAFR file.

OSEDiff is a one-step SD2.1-base restorer with LAFR's inference graph: VAE encode -> ONE UNet call
at t=999 -> x0 -> VAE decode. `osediff_face.pkl` is trained on FFHQ faces, `osediff.pkl` on
general photos. What its code says (osediff.py, `OSEDiff_gen.save_model` / `OSEDiff_test`,
checked by running it: /work/shared/ENGINES.md):

* the .pkl is a torch-saved dict of exactly eight entries: `unet_lora_{encoder,decoder,others}
  _modules` (diffusers module names, one list per peft adapter `default_encoder` /
  `default_decoder` / `default_others`), `rank_unet`, `state_dict_unet` (every tensor whose name
  holds "lora" or "conv_in": the LoRA A/B weights plus `conv_in.base_layer.{weight,bias}`, a
  RETRAINED conv_in that replaces the base one and carries its own LoRA on top),
  `vae_lora_encoder_modules` (with duplicates), `rank_vae`, `state_dict_vae` (a LoRA on the VAE
  encoder and quant_conv only; the decoder is the plain base VAE);
* `LoraConfig(r=rank)` sets no lora_alpha: peft 0.9.0 (OSEDiff's pin) defaults it to 8, so every
  delta is scaled by alpha/r = 2 for rank 4. All three UNet adapters are active at inference.

What the conversion writes (lafr_file's format 2), so every host applies it with what it already
has (kohya LoRA keys, ComfyUI "set" patches):

* each UNet LoRA layer as `lora_unet_<ldm module>.lora_down.weight` (= lora_A), `.lora_up.weight`
  (= lora_B), `.alpha` (= 8, written out: hosts assume 1.0 per rank without it);
* conv_in as a replacement `lora_unet_input_blocks_0_0.set_weight | .set_bias`, its LoRA folded in
  (W = W_pkl + alpha/r * B @ A, in float64): one patch per weight, independent of the user's base;
* the VAE LoRA as `lora_vae.<LDM VAE module>...`, attention projections as 1x1 convs;
* `lafr.engine` ("osediff-face" or "osediff"), `lafr.latent` ("mode" by default: every host's
  VAE gives the posterior mode; OSEDiff itself draws `latent_dist.sample()`, available as
  "sample" with a seed), `lafr.colour_fix` ("adain", test_osediff.py's default), `lafr.prompt`,
  `lafr.source` (with the .pkl's sha256) and `lafr.licence`;
* `prompt_embeds` only when a text encoder is at hand (`--base` diffusers folder / hub id, or
  `--prompt-embeds FILE`). Without one the file stores the prompt text only and a host encodes
  `lafr.prompt` with the SD2.1 text encoder it already holds. OSEDiff's prompt is
  "{tags}, {user prompt}," with tags from a tagging model (DAPE); we have no tagger, so the
  default tags are fixed (DEFAULT_TAGS).

The .pkl is read with `torch.load(weights_only=True)` only: a file that needs anything more
(code objects, custom classes) is refused, never unpickled. Every check runs before anything is
written, and the write is atomic (lafr_file), so a failed conversion leaves no file behind.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .lafr_file import ENGINES, VAE_LORA_PREFIX, save_lafr
from .ldm_keys import diffusers_module_to_ldm, kohya_unet_name, vae_encoder_module_to_ldm
from .sd21_modules import ModuleShape, sd21_unet_modules, sd21_vae_encoder_modules
from .torch_pickle import load_plain_pickle

SOURCE_URL = "https://github.com/cswry/OSEDiff"
LICENCE = "Apache-2.0"
PEFT_DEFAULT_ALPHA = 8.0  # peft 0.9.0 LoraConfig.lora_alpha default; OSEDiff pins peft==0.9.0 and sets none
UNET_ADAPTERS = {
    "unet_lora_encoder_modules": "default_encoder",
    "unet_lora_decoder_modules": "default_decoder",
    "unet_lora_others_modules": "default_others",
}
VAE_ADAPTER = "default_encoder"
CHECKPOINT_KEYS = (*UNET_ADAPTERS, "rank_unet", "state_dict_unet", "vae_lora_encoder_modules", "rank_vae", "state_dict_vae")
REPLACED_MODULE = "conv_in"  # save_model keeps every tensor with "conv_in" in its name: it is retrained
DEFAULT_TAGS = {"osediff-face": "face, close-up, portrait", "osediff": "photo"}  # no tagging model here
DEFAULT_COLOUR_FIX = "adain"  # test_osediff.py --align_method default


class OSEDiffCheckpointError(ValueError):
    """The .pkl cannot be converted. The message names the file and what is wrong."""


def osediff_prompt(tags: str, user_prompt: str = "") -> str:
    """OSEDiff's prompt template (test_osediff.py): "{tags}, {user prompt},"."""
    return f"{tags}, {user_prompt},"


def default_prompt(engine: str) -> str:
    return osediff_prompt(DEFAULT_TAGS[engine])


def engine_from_name(path: str | Path) -> str:
    """"osediff-face" when the file name says face (osediff_face.pkl), else "osediff" (general photos)."""
    return "osediff-face" if "face" in Path(path).name.lower() else "osediff"


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The .pkl's dict, unpickled with weights_only=True (tensors, lists, ints, dicts only)."""
    obj = load_plain_pickle(path, "OSEDiff checkpoint", OSEDiffCheckpointError,
                            "download osediff_face.pkl again from the OSEDiff repository", ".pkl")
    if not isinstance(obj, dict):
        raise OSEDiffCheckpointError(f"OSEDiff checkpoint '{path}' holds a {type(obj).__name__}, not OSEDiff's dict of 8 entries")
    return obj


# --------------------------------------------------------------------------- SD2.1-base modules


def _lora_shapes(shape: ModuleShape, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """peft's lora_A / lora_B weight shapes on this module (conv: A keeps the kernel, B is 1x1)."""
    out_features, in_features = shape.weight[:2]
    if shape.kind == "linear":
        return (rank, in_features), (out_features, rank)
    return (rank, in_features, *shape.weight[2:]), (out_features, rank, 1, 1)


# --------------------------------------------------------------------------- checking


@dataclass
class OSEDiffCheckpoint:
    """A checked .pkl: module lists (deduplicated, in order), ranks and the two state dicts."""

    unet_modules: dict[str, str]  # diffusers module -> peft adapter name
    rank_unet: int
    state_dict_unet: dict[str, torch.Tensor]
    vae_modules: list[str]
    rank_vae: int
    state_dict_vae: dict[str, torch.Tensor]

    @property
    def conv_in_has_lora(self) -> bool:
        return REPLACED_MODULE in self.unet_modules


def check_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> OSEDiffCheckpoint:
    """Every rule the conversion relies on, against the full SD2.1-base UNet and VAE encoder (layer
    shapes from lafr_core.sd21_modules, no diffusers); raises
    OSEDiffCheckpointError naming the file and the first thing that is wrong."""
    def fail(what: str) -> OSEDiffCheckpointError:
        return OSEDiffCheckpointError(f"OSEDiff checkpoint '{path}': {what}")

    unknown = sorted(str(k) for k in ckpt if k not in CHECKPOINT_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {unknown[:5]}; an OSEDiff .pkl holds exactly {list(CHECKPOINT_KEYS)}")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise fail(f"missing key(s) {missing}; an OSEDiff .pkl holds exactly {list(CHECKPOINT_KEYS)}")
    for key in ("rank_unet", "rank_vae"):
        if not isinstance(ckpt[key], int) or isinstance(ckpt[key], bool) or ckpt[key] < 1:
            raise fail(f"{key} is {ckpt[key]!r}; expected a positive integer (the LoRA rank)")
    for key in (*UNET_ADAPTERS, "vae_lora_encoder_modules"):
        if not isinstance(ckpt[key], (list, tuple)) or not all(isinstance(n, str) for n in ckpt[key]):
            raise fail(f"{key} is not a list of module names")
    for key in ("state_dict_unet", "state_dict_vae"):
        value = ckpt[key]
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
            raise fail(f"{key} is not a dict of tensors")
        bad = sorted(k for k, v in value.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all()))
        if bad:
            raise fail(f"{key}[{bad[0]!r}] is not a finite floating-point tensor")

    unet_modules = _check_unet_targets(ckpt, fail)
    _check_unet_state(ckpt["state_dict_unet"], unet_modules, ckpt["rank_unet"], fail)
    vae_modules = _check_vae_targets(ckpt["vae_lora_encoder_modules"], fail)
    expected_vae = {}
    shapes = sd21_vae_encoder_modules()
    for module in vae_modules:
        a, b = _lora_shapes(shapes[module], ckpt["rank_vae"])
        expected_vae[f"{module}.lora_A.{VAE_ADAPTER}.weight"] = a
        expected_vae[f"{module}.lora_B.{VAE_ADAPTER}.weight"] = b
    _compare_state("state_dict_vae", ckpt["state_dict_vae"], expected_vae, fail)
    return OSEDiffCheckpoint(
        unet_modules=unet_modules,
        rank_unet=ckpt["rank_unet"],
        state_dict_unet=ckpt["state_dict_unet"],
        vae_modules=vae_modules,
        rank_vae=ckpt["rank_vae"],
        state_dict_vae=ckpt["state_dict_vae"],
    )


def _check_unet_targets(ckpt: Mapping[str, Any], fail) -> dict[str, str]:
    shapes = sd21_unet_modules()
    owner: dict[str, str] = {}
    for key, adapter in UNET_ADAPTERS.items():
        for module in dict.fromkeys(ckpt[key]):
            if module not in shapes:
                raise fail(f"{key} names {module!r}, which is not a Linear or Conv2d layer of the SD2.1-base UNet")
            if module in owner:
                raise fail(f"{module!r} is in two adapters ({owner[module]} and {adapter}); OSEDiff puts each layer in one")
            owner[module] = adapter
    if not owner:
        raise fail("the three UNet module lists are empty: there is no LoRA to convert")
    return owner


def _check_unet_state(state: Mapping[str, torch.Tensor], modules: dict[str, str], rank: int, fail) -> None:
    shapes = sd21_unet_modules()
    expected: dict[str, tuple[int, ...]] = {}
    for module, adapter in modules.items():
        a, b = _lora_shapes(shapes[module], rank)
        expected[f"{module}.lora_A.{adapter}.weight"] = a
        expected[f"{module}.lora_B.{adapter}.weight"] = b
    conv_in = shapes[REPLACED_MODULE]
    # peft wraps a LoRA'd module, so its own weight becomes `<module>.base_layer.weight`
    stem = f"{REPLACED_MODULE}.base_layer" if REPLACED_MODULE in modules else REPLACED_MODULE
    expected[f"{stem}.weight"] = conv_in.weight
    expected[f"{stem}.bias"] = conv_in.bias
    _compare_state("state_dict_unet", state, expected, fail)


def _check_vae_targets(names: list[str], fail) -> list[str]:
    shapes = sd21_vae_encoder_modules()
    modules = list(dict.fromkeys(names))  # OSEDiff's list repeats names (one per matching pattern)
    for module in modules:
        if module not in shapes:
            if module.startswith("decoder.") or module == "post_quant_conv":
                raise fail(f"vae_lora_encoder_modules names {module!r}: only the VAE encoder and quant_conv can carry a LoRA here")
            raise fail(f"vae_lora_encoder_modules names {module!r}, which is not a Linear or Conv2d layer of the SD2.1-base VAE encoder")
    if not modules:
        raise fail("vae_lora_encoder_modules is empty")
    return modules


def _compare_state(what: str, state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], fail) -> None:
    unknown = sorted(k for k in state if k not in expected)
    if unknown:
        raise fail(f"{what} has {len(unknown)} tensor(s) its module lists do not explain, e.g. {unknown[0]!r}")
    missing = [k for k in expected if k not in state]
    if missing:
        raise fail(f"{what} lacks {len(missing)} tensor(s) its module lists need, e.g. {missing[0]!r}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != tuple(shape):
            raise fail(
                f"{what}[{key!r}] has shape {list(state[key].shape)}, but the SD2.1-base layer and the "
                f"recorded rank need {list(shape)}"
            )


# --------------------------------------------------------------------------- conversion


def convert_sections(ckpt: OSEDiffCheckpoint) -> tuple[dict, dict, dict]:
    """(kohya UNet LoRA, UNet replacements, VAE LoRA) in LAFR format-2 naming; tensors as stored."""
    alpha = PEFT_DEFAULT_ALPHA
    kohya: dict[str, torch.Tensor] = {}
    for module, adapter in ckpt.unet_modules.items():
        if module == REPLACED_MODULE:
            continue  # folded into the replacement below
        name = kohya_unet_name(diffusers_module_to_ldm(module))
        kohya[f"{name}.lora_down.weight"] = ckpt.state_dict_unet[f"{module}.lora_A.{adapter}.weight"]
        kohya[f"{name}.lora_up.weight"] = ckpt.state_dict_unet[f"{module}.lora_B.{adapter}.weight"]
        kohya[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)

    replaced = kohya_unet_name(diffusers_module_to_ldm(REPLACED_MODULE))
    sd = ckpt.state_dict_unet
    if ckpt.conv_in_has_lora:
        weight, bias = sd[f"{REPLACED_MODULE}.base_layer.weight"], sd[f"{REPLACED_MODULE}.base_layer.bias"]
        adapter = ckpt.unet_modules[REPLACED_MODULE]
        down = sd[f"{REPLACED_MODULE}.lora_A.{adapter}.weight"].double()
        up = sd[f"{REPLACED_MODULE}.lora_B.{adapter}.weight"].double()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        weight = (weight.double() + (alpha / ckpt.rank_unet) * delta).to(weight.dtype)
    else:
        weight, bias = sd[f"{REPLACED_MODULE}.weight"], sd[f"{REPLACED_MODULE}.bias"]
    unet_set = {f"{replaced}.set_weight": weight, f"{replaced}.set_bias": bias}

    vae: dict[str, torch.Tensor] = {}
    for module in ckpt.vae_modules:
        name = VAE_LORA_PREFIX + vae_encoder_module_to_ldm(module)
        down = ckpt.state_dict_vae[f"{module}.lora_A.{VAE_ADAPTER}.weight"]
        up = ckpt.state_dict_vae[f"{module}.lora_B.{VAE_ADAPTER}.weight"]
        if down.ndim == 2:  # diffusers' Linear attention projections are 1x1 convs in LDM
            down, up = down[:, :, None, None], up[:, :, None, None]
        vae[f"{name}.lora_down.weight"] = down
        vae[f"{name}.lora_up.weight"] = up
        vae[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return kohya, unet_set, vae


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    engine: str | None = None,
    prompt: str | None = None,
    prompt_embeds: torch.Tensor | None = None,
    latent: str = "mode",
    seed: int | None = None,
    colour_fix: str = DEFAULT_COLOUR_FIX,
) -> Path:
    """Check `src` (an OSEDiff .pkl) and write `dst` (.safetensors, LAFR format 2); returns dst.

    `engine` None: from the file name (engine_from_name). `prompt_embeds` [1, 77, 1024] of
    `prompt` (default: default_prompt(engine)), or None to store the text only. `latent`
    "mode" or "sample" (then `seed` is required). Nothing is written when anything is wrong."""
    src, dst = Path(src), Path(dst)
    engine = engine or engine_from_name(src)
    if engine not in ENGINES or engine == "lafr":
        raise ValueError(f"engine {engine!r}: an OSEDiff checkpoint is 'osediff-face' or 'osediff'")
    if latent == "sample" and seed is None:
        raise ValueError("latent 'sample' needs a seed: the draw must be repeatable")
    if dst.suffix != ".safetensors":
        raise ValueError(f"the output '{dst}' must end in .safetensors (hosts list only those)")
    ckpt = check_checkpoint(read_checkpoint(src), src)
    kohya, unet_set, vae = convert_sections(ckpt)
    if prompt_embeds is not None and tuple(prompt_embeds.shape) != (1, 77, 1024):
        raise ValueError(f"prompt_embeds has shape {list(prompt_embeds.shape)}; SD2.1's text encoder gives [1, 77, 1024]")
    meta = {
        "lafr.engine": engine,
        "lafr.prompt": prompt if prompt is not None else default_prompt(engine),
        "lafr.latent": latent,
        "lafr.colour_fix": colour_fix,
        "lafr.source": f"{SOURCE_URL} ({src.name}, sha256 {sha256_of(src)})",
        "lafr.licence": LICENCE,
    }
    if latent == "sample":
        meta["lafr.latent_seed"] = str(int(seed))
    return save_lafr(dst, kohya_lora=kohya, prompt_embeds=prompt_embeds, meta=meta, unet_set=unet_set, vae_lora=vae)

