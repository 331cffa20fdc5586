"""Trainer configuration: dataclasses with the paper's defaults, YAML files and CLI flags.

Precedence: dataclass defaults < the run's saved config.yaml (when resuming) < --config YAML
< command-line flags. The resolved config is written to <output_dir>/config.yaml next to the
checkpoints, so a run can be resumed or exported from its folder alone, and `--resume` refuses a
config that would silently change what is being trained (see `RESUMABLE_CHANGES`).

Every dataclass field carries its help text in `metadata["help"]`; the CLI flags are generated
from the fields (flat names: `--lr`, `--codebook_size`, `--jpeg_quality 30 95`), so the YAML and
the flags can never drift apart.
"""

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from lafr_core.adapter import AlignerConfig
from lafr_core.degrade import DegradeConfig

STAGES = ("stage1", "stage2")
MIXED_PRECISION = ("no", "fp16", "bf16")
ALIGN_MODES = ("auto", "detect", "resize")
VAL_DEGRADATIONS = ("x4", "train")
CONFIG_NAME = "config.yaml"
DEFAULT_BASE = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_CLIP = "h94/IP-Adapter"


class ConfigError(ValueError):
    """The configuration cannot work; the message names the setting and what to change."""


def _f(default, help: str):
    """A field with help text; tuples/lists get a default_factory."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    data: tuple[str, ...] = _f((), "folder(s) of HQ face images (searched recursively)")
    resolution: int = _f(512, "training resolution in pixels (SD2.1-base: 512; a multiple of 8)")
    align: str = _f(
        "auto",
        "auto: square images are taken as aligned faces, others are detected and aligned once "
        "(cached); detect: align every image; resize: centre-crop and resize, never detect",
    )
    variants: int = _f(8, "seeded degradations (with flip/crop) per image; their latents are cached")
    latent_cache: bool | None = _f(
        None,
        "cache VAE latents of `variants` degradations per image on disk (default: on for stage 1; off for stage 2, "
        "which degrades on the fly: a fresh degradation per image and epoch, seeded by (seed, image, epoch))",
    )
    cache_dir: str | None = _f(None, "latent/alignment cache folder (default: <output_dir>/cache)")
    num_workers: int = _f(2, "data-loader worker processes")
    flip_prob: float = _f(0.5, "probability of a horizontal flip per variant")
    crop_scale: tuple[float, float] = _f((0.9, 1.0), "random square crop side, as a fraction of the image, then resized back")
    val_images: int = _f(4, "images in the validation grid (the first ones of the data set)")
    val_degradation: str = _f("x4", "validation LQ: x4 (fixed CelebA-Test-like) or train (the training degradation)")
    val_identity: str = _f("auto", "identity model of stage 2's validation: auto (ArcFace ONNX if found, else dlib), dlib, arcface, none")


@dataclass
class RunConfig:
    output_dir: str = _f("", "run folder: config.yaml, checkpoints/, validation/, logs/, the LAFR file")
    base_model: str = _f(DEFAULT_BASE, "SD2.1-base: a single .safetensors/.ckpt, a diffusers folder or a hub id")
    seed: int = _f(0, "seed of data order, degradations, init and dead-code re-seeding")
    mixed_precision: str = _f("no", "no | fp16 | bf16 (frozen models run in this dtype, trainables stay fp32)")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    gradient_checkpointing: bool = _f(False, "recompute UNet/VAE-decoder activations in backward (less memory, slower)")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)")
    lr_warmup_steps: int = _f(0, "linear learning-rate warm-up, in optimizer steps; constant afterwards")
    max_steps: int | None = _f(None, "stop after this many optimizer steps (overrides epochs/steps when smaller)")
    checkpoint_every: int = _f(500, "optimizer steps between checkpoints")
    keep_checkpoints: int = _f(3, "checkpoints kept (older ones are deleted)")
    resume: str | None = _f(None, "'latest' or a checkpoint folder: continue with identical optimizer/RNG/data state")
    log_every: int = _f(10, "optimizer steps between log lines (TensorBoard, progress bar postfix)")
    validate_every: int = _f(500, "optimizer steps between validation grids (0: only at the end)")
    tensorboard: bool = _f(False, "write TensorBoard logs to <output_dir>/logs (needs the tensorboard package)")


@dataclass
class Stage1Config:
    lr: float = _f(1e-4, "adapter learning rate (paper: 1e-4)")
    batch_size: int = _f(16, "batch size per process (paper: 16)")
    epochs: int = _f(100, "epochs over the images (paper: 100)")
    weight_decay: float = _f(0.0, "AdamW weight decay (0: it would shrink the codebook)")
    reseed_every: int = _f(100, "optimizer steps between dead-code re-seeding (0 disables)")


@dataclass
class Stage2Config:
    adapter: str = _f("", "stage-1 LAFR file (its adapter is frozen and carried into the output)")
    lr: float = _f(5e-5, "LoRA learning rate (paper: 5e-5)")
    batch_size: int = _f(2, "batch size per process (paper: 2)")
    steps: int = _f(17000, "optimizer steps (paper: 17k)")
    weight_decay: float = _f(1e-2, "AdamW weight decay on the LoRA")
    lora_rank: int = _f(4, "rank of the conv LoRA (paper: 4)")
    lora_alpha: float = _f(4.0, "LoRA alpha (scale alpha/rank)")
    prompt: str = _f("face, high quality", "the fixed prompt (paper: 'face, high quality')")
    prompt_embeds: str | None = _f(None, "precomputed prompt embedding (.safetensors with 'prompt_embeds' [1,77,1024], e.g. a LAFR file)")
    text_encoder: str | None = _f(None, "SD2.1 diffusers folder or hub id with text_encoder/ and tokenizer/ (default: base_model, or the hub id for a single file)")
    lambda_mse: float = _f(1.0, "weight of the pixel MSE")
    lambda_lpips: float = _f(2.0, "weight of LPIPS (paper: 2)")
    lambda_id: float = _f(1.0, "weight of the identity loss 1 - cos(CLIP image embeddings); 0 skips the encoder")
    lambda_fs: float = _f(1.0, "weight of the facial-structure loss 1 - cos(3DMM features); 0 skips the regressor")
    lpips_net: str = _f("vgg", "LPIPS trunk: vgg or alex")
    lpips_backbone: str | None = _f(None, "local torchvision weights of the LPIPS trunk (default: the torch hub cache file)")
    clip_encoder: str = _f(DEFAULT_CLIP, "CLIPVisionModelWithProjection: local folder or hub id (IP-Adapter's image encoder)")
    clip_subfolder: str = _f("models/image_encoder", "subfolder of clip_encoder holding config.json and the weights ('' for none)")
    fs_checkpoint: str | None = _f(None, "D3DFR-style 3DMM regressor (ResNet-50, 257-d head), a local .pth/.safetensors")


ADAPTER_HELP = {
    "latent_channels": "latent channels of the VAE (SD: 4)",
    "hidden_channels": "adapter conv width",
    "codebook_size": "codebook entries (paper: 1024)",
    "codebook_dim": "codebook vector size (paper: 256)",
    "extractor_blocks": "residual blocks of the feature extractor",
    "mapping_blocks": "residual blocks of the mapping net",
    "norm_groups": "GroupNorm groups of the adapter",
    "commitment_weight": "VQ commitment loss weight (the codebook loss has weight 1)",
}


@dataclass
class TrainConfig:
    """Everything a run needs; `stage` selects which of stage1/stage2 applies."""

    stage: str = "stage1"
    data: DataConfig = field(default_factory=DataConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    adapter: AlignerConfig = field(default_factory=AlignerConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    @property
    def uses_latent_cache(self) -> bool:
        return self.data.latent_cache if self.data.latent_cache is not None else self.stage == "stage1"

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else self.output_dir / "cache"

    def to_dict(self) -> dict:
        return _plain(self)

    def validate(self, check_inputs: bool = True) -> "TrainConfig":
        """Raise ConfigError naming the first setting that cannot work. check_inputs=False
        leaves the data folders and the adapter file to train/preflight.py, which lists every
        missing input at once."""
        _check(self.stage in STAGES, f"stage must be one of {STAGES}, got {self.stage!r}")
        d, r = self.data, self.run
        if check_inputs:
            _check(bool(d.data), "no data: pass --data FOLDER [FOLDER ...] (folders of HQ face images)")
            for folder in d.data:
                _check(Path(folder).is_dir(), f"data folder {folder!r} does not exist or is not a folder")
        _check(bool(r.output_dir), "no output folder: pass --output_dir RUN_FOLDER")
        _check(d.resolution >= 64 and d.resolution % 8 == 0, f"resolution must be a multiple of 8 and >= 64, got {d.resolution}")
        _check(d.align in ALIGN_MODES, f"align must be one of {ALIGN_MODES}, got {d.align!r}")
        _check(d.val_degradation in VAL_DEGRADATIONS, f"val_degradation must be one of {VAL_DEGRADATIONS}, got {d.val_degradation!r}")
        _check(d.variants >= 1, f"variants must be >= 1, got {d.variants}")
        _check(d.num_workers >= 0, f"num_workers must be >= 0, got {d.num_workers}")
        _check(0.0 <= d.flip_prob <= 1.0, f"flip_prob must be in [0, 1], got {d.flip_prob}")
        lo, hi = d.crop_scale
        _check(0.1 <= lo <= hi <= 1.0, f"crop_scale must be (lo, hi) with 0.1 <= lo <= hi <= 1, got {d.crop_scale}")
        _check(d.val_images >= 0, f"val_images must be >= 0, got {d.val_images}")
        _check(d.val_identity in ("auto", "dlib", "arcface", "none"), f"val_identity must be auto, dlib, arcface or none, got {d.val_identity!r}")
        _check(r.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}, got {r.mixed_precision!r}")
        for name in ("gradient_accumulation_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            _check(getattr(r, name) >= 1, f"{name} must be >= 1, got {getattr(r, name)}")
        _check(r.validate_every >= 0, f"validate_every must be >= 0, got {r.validate_every}")
        _check(r.max_steps is None or r.max_steps >= 1, f"max_steps must be >= 1, got {r.max_steps}")
        _check(r.max_grad_norm >= 0 and r.lr_warmup_steps >= 0, "max_grad_norm and lr_warmup_steps must be >= 0")
        if self.stage == "stage1":
            s = self.stage1
            _check(s.lr > 0 and s.batch_size >= 1 and s.epochs >= 1, f"stage1 needs lr > 0, batch_size >= 1, epochs >= 1; got {s}")
            _check(s.reseed_every >= 0, f"reseed_every must be >= 0, got {s.reseed_every}")
        else:
            s = self.stage2
            if check_inputs:
                _check(bool(s.adapter), "stage2 needs the stage-1 file: pass --adapter RUN1/lafr_stage1.safetensors")
                _check(Path(s.adapter).is_file(), f"stage-1 adapter file {s.adapter!r} does not exist")
            _check(s.lr > 0 and s.batch_size >= 1 and s.steps >= 1, f"stage2 needs lr > 0, batch_size >= 1, steps >= 1; got lr={s.lr}, batch_size={s.batch_size}, steps={s.steps}")
            _check(s.lora_rank >= 1 and s.lora_alpha > 0, f"lora_rank must be >= 1 and lora_alpha > 0, got {s.lora_rank}, {s.lora_alpha}")
            for name in ("lambda_mse", "lambda_lpips", "lambda_id", "lambda_fs"):
                _check(getattr(s, name) >= 0, f"{name} must be >= 0, got {getattr(s, name)}")
            _check(s.lpips_net in ("vgg", "alex"), f"lpips_net must be vgg or alex, got {s.lpips_net!r}")
        return self


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# --------------------------------------------------------------------------- dict <-> dataclass


def _plain(obj):
    """Dataclass -> YAML-safe dict (tuples become lists)."""
    if is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    return obj


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _base_type(tp):
    """`int | None` -> int; other types unchanged."""
    if _is_optional(tp):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _coerce(value, tp, where: str):
    """A YAML/CLI value -> the field's type, with an error naming the setting."""
    if value is None:
        if _is_optional(tp):
            return None
        raise ConfigError(f"{where} cannot be empty (null)")
    tp = _base_type(tp)
    origin = typing.get_origin(tp)
    try:
        if origin is tuple:
            args = typing.get_args(tp)
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], where) for v in items)
            if len(items) != len(args):
                raise ConfigError(f"{where} needs {len(args)} values, got {items!r}")
            return tuple(_coerce(v, a, where) for v, a in zip(items, args))
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if is_dataclass(tp):
            kwargs[name] = from_dict(tp, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, tp, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as err:  # a dataclass's own __post_init__ check
        raise ConfigError(f"{where}: {err}") from None


def merge(config: TrainConfig, overrides: dict) -> TrainConfig:
    """A new config with `overrides` ({section: {name: value}} or top-level values) applied."""
    data = config.to_dict()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return from_dict(TrainConfig, data)


# --------------------------------------------------------------------------- YAML


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def save_yaml(config: TrainConfig, path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- resume consistency

# What may differ between a run's saved config and the config of its resumption: how long to
# train, how often to log/save, and the machine-side knobs. Everything else changes what is
# trained, so a resumed run with it changed would not be the run it claims to continue.
RESUMABLE_CHANGES = {
    ("run", "resume"), ("run", "max_steps"), ("run", "checkpoint_every"), ("run", "keep_checkpoints"),
    ("run", "log_every"), ("run", "validate_every"), ("run", "tensorboard"), ("run", "output_dir"),
    ("data", "num_workers"), ("data", "cache_dir"), ("data", "data"), ("data", "val_identity"),
    ("stage1", "epochs"), ("stage2", "steps"), ("stage2", "adapter"), ("stage2", "prompt_embeds"),
    ("stage2", "text_encoder"), ("stage2", "clip_encoder"), ("stage2", "fs_checkpoint"), ("stage2", "lpips_backbone"),
    ("run", "base_model"),
}  # fmt: skip


def config_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """'section.name: saved -> current' for every setting that may not change on resume."""
    a, b = saved.to_dict(), current.to_dict()
    out = []
    for section in a:
        if not isinstance(a[section], dict):
            if a[section] != b[section]:
                out.append(f"{section}: {a[section]!r} -> {b[section]!r}")
            continue
        for name, value in a[section].items():
            if (section, name) not in RESUMABLE_CHANGES and b[section].get(name) != value:
                out.append(f"{section}.{name}: {value!r} -> {b[section].get(name)!r}")
    return out


# --------------------------------------------------------------------------- CLI


def _sections_for(stage: str) -> list[tuple[str, type]]:
    common = [("data", DataConfig), ("degrade", DegradeConfig), ("run", RunConfig)]
    if stage == "all":
        return common + [("stage1", Stage1Config), ("adapter", AlignerConfig), ("stage2", Stage2Config)]
    return common + ([("stage1", Stage1Config), ("adapter", AlignerConfig)] if stage == "stage1" else [("stage2", Stage2Config)])


# `all` sets these itself: stage 2's adapter is stage 1's output, and it always resumes.
ALL_MANAGED = {("stage2", "adapter"), ("run", "resume")}


def _flag_names(stage: str) -> dict[tuple[str, str], str]:
    """(section, field) -> flag name. Names shared by two sections (only under `all`: stage1's
    and stage2's lr, batch_size, weight_decay) get the section as prefix: --stage2_lr."""
    sections = _sections_for(stage)
    owners: dict[str, list[str]] = {}
    for section, cls in sections:
        for f in fields(cls):
            owners.setdefault(f.name, []).append(section)
    names = {}
    for section, cls in sections:
        for f in fields(cls):
            if stage == "all" and (section, f.name) in ALL_MANAGED:
                continue
            if len(owners[f.name]) > 1 and stage != "all":
                raise RuntimeError(f"flag --{f.name} is defined by both {owners[f.name]}")
            names[(section, f.name)] = f"{section}_{f.name}" if len(owners[f.name]) > 1 else f.name
    return names


def add_config_flags(parser: argparse.ArgumentParser, stage: str) -> None:
    """One flag per field of the stage's sections (defaults suppressed: only given flags override)."""
    from lafr_core.degrade import PRESETS

    parser.add_argument("--config", help="YAML file with sections data/degrade/run/stage1/adapter/stage2")
    parser.add_argument(
        "--degrade_preset", choices=sorted(PRESETS), default=None,
        help="start the degrade settings from a named preset (lafr_core.degrade.PRESETS; the --gaussian_blur_* ... flags "
        "still override single values). Default: lafr",
    )  # fmt: skip
    names = _flag_names(stage)
    for section, cls in _sections_for(stage):
        group = parser.add_argument_group(section)
        hints = _hints(cls)
        for f in fields(cls):
            if (section, f.name) not in names:
                continue
            tp = _base_type(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = f.metadata.get("help") or ADAPTER_HELP.get(f.name, "")
            kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, dest=f"{section}.{f.name}", help=f"{text} (default: {_plain(default)})")
            if tp is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(tp) is tuple:
                args = typing.get_args(tp)
                kwargs["nargs"] = "+" if args[-1] is Ellipsis else len(args)
                kwargs["metavar"] = f.name.upper() if args[-1] is Ellipsis else ("LO", "HI")[: len(args)]
            else:
                kwargs["metavar"] = f.name.upper()
            group.add_argument(f"--{names[(section, f.name)]}", **kwargs)


def _preset_overrides(args: argparse.Namespace, yaml_data: dict) -> dict:
    """--degrade_preset NAME (or `degrade_preset:` in the YAML) -> the preset's degrade values,
    applied below the YAML's and the flags' own degrade settings."""
    name = getattr(args, "degrade_preset", None) or yaml_data.pop("degrade_preset", None)
    if not name:
        return {}
    from lafr_core.degrade import DegradeConfig

    try:
        return {"degrade": DegradeConfig.preset(name).to_dict()}
    except ValueError as err:
        raise ConfigError(str(err)) from None


def config_from_args(args: argparse.Namespace, stage: str, validate: bool = True) -> TrainConfig:
    """defaults < saved run config (on --resume) < --config YAML < flags; validated unless
    validate=False (the CLI validates after its start-up checks, to report all problems)."""
    overrides = section_overrides(args)
    yaml_data = load_yaml(args.config) if getattr(args, "config", None) else {}
    preset = _preset_overrides(args, yaml_data)
    output_dir = overrides.get("run", {}).get("output_dir") or (yaml_data.get("run") or {}).get("output_dir")
    resume = overrides.get("run", {}).get("resume") or (yaml_data.get("run") or {}).get("resume")
    base = TrainConfig(stage=stage)
    saved = None
    if resume and output_dir and (Path(output_dir) / CONFIG_NAME).is_file():
        saved = from_dict(TrainConfig, load_yaml(Path(output_dir) / CONFIG_NAME), f"{output_dir}/{CONFIG_NAME}")
        if saved.stage != stage:
            raise ConfigError(f"{output_dir} holds a {saved.stage} run; cannot resume it as {stage}")
        base = saved
    config = merge(merge(base, preset), {**yaml_data, "stage": stage})
    config = merge(config, overrides)
    return config.validate() if validate else config


def section_overrides(args: argparse.Namespace) -> dict[str, dict]:
    """The flags given on the command line as {section: {name: value}}."""
    overrides: dict[str, dict] = {}
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name] = value
    return overrides
