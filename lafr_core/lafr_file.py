"""The LAFR file: one .safetensors for every host (DESIGN §4).

Tensors: `adapter.*` (the LatentAligner state dict), the conv LoRA in kohya/LDM naming
(`lora_unet_<ldm_key>.lora_down.weight | .lora_up.weight | .alpha`, which ComfyUI's and A1111's
own LoRA loaders read too) and `prompt_embeds` (1x77x1024, the fixed prompt through the real SD2.1
text encoder, so no host ever loads CLIP). String metadata `lafr.*` says what the file is for.

Format 2 (the same file for other one-step SD2.1-base engines, first OSEDiff, converted by
`lafr_core.osediff`) adds, all optional for LAFR itself:
  * `lafr.engine`: "lafr", "osediff-face" or "osediff" (general photos);
  * full-weight replacements `lora_unet_<ldm module>.set_weight | .set_bias`: the tensor REPLACES
    the base model's (ComfyUI's `load_lora` reads `.set_weight` as a "set" patch; the bias is a
    "set" patch a host adds by name). A replaced module carries no LoRA: ComfyUI keeps one patch
    per weight per `load_lora` call, so a LoRA beside a `.set_weight` would be dropped silently;
    the converter folds such a LoRA into the replacement instead;
  * a VAE-encoder LoRA `lora_vae.<LDM VAE module>.lora_down.weight | .lora_up.weight | .alpha`
    (module names as inside `first_stage_model`, e.g. `encoder.down.0.block.0.conv1`,
    `quant_conv`; attention projections as 1x1 convs, as LDM stores them), with
    `lafr.vae_lora_rank` / `lafr.vae_lora_alpha`;
  * `lafr.latent` ("mode", or "sample" with the integer `lafr.latent_seed`), `lafr.colour_fix`
    ("none", "adain", "wavelet"), `lafr.source` and `lafr.licence`;
  * a file of another engine may leave out `prompt_embeds`: `lafr.prompt` is then the text a host
    encodes with its own SD2.1 text encoder.
`save_lafr` writes the lowest version that holds the content (a LAFR trainer file stays format
1, readable by older ComfyUI-LAFR); the loader reads both.

Why we parse the header ourselves before safetensors sees the file: users pick files from a
folder by name, so the common failures are a wrong file (a .ckpt, an SD checkpoint, a plain LoRA,
an image) or a half-downloaded one. safetensors' own errors ("MetadataIncompleteBuffer") do not
say what to do; ours name the file, the problem and the fix. Pickle files are recognised by their
magic bytes and never unpickled: unpickling runs arbitrary code.

One validator (`_check_content`) serves both `save_lafr` and `load_lafr`, and works on header
shapes only, so whatever we write loads, and `read_lafr_metadata` checks a file without reading
its tensors. No diffusers / peft / comfy import: every host loads this.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from .adapter import AlignerConfig, LatentAligner

FORMAT_VERSION = "2"  # the newest version this code reads and writes
READABLE_FORMATS = ("1", "2")
BASE_MODEL = "sd2.1-base"
PREDICTION = "epsilon"
DEFAULT_TIMESTEP = 999
DEFAULT_LATENT_SCALE = 0.18215
DEFAULT_PROMPT = "face, high quality"
PROMPT_EMBEDS_SHAPE = (1, 77, 1024)  # SD2.1's OpenCLIP-H text encoder: 77 tokens x 1024
STAGES = ("1", "2", "1+2")
ENGINES = {
    "lafr": "LAFR",
    "osediff-face": "OSEDiff-face (one-step face restoration)",
    "osediff": "OSEDiff (general photos)",
}
LATENT_RULES = ("mode", "sample")  # VAE posterior mode, or a draw from it with lafr.latent_seed
COLOUR_FIXES = ("none", "adain", "wavelet")

ADAPTER_PREFIX = "adapter."
PROMPT_KEY = "prompt_embeds"
LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_LORA_KEY = re.compile(r"^(lora_unet_\w+)(\.lora_down\.weight|\.lora_up\.weight|\.alpha)$")
_SET_KEY = re.compile(r"^(lora_unet_\w+)(\.set_weight|\.set_bias)$")
VAE_LORA_PREFIX = "lora_vae."
_VAE_LORA_KEY = re.compile(r"^(lora_vae\.[\w.]+?)(\.lora_down\.weight|\.lora_up\.weight|\.alpha)$")

# Format-2 metadata: only a format-2 file may carry them; `lafr.engine` is required there.
FORMAT2_META = (
    "lafr.engine", "lafr.latent", "lafr.latent_seed", "lafr.colour_fix", "lafr.source", "lafr.licence",
    "lafr.vae_lora_rank", "lafr.vae_lora_alpha",
)
# What a file of another engine must record (where it came from, under which licence, how to run it).
FOREIGN_ENGINE_META = ("lafr.latent", "lafr.colour_fix", "lafr.source", "lafr.licence")

# What save_lafr always writes; the loader requires each of them.
REQUIRED_META = (
    "lafr.format",
    "lafr.base",
    "lafr.prediction",
    "lafr.timestep",
    "lafr.latent_scale",
    "lafr.prompt",
    "lafr.stages",
)

_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_TORCH_TO_ST = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip

_REEXPORT = "Re-download it or export it again with the LAFR trainer."


class LafrFileError(ValueError):
    """A LAFR file cannot be used. The message names the file, the problem and what to do."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class _Problem(Exception):
    """A content problem, without the file name: load wraps it in LafrFileError, save in ValueError."""


class TensorSpec(NamedTuple):
    dtype: str  # safetensors dtype name: "F32", "F16", ...
    shape: tuple[int, ...]


# --------------------------------------------------------------------------- the loaded file


@dataclass
class LafrWeights:
    """What a LAFR file holds. `meta` is every metadata string of the file, `lafr.*` and others."""

    aligner: LatentAligner | None
    kohya_lora: dict[str, torch.Tensor] | None
    prompt_embeds: torch.Tensor | None
    meta: dict[str, str] = field(default_factory=dict)
    unet_set: dict[str, torch.Tensor] | None = None  # `lora_unet_<m>.set_weight|.set_bias` (format 2)
    vae_lora: dict[str, torch.Tensor] | None = None  # `lora_vae.<m>.lora_down.weight|...` (format 2)

    @property
    def stages(self) -> str:
        """"1" adapter only, "2" LoRA + prompt only, "1+2" both."""
        return self.meta.get("lafr.stages", _stages_of(self.has_adapter, self.has_lora))

    @property
    def has_adapter(self) -> bool:
        return self.aligner is not None

    @property
    def has_lora(self) -> bool:
        return bool(self.kohya_lora)

    @property
    def adapter_config(self) -> AlignerConfig | None:
        return self.aligner.config if self.aligner is not None else None

    @property
    def lora_rank(self) -> int | None:
        value = self.meta.get("lafr.lora_rank")
        return int(value) if value is not None else None

    @property
    def lora_alpha(self) -> float | None:
        value = self.meta.get("lafr.lora_alpha")
        return float(value) if value is not None else None

    @property
    def lora_layers(self) -> list[str]:
        """Module prefixes (`lora_unet_...`) of the LoRA, sorted."""
        return sorted(_group_lora_keys(self.kohya_lora or {}))

    @property
    def latent_scale(self) -> float:
        return float(self.meta.get("lafr.latent_scale", DEFAULT_LATENT_SCALE))

    @property
    def timestep(self) -> int:
        return int(self.meta.get("lafr.timestep", DEFAULT_TIMESTEP))

    @property
    def prompt(self) -> str:
        return self.meta.get("lafr.prompt", DEFAULT_PROMPT)

    @property
    def trainer(self) -> dict:
        """`lafr.trainer` parsed (version, steps, data size); {} when absent."""
        return json.loads(self.meta.get("lafr.trainer", "{}"))

    @property
    def engine(self) -> str:
        """"lafr" (every format-1 file), "osediff-face" or "osediff"."""
        return self.meta.get("lafr.engine", "lafr")

    @property
    def engine_label(self) -> str:
        return ENGINES[self.engine]

    @property
    def latent_rule(self) -> str:
        """"mode" (the VAE posterior mode) or "sample" (a draw seeded with `latent_seed`)."""
        return self.meta.get("lafr.latent", "mode")

    @property
    def latent_seed(self) -> int | None:
        value = self.meta.get("lafr.latent_seed")
        return int(value) if value is not None else None

    @property
    def colour_fix(self) -> str:
        """The engine's default colour fix of the restored crop ("none" for LAFR)."""
        return self.meta.get("lafr.colour_fix", "none")

    @property
    def has_vae_lora(self) -> bool:
        return bool(self.vae_lora)

    @property
    def vae_lora_rank(self) -> int | None:
        value = self.meta.get("lafr.vae_lora_rank")
        return int(value) if value is not None else None

    @property
    def vae_lora_alpha(self) -> float | None:
        value = self.meta.get("lafr.vae_lora_alpha")
        return float(value) if value is not None else None

    @property
    def replaced_layers(self) -> list[str]:
        """Module prefixes (`lora_unet_...`) whose weights the file replaces, sorted."""
        return sorted(_group_keys(self.unet_set or {}, _SET_KEY))


# --------------------------------------------------------------------------- public functions


def save_lafr(
    path: str | os.PathLike,
    *,
    aligner: LatentAligner | None = None,
    kohya_lora: dict[str, torch.Tensor] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    meta: dict[str, str] | None = None,
    unet_set: dict[str, torch.Tensor] | None = None,
    vae_lora: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a LAFR file atomically; returns its path.

    The content goes through the loader's own validator first, so a file we write always loads.
    `meta` adds or overrides metadata strings (e.g. `lafr.prompt`, `lafr.trainer` JSON, and for
    another engine `lafr.engine`, `lafr.source`, ...). `unet_set` (full-weight replacements) and
    `vae_lora` are format-2 sections (module doc). The version written is the lowest that holds
    the content: "1" for what the LAFR trainer writes, "2" otherwise.
    Atomic because a host may list or load the models folder while the trainer exports: the file
    is written to a temp file in the same folder, fsynced, then renamed over the target.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_lafr({str(path)!r}): LAFR files must end in .safetensors (hosts list only those)")
    if aligner is None and not kohya_lora:
        raise ValueError(
            f"save_lafr({str(path)!r}): nothing to save; pass an aligner (stage 1), "
            "a kohya_lora with prompt_embeds (stage 2), or both"
        )
    engine = (meta or {}).get("lafr.engine", "lafr")
    if kohya_lora and prompt_embeds is None and engine == "lafr":
        raise ValueError(
            f"save_lafr({str(path)!r}): a LoRA needs its prompt_embeds (1x77x1024, the fixed prompt "
            "through the SD2.1 text encoder); the UNet step cannot run without them"
        )
    tensors = _collect_tensors(aligner, kohya_lora, prompt_embeds, unet_set, vae_lora)
    try:
        metadata = _build_metadata(aligner, kohya_lora, meta, vae_lora, unet_set)
        _check_content({name: _spec_of(t) for name, t in tensors.items()}, metadata)
        _check_lora_alpha_values(_lora_only(tensors), metadata)
        _check_lora_alpha_values(_vae_lora_only(tensors), metadata, "lafr.vae_lora_alpha")
    except _Problem as problem:
        raise ValueError(f"save_lafr({str(path)!r}): refusing to write an invalid LAFR file: {problem}") from None
    _write_atomic(path, safetensors_save(tensors, metadata=metadata))
    return path


def read_header_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of any .safetensors the pack writes (LAFR, OSEDiff or InterLCM), with only the
    container checks: cheap enough for hosts to sort a model folder by engine."""
    return _read_header(Path(path))[1]


def read_lafr_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The file's metadata after checking its header: cheap (reads the header only).

    For the ComfyUI loader cache and `info`: it runs every check `load_lafr` runs except the LoRA
    alpha values, which are tensor data.
    """
    path = Path(path)
    specs, metadata, _ = _read_header(path)
    _checked(path, _check_content, specs, metadata)
    return metadata


def load_lafr(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LafrWeights:
    """Load and check a LAFR file (safetensors only, never pickle).

    `dtype` casts the floating tensors (None keeps the stored dtype). The aligner comes back in
    eval mode. Every problem raises LafrFileError naming the file.
    """
    path = Path(path)
    specs, metadata, _ = _read_header(path)
    _checked(path, _check_content, specs, metadata)
    tensors = _read_tensors(path, list(specs), device, dtype)
    kohya = _lora_only(tensors)
    vae_lora = _vae_lora_only(tensors)
    _checked(path, _check_lora_alpha_values, kohya, metadata)
    _checked(path, _check_lora_alpha_values, vae_lora, metadata, "lafr.vae_lora_alpha")
    aligner = _build_aligner(metadata, tensors) if _adapter_keys(tensors) else None
    unet_set = {k: v for k, v in tensors.items() if _SET_KEY.match(k)}
    return LafrWeights(
        aligner=aligner,
        kohya_lora=kohya or None,
        prompt_embeds=tensors.get(PROMPT_KEY),
        meta=metadata,
        unet_set=unet_set or None,
        vae_lora=vae_lora or None,
    )


# --------------------------------------------------------------------------- saving helpers


def _collect_tensors(
    aligner: LatentAligner | None,
    kohya_lora: dict[str, torch.Tensor] | None,
    prompt_embeds: torch.Tensor | None,
    unet_set: dict[str, torch.Tensor] | None = None,
    vae_lora: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Name every tensor; CPU, contiguous and cloned (safetensors refuses shared storage)."""
    tensors: dict[str, torch.Tensor] = {}
    if aligner is not None:
        tensors.update({ADAPTER_PREFIX + k: v for k, v in aligner.state_dict().items()})
    for what, section in (("kohya_lora", kohya_lora), ("unet_set", unet_set), ("vae_lora", vae_lora)):
        if section:
            clash = sorted(k for k in section if k in tensors)
            if clash:
                raise ValueError(f"save_lafr: {what} keys collide with other sections: {clash[:3]}")
            tensors.update(section)
    if prompt_embeds is not None:
        tensors[PROMPT_KEY] = prompt_embeds
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"save_lafr: {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}


def _build_metadata(
    aligner: LatentAligner | None,
    kohya_lora: dict[str, torch.Tensor] | None,
    meta: dict[str, str] | None,
    vae_lora: dict[str, torch.Tensor] | None = None,
    unet_set: dict[str, torch.Tensor] | None = None,
) -> dict[str, str]:
    """Defaults, then what the content implies, then the caller's strings (which must be valid).
    The version is the lowest that holds the content (module doc)."""
    metadata = {
        "lafr.format": "1",
        "lafr.base": BASE_MODEL,
        "lafr.prediction": PREDICTION,
        "lafr.timestep": str(DEFAULT_TIMESTEP),
        "lafr.latent_scale": str(DEFAULT_LATENT_SCALE),
        "lafr.prompt": DEFAULT_PROMPT,
        "lafr.stages": _stages_of(aligner is not None, bool(kohya_lora)),
    }
    if aligner is not None:
        metadata["lafr.adapter_config"] = aligner.config.to_json()
    if kohya_lora:
        rank, alpha = _infer_rank_alpha(kohya_lora)
        metadata["lafr.lora_rank"] = str(rank)
        metadata["lafr.lora_alpha"] = _format_number(alpha)
    if vae_lora:
        rank, alpha = _infer_rank_alpha(vae_lora)
        metadata["lafr.vae_lora_rank"] = str(rank)
        metadata["lafr.vae_lora_alpha"] = _format_number(alpha)
    for key, value in (meta or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _Problem(f"metadata must map str to str, got {key!r}: {type(value).__name__}")
        metadata[key] = value
    if "lafr.format" not in (meta or {}) and _needs_format_2(metadata, vae_lora or unet_set):
        metadata["lafr.format"] = "2"
        metadata.setdefault("lafr.engine", "lafr")
    return metadata


def _needs_format_2(metadata: dict[str, str], extra_sections) -> bool:
    return bool(extra_sections) or any(key in metadata for key in FORMAT2_META)


def _infer_rank_alpha(kohya_lora: dict[str, torch.Tensor]) -> tuple[int, float]:
    """One rank and one alpha for the whole LoRA: the file records a single pair."""
    ranks = {k: int(v.shape[0]) for k, v in kohya_lora.items() if k.endswith(".lora_down.weight") and v.ndim}
    alphas = {k: float(v.reshape(-1)[0]) for k, v in kohya_lora.items() if k.endswith(".alpha") and v.numel() == 1}
    if not ranks or not alphas:
        raise _Problem("kohya_lora has no '.lora_down.weight' or no '.alpha' tensors")
    if len(set(ranks.values())) > 1:
        raise _Problem(f"kohya_lora mixes ranks {sorted(set(ranks.values()))}; LAFR files record one lora_rank")
    if len(set(alphas.values())) > 1:
        raise _Problem(f"kohya_lora mixes alphas {sorted(set(alphas.values()))}; LAFR files record one lora_alpha")
    return next(iter(ranks.values())), next(iter(alphas.values()))


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the target's folder (same filesystem), fsync, os.replace; no partial file ever."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any file (mkstemp would force 0600
    # and hide the file from a host running as another user).
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading the container


def _read_header(path: Path) -> tuple[dict[str, TensorSpec], dict[str, str], int]:
    """Parse and check the safetensors container. Returns (tensor specs, metadata, data start)."""
    if not path.exists():
        raise LafrFileError(f"LAFR file '{path}' does not exist. Check the path and file name.", path)
    if not path.is_file():
        raise LafrFileError(f"LAFR file '{path}' is not a file (a folder?). Choose a .safetensors file.", path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
        _check_magic(path, head, size)
        header_len = struct.unpack("<Q", head[:8])[0]
        if 8 + header_len > size:
            raise LafrFileError(
                f"LAFR file '{path}' is truncated: its safetensors header declares {header_len} bytes "
                f"but the file has only {size - 8} after the length field. {_REEXPORT}",
                path,
            )
        handle.seek(8)
        raw = handle.read(header_len)
    header = _parse_header_json(path, raw)
    metadata = _header_metadata(path, header)
    specs = _header_specs(path, header, data_len=size - 8 - header_len)
    return specs, metadata, 8 + header_len


def _check_magic(path: Path, head: bytes, size: int) -> None:
    """Tell pickles, images and other non-safetensors files apart before reading a length field."""
    # A safetensors length field may itself start with 0x80 0x02 (a 640-byte header): test it first.
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 0 < header_len <= _MAX_HEADER_BYTES:
            return
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise LafrFileError(
            f"'{path}' is a pickle checkpoint (torch .pt/.ckpt), not a safetensors file. LAFR never "
            "unpickles files, because unpickling can run arbitrary code. Convert it with the LAFR "
            "trainer's `export` command (or save its tensors with safetensors) and load the "
            ".safetensors file it writes.",
            path,
        )
    if len(head) < 9 and not _sniff_kind(head):
        raise LafrFileError(
            f"LAFR file '{path}' is too short ({size} bytes) to be a safetensors file: it is empty "
            f"or truncated. {_REEXPORT}",
            path,
        )
    kind = _sniff_kind(head) or "unknown content"
    raise LafrFileError(
        f"'{path}' is not a safetensors file ({kind}). Choose a LAFR .safetensors file exported by the LAFR trainer.",
        path,
    )


def _sniff_kind(head: bytes) -> str | None:
    """A guess for the error message only."""
    signatures = {
        b"\x89PNG": "it is a PNG image",
        b"\xff\xd8\xff": "it is a JPEG image",
        b"GIF8": "it is a GIF image",
        b"RIFF": "it is a RIFF file (WebP/WAV)",
        b"GGUF": "it is a GGUF model",
        b"\x1f\x8b": "it is gzip-compressed",
    }
    for magic, kind in signatures.items():
        if head.startswith(magic):
            return kind
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it looks like a text file"
    return None


def _parse_header_json(path: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LafrFileError(
            f"LAFR file '{path}' is corrupt: its safetensors header is not valid JSON ({exc}). {_REEXPORT}", path
        ) from None
    if not isinstance(header, dict):
        raise LafrFileError(f"LAFR file '{path}' is corrupt: its safetensors header is not a JSON object. {_REEXPORT}", path)
    return header


def _header_metadata(path: Path, header: dict) -> dict[str, str]:
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise LafrFileError(
            f"LAFR file '{path}' is corrupt: its '__metadata__' is not a map of strings. {_REEXPORT}", path
        )
    return dict(metadata)


def _header_specs(path: Path, header: dict, data_len: int) -> dict[str, TensorSpec]:
    """Check each entry and that the data offsets tile the data section exactly (safetensors' rule)."""
    specs: dict[str, TensorSpec] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        spec, begin, end = _header_entry(path, name, entry)
        if end > data_len:
            raise LafrFileError(
                f"LAFR file '{path}' is truncated or corrupt: tensor '{name}' has data offsets [{begin}, {end}] "
                f"beyond the end of the data section ({data_len} bytes). {_REEXPORT}",
                path,
            )
        specs[name] = spec
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise LafrFileError(
                f"LAFR file '{path}' is corrupt: the data of tensor '{name}' starts at byte {begin}, "
                f"expected {position} (overlapping or missing data). {_REEXPORT}",
                path,
            )
        position = end
    if position != data_len:
        raise LafrFileError(
            f"LAFR file '{path}' is corrupt: {data_len - position} bytes follow the last tensor's data. {_REEXPORT}",
            path,
        )
    return specs


def _header_entry(path: Path, name: str, entry: object) -> tuple[TensorSpec, int, int]:
    def corrupt(what: str) -> LafrFileError:
        return LafrFileError(f"LAFR file '{path}' is corrupt: tensor '{name}' {what}. {_REEXPORT}", path)

    if not isinstance(entry, dict):
        raise corrupt("has no header entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise corrupt("has no dtype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise corrupt(f"has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise corrupt(f"has invalid data offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise corrupt(f"has invalid data offsets [{begin}, {end}]")
    itemsize = _DTYPE_BYTES.get(dtype)
    if itemsize is not None and (end - begin) != math.prod(shape) * itemsize:
        raise corrupt(f"holds {end - begin} bytes but {dtype} {shape} needs {math.prod(shape) * itemsize}")
    return TensorSpec(dtype, tuple(shape)), begin, end


def _read_tensors(
    path: Path, names: list[str], device: str | torch.device, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """safetensors only; errors it still finds (after our checks) are reported as ours."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            tensors = {name: handle.get_tensor(name) for name in names}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise LafrFileError(f"LAFR file '{path}' could not be read ({exc}). {_REEXPORT}", path) from None
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors


def _checked(path: Path, check, *args) -> None:
    """Run a content check; turn its _Problem into a LafrFileError that names the file."""
    try:
        check(*args)
    except _Problem as problem:
        raise LafrFileError(f"LAFR file '{path}': {problem}", path) from None


# --------------------------------------------------------------------------- content checks


def _check_content(specs: dict[str, TensorSpec], meta: dict[str, str]) -> None:
    """Every rule of DESIGN §4 that header shapes and metadata can decide. Raises _Problem."""
    _check_identity(specs, meta)
    _check_scalars(meta)
    format2 = meta["lafr.format"] == "2"
    unknown = sorted(n for n in specs if not _is_known_key(n, format2))
    if unknown:
        kinds = (
            "'adapter.*', 'lora_unet_*' (LoRA, .set_weight/.set_bias), 'lora_vae.*' and 'prompt_embeds'"
            if format2 else "'adapter.*', 'lora_unet_*' and 'prompt_embeds'"
        )
        raise _Problem(f"unexpected tensor {unknown[0]!r} (a format-{meta['lafr.format']} LAFR file holds only {kinds}). {_REEXPORT}")
    if format2:
        _check_engine(meta)
    stages = meta["lafr.stages"]
    lafr_engine = meta.get("lafr.engine", "lafr") == "lafr"
    _check_adapter_section(specs, meta, required="1" in stages.split("+"))
    _check_lora_section(specs, meta, required="2" in stages.split("+"))
    _check_prompt_section(specs, required="2" in stages.split("+") and lafr_engine)
    _check_set_section(specs)
    _check_vae_lora_section(specs, meta)


def _check_identity(specs: dict[str, TensorSpec], meta: dict[str, str]) -> None:
    """Is this a LAFR file at all, of a version we read, for the model we run?"""
    if "lafr.format" not in meta:
        raise _Problem(
            f"this safetensors file is not a LAFR file (no 'lafr.format' metadata; {_guess_content(specs)}). "
            "Choose a file exported by the LAFR trainer."
        )
    if meta["lafr.format"] not in READABLE_FORMATS:
        raise _Problem(
            f"unknown LAFR format version {meta['lafr.format']!r}; this ComfyUI-LAFR reads formats "
            f"{' and '.join(READABLE_FORMATS)}. Update ComfyUI-LAFR or export the file again."
        )
    required = REQUIRED_META + (("lafr.engine",) if meta["lafr.format"] == "2" else ())
    missing = [key for key in required if key not in meta]
    if missing:
        raise _Problem(f"missing metadata {missing} (every LAFR file records them). {_REEXPORT}")
    if meta["lafr.base"] != BASE_MODEL:
        raise _Problem(
            f"this file was trained for {meta['lafr.base']!r}, but LAFR needs SD2.1-base ({BASE_MODEL!r}). "
            "Use a LAFR file trained on SD2.1-base."
        )
    if meta["lafr.prediction"] != PREDICTION:
        raise _Problem(
            f"this file is for {meta['lafr.prediction']!r} prediction, but LAFR needs an epsilon-prediction "
            "model (SD2.1-base, not the 768-v model). Use a LAFR file trained on SD2.1-base."
        )
    if meta["lafr.format"] == "1":
        newer = [key for key in FORMAT2_META if key in meta]
        if newer:
            raise _Problem(f"a format-1 file cannot carry {newer[0]!r} (format 2 metadata). {_REEXPORT}")


def _check_engine(meta: dict[str, str]) -> None:
    """Format 2: which engine, and what a file of another engine must record."""
    engine = meta["lafr.engine"]
    if engine not in ENGINES:
        raise _Problem(
            f"lafr.engine is {engine!r}; this ComfyUI-LAFR runs {sorted(ENGINES)}. Update ComfyUI-LAFR."
        )
    if engine != "lafr":
        missing = [key for key in FOREIGN_ENGINE_META if key not in meta]
        if missing:
            raise _Problem(f"an {ENGINES[engine]} file must record {missing} (convert it again with `lafr convert`)")
        if meta["lafr.stages"] != "2":
            raise _Problem(f"an {ENGINES[engine]} file has lafr.stages '2' (a UNet LoRA, no adapter), not {meta['lafr.stages']!r}")
    latent = meta.get("lafr.latent", "mode")
    if latent not in LATENT_RULES:
        raise _Problem(f"lafr.latent is {latent!r}; expected one of {list(LATENT_RULES)}. {_REEXPORT}")
    if latent == "sample":
        seed = meta.get("lafr.latent_seed")
        if seed is None or not re.fullmatch(r"-?\d+", seed):
            raise _Problem(f"lafr.latent is 'sample' but lafr.latent_seed is {seed!r}, not an integer: the draw must be seeded")
    if meta.get("lafr.colour_fix", "none") not in COLOUR_FIXES:
        raise _Problem(f"lafr.colour_fix is {meta['lafr.colour_fix']!r}; expected one of {list(COLOUR_FIXES)}. {_REEXPORT}")


def _check_scalars(meta: dict[str, str]) -> None:
    if meta["lafr.stages"] not in STAGES:
        raise _Problem(f"lafr.stages is {meta['lafr.stages']!r}; expected one of {list(STAGES)}. {_REEXPORT}")
    try:
        timestep = int(meta["lafr.timestep"])
    except ValueError:
        raise _Problem(f"lafr.timestep {meta['lafr.timestep']!r} is not an integer. {_REEXPORT}") from None
    if not 0 <= timestep <= 999:
        raise _Problem(f"lafr.timestep is {timestep}; SD2.1 has timesteps 0..999. {_REEXPORT}")
    try:
        scale = float(meta["lafr.latent_scale"])
    except ValueError:
        scale = float("nan")
    if not (math.isfinite(scale) and scale > 0):
        raise _Problem(f"lafr.latent_scale {meta['lafr.latent_scale']!r} is not a positive number. {_REEXPORT}")
    if "lafr.trainer" in meta:
        try:
            trainer = json.loads(meta["lafr.trainer"])
        except json.JSONDecodeError as exc:
            raise _Problem(f"lafr.trainer is not valid JSON ({exc})") from None
        if not isinstance(trainer, dict):
            raise _Problem("lafr.trainer must be a JSON object (version, steps, data size)")


def _check_adapter_section(specs: dict[str, TensorSpec], meta: dict[str, str], required: bool) -> None:
    keys = [k for k in specs if k.startswith(ADAPTER_PREFIX)]
    stages = meta["lafr.stages"]
    if not required:
        if keys:
            raise _Problem(f"lafr.stages is {stages!r} but the file has adapter tensors ({keys[0]!r}). {_REEXPORT}")
        return
    if not keys:
        raise _Problem(f"lafr.stages is {stages!r} but the file has no adapter tensors ('adapter.*'). {_REEXPORT}")
    if "lafr.adapter_config" not in meta:
        raise _Problem(f"the file has adapter tensors but no 'lafr.adapter_config' metadata. {_REEXPORT}")
    config = _parse_adapter_config(meta["lafr.adapter_config"])
    expected = _aligner_shapes(config)
    got = {k[len(ADAPTER_PREFIX) :]: spec for k, spec in specs.items() if k.startswith(ADAPTER_PREFIX)}
    missing = [k for k in expected if k not in got]
    if missing:
        raise _Problem(f"adapter tensor 'adapter.{missing[0]}' is missing ({len(missing)} missing in all). {_REEXPORT}")
    extra = sorted(k for k in got if k not in expected)
    if extra:
        raise _Problem(
            f"adapter tensor 'adapter.{extra[0]}' is not part of the adapter described by "
            f"lafr.adapter_config. {_REEXPORT}"
        )
    for key, shape in expected.items():
        if got[key].shape != shape:
            raise _Problem(
                f"adapter tensor 'adapter.{key}' has shape {list(got[key].shape)} but lafr.adapter_config "
                f"expects {list(shape)}: the weights do not match their recorded config. {_REEXPORT}"
            )
        if got[key].dtype not in _FLOAT_DTYPES:
            raise _Problem(f"adapter tensor 'adapter.{key}' has dtype {got[key].dtype}; expected a float dtype")


def _parse_adapter_config(text: str) -> AlignerConfig:
    try:
        return AlignerConfig.from_json(text)
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise _Problem(f"lafr.adapter_config is invalid ({exc}). {_REEXPORT}") from None


@lru_cache(maxsize=16)
def _aligner_shapes(config: AlignerConfig) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of LatentAligner(config), built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        reference = LatentAligner(config)
    return {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def _check_lora_section(specs: dict[str, TensorSpec], meta: dict[str, str], required: bool) -> None:
    lora = {k: spec for k, spec in specs.items() if _LORA_KEY.match(k)}
    stages = meta["lafr.stages"]
    if not required:
        if lora:
            raise _Problem(f"lafr.stages is {stages!r} but the file has LoRA tensors ({next(iter(lora))!r}). {_REEXPORT}")
        return
    if not lora:
        raise _Problem(f"lafr.stages is {stages!r} but the file has no LoRA tensors ('lora_unet_*'). {_REEXPORT}")
    rank = _meta_int(meta, "lafr.lora_rank")
    _meta_float(meta, "lafr.lora_alpha")
    for module, parts in sorted(_group_lora_keys(lora).items()):
        _check_lora_layer(module, parts, lora, rank)


def _check_set_section(specs: dict[str, TensorSpec]) -> None:
    """Full-weight replacements: a .set_weight per module (.set_bias optional), no LoRA beside it."""
    replaced = _group_keys(specs, _SET_KEY)
    lora_modules = _group_lora_keys(specs)
    for module, parts in sorted(replaced.items()):
        if ".set_weight" not in parts:
            raise _Problem(f"replacement '{module}' has .set_bias but no .set_weight. {_REEXPORT}")
        if module in lora_modules:
            raise _Problem(
                f"'{module}' has both a replacement (.set_weight) and a LoRA: ComfyUI would keep only one "
                f"of them; fold the LoRA into the replacement. {_REEXPORT}"
            )
        for suffix in parts:
            spec = specs[module + suffix]
            if spec.dtype not in _FLOAT_DTYPES:
                raise _Problem(f"replacement tensor '{module}{suffix}' has dtype {spec.dtype}; expected a float dtype")
        weight = specs[module + ".set_weight"]
        bias = specs.get(module + ".set_bias")
        if len(weight.shape) not in (2, 4) or (bias is not None and bias.shape != weight.shape[:1]):
            raise _Problem(
                f"replacement '{module}' has weight {list(weight.shape)} and bias "
                f"{None if bias is None else list(bias.shape)}; expected a Linear/Conv2d weight and a [out] bias"
            )


def _check_vae_lora_section(specs: dict[str, TensorSpec], meta: dict[str, str]) -> None:
    lora = {k: spec for k, spec in specs.items() if _VAE_LORA_KEY.match(k)}
    if not lora:
        if "lafr.vae_lora_rank" in meta or "lafr.vae_lora_alpha" in meta:
            raise _Problem(f"lafr.vae_lora_rank/alpha are recorded but the file has no 'lora_vae.*' tensors. {_REEXPORT}")
        return
    rank = _meta_int(meta, "lafr.vae_lora_rank")
    _meta_float(meta, "lafr.vae_lora_alpha")
    for module, parts in sorted(_group_keys(lora, _VAE_LORA_KEY).items()):
        _check_lora_layer(module, parts, lora, rank, "lafr.vae_lora_rank")


def _check_lora_layer(
    module: str, parts: set[str], lora: dict[str, TensorSpec], rank: int, rank_key: str = "lafr.lora_rank"
) -> None:
    missing = [module + suffix for suffix in LORA_SUFFIXES if suffix not in parts]
    if missing:
        raise _Problem(
            f"LoRA layer '{module}' lacks {missing[0]!r} (each layer needs .lora_down.weight, "
            f".lora_up.weight and .alpha). {_REEXPORT}"
        )
    down, up, alpha = (lora[module + suffix] for suffix in LORA_SUFFIXES)
    for name, spec in zip(LORA_SUFFIXES, (down, up, alpha)):
        if spec.dtype not in _FLOAT_DTYPES:
            raise _Problem(f"LoRA tensor '{module}{name}' has dtype {spec.dtype}; expected a float dtype")
    if math.prod(alpha.shape) != 1:
        raise _Problem(f"LoRA tensor '{module}.alpha' has shape {list(alpha.shape)}; expected a scalar")
    shapes_ok = len(down.shape) in (2, 4) and len(up.shape) == len(down.shape) and (
        len(up.shape) == 2 or tuple(up.shape[2:]) == (1, 1)
    )
    if not shapes_ok:
        raise _Problem(
            f"LoRA layer '{module}' has lora_down {list(down.shape)} and lora_up {list(up.shape)}; expected "
            "[rank, in, kh, kw] and [out, rank, 1, 1] (or [rank, in] and [out, rank])"
        )
    if down.shape[0] != rank or up.shape[1] != rank:
        raise _Problem(
            f"LoRA layer '{module}' has rank {down.shape[0]} (lora_down {list(down.shape)}, lora_up "
            f"{list(up.shape)}) but {rank_key} is {rank}. {_REEXPORT}"
        )


def _check_prompt_section(specs: dict[str, TensorSpec], required: bool) -> None:
    """Required with a LoRA; allowed with an adapter alone (adapter + base UNet ablation)."""
    spec = specs.get(PROMPT_KEY)
    if spec is None:
        if required:
            raise _Problem(f"the file has a LoRA (stage 2) but no 'prompt_embeds' tensor. {_REEXPORT}")
        return
    if spec.shape != PROMPT_EMBEDS_SHAPE:
        raise _Problem(
            f"'prompt_embeds' has shape {list(spec.shape)} but LAFR needs {list(PROMPT_EMBEDS_SHAPE)} "
            "(the SD2.1 text encoder's output for the fixed prompt)"
        )
    if spec.dtype not in _FLOAT_DTYPES:
        raise _Problem(f"'prompt_embeds' has dtype {spec.dtype}; expected a float dtype")


def _check_lora_alpha_values(kohya: dict[str, torch.Tensor], meta: dict[str, str], alpha_key: str = "lafr.lora_alpha") -> None:
    """Alpha tensors must agree with the recorded alpha (to float32 precision: they may be stored so)."""
    if not kohya:
        return
    recorded = _meta_float(meta, alpha_key)
    for key, value in sorted(kohya.items()):
        if key.endswith(".alpha"):
            got = float(value.reshape(-1)[0].float())
            if not math.isclose(got, recorded, rel_tol=1e-3, abs_tol=1e-6):
                raise _Problem(f"LoRA tensor {key!r} is {got:g} but {alpha_key} is {recorded:g}. {_REEXPORT}")


# --------------------------------------------------------------------------- small helpers


def _build_aligner(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> LatentAligner:
    """Built on the meta device, then the loaded tensors are assigned: no random init to discard."""
    config = AlignerConfig.from_json(meta["lafr.adapter_config"])
    with torch.device("meta"):
        aligner = LatentAligner(config)
    state = {k[len(ADAPTER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}
    aligner.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*aligner.named_parameters(), *aligner.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"LatentAligner has tensors outside its state dict, left on the meta device: {left}")
    return aligner.eval()


def _group_lora_keys(keys) -> dict[str, set[str]]:
    """{'lora_unet_x': {'.lora_down.weight', ...}} for every key that matches the kohya pattern."""
    return _group_keys(keys, _LORA_KEY)


def _group_keys(keys, pattern: re.Pattern) -> dict[str, set[str]]:
    """{module: {suffix, ...}} for every key that `pattern` (module, suffix) matches."""
    groups: dict[str, set[str]] = {}
    for key in keys:
        match = pattern.match(key)
        if match:
            groups.setdefault(match.group(1), set()).add(match.group(2))
    return groups


def _is_known_key(name: str, format2: bool = False) -> bool:
    if name.startswith(ADAPTER_PREFIX) or name == PROMPT_KEY or _LORA_KEY.match(name) is not None:
        return True
    return format2 and (_SET_KEY.match(name) is not None or _VAE_LORA_KEY.match(name) is not None)


def _adapter_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in tensors if k.startswith(ADAPTER_PREFIX)]


def _lora_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if _LORA_KEY.match(k)}


def _vae_lora_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if _VAE_LORA_KEY.match(k)}


def _guess_content(specs: dict[str, TensorSpec]) -> str:
    """What a non-LAFR safetensors file probably is, for the error message."""
    names = list(specs)
    if any(n.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for n in names):
        return "it looks like a Stable Diffusion checkpoint"
    if any(".lora_down." in n or ".lora_A." in n or n.startswith(("lora_unet_", "lora_te")) for n in names):
        return "it looks like a plain LoRA, which a host's LoRA loader takes"
    if any(n.startswith(("encoder.", "decoder.")) for n in names):
        return "it looks like a VAE"
    return f"{len(names)} tensors without LAFR metadata"


def _stages_of(has_adapter: bool, has_lora: bool) -> str:
    return "+".join(s for s, present in (("1", has_adapter), ("2", has_lora)) if present)


def _meta_int(meta: dict[str, str], key: str) -> int:
    try:
        return int(meta[key])
    except KeyError:
        raise _Problem(f"the file has a LoRA but no {key!r} metadata. {_REEXPORT}") from None
    except ValueError:
        raise _Problem(f"{key} {meta[key]!r} is not an integer. {_REEXPORT}") from None


def _meta_float(meta: dict[str, str], key: str) -> float:
    try:
        value = float(meta[key])
    except KeyError:
        raise _Problem(f"the file has a LoRA but no {key!r} metadata. {_REEXPORT}") from None
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise _Problem(f"{key} {meta[key]!r} is not a finite number. {_REEXPORT}")
    return value


def _format_number(value: float) -> str:
    """4.0 -> "4", 0.5 -> "0.5": what a person expects to read in metadata."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _spec_of(tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(_TORCH_TO_ST.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape))
