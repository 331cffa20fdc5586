"""The LAFR file (DESIGN §4): round trips, atomic writes and one clear error per file problem."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lafr_core.adapter import AlignerConfig, LatentAligner, count_parameters
from lafr_core.lafr_file import LafrFileError, LafrWeights, load_lafr, read_lafr_metadata, save_lafr

REPO = Path(__file__).resolve().parents[1]
SMALL = AlignerConfig(hidden_channels=32, codebook_size=16, codebook_dim=8, norm_groups=8)
CONV = "lora_unet_input_blocks_1_0_in_layers_2"
LINEAR = "lora_unet_time_embed_0"


def make_aligner(config: AlignerConfig = SMALL, seed: int = 0) -> LatentAligner:
    torch.manual_seed(seed)
    return LatentAligner(config).eval()


def make_kohya(rank: int = 4, alpha: float = 4.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two layers in kohya LDM naming: a 3x3 conv and a linear one."""
    g = torch.Generator().manual_seed(seed)
    return {
        f"{CONV}.lora_down.weight": torch.randn(rank, 320, 3, 3, generator=g),
        f"{CONV}.lora_up.weight": torch.randn(320, rank, 1, 1, generator=g),
        f"{CONV}.alpha": torch.tensor(alpha),
        f"{LINEAR}.lora_down.weight": torch.randn(rank, 320, generator=g),
        f"{LINEAR}.lora_up.weight": torch.randn(1280, rank, generator=g),
        f"{LINEAR}.alpha": torch.tensor(alpha),
    }


def make_prompt(shape=(1, 77, 1024)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def full_file(tmp_path) -> Path:
    return save_lafr(
        tmp_path / "full.safetensors",
        aligner=make_aligner(),
        kohya_lora=make_kohya(),
        prompt_embeds=make_prompt(),
        meta={"lafr.trainer": json.dumps({"version": "0.1.0", "steps": 17000, "images": 600})},
    )


def read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def rewrite(src: Path, dst: Path, *, drop=(), add=None, meta=None, drop_meta=()) -> Path:
    """A copy of a valid file with tensors or metadata changed, written past our validator."""
    tensors, metadata = read_raw(src)
    tensors = {k: v for k, v in tensors.items() if not any(k.startswith(d) for d in drop)}
    tensors.update(add or {})
    metadata.update(meta or {})
    for key in drop_meta:
        metadata.pop(key)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


# --------------------------------------------------------------------------- round trips


def test_round_trip_is_exact(full_file):
    weights = load_lafr(full_file)
    original = make_aligner()
    for key, value in original.state_dict().items():
        assert torch.equal(weights.aligner.state_dict()[key], value), key
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(weights.aligner(z), original(z))
    assert not weights.aligner.training
    assert weights.aligner.config == SMALL
    kohya = make_kohya()
    assert weights.kohya_lora.keys() == kohya.keys()
    for key, value in kohya.items():
        assert torch.equal(weights.kohya_lora[key], value), key
    assert torch.equal(weights.prompt_embeds, make_prompt())


def test_round_trip_metadata(full_file):
    weights = load_lafr(full_file)
    expected = {
        "lafr.format": "1",
        "lafr.base": "sd2.1-base",
        "lafr.prediction": "epsilon",
        "lafr.timestep": "999",
        "lafr.latent_scale": "0.18215",
        "lafr.prompt": "face, high quality",
        "lafr.adapter_config": SMALL.to_json(),
        "lafr.lora_rank": "4",
        "lafr.lora_alpha": "4",
        "lafr.stages": "1+2",
        "lafr.trainer": json.dumps({"version": "0.1.0", "steps": 17000, "images": 600}),
    }
    assert weights.meta == expected
    assert read_lafr_metadata(full_file) == expected
    assert (weights.stages, weights.lora_rank, weights.lora_alpha) == ("1+2", 4, 4.0)
    assert (weights.latent_scale, weights.timestep, weights.prompt) == (0.18215, 999, "face, high quality")
    assert weights.trainer == {"version": "0.1.0", "steps": 17000, "images": 600}
    assert weights.lora_layers == sorted([CONV, LINEAR])
    assert weights.adapter_config == SMALL


def test_default_config_round_trip(tmp_path):
    aligner = make_aligner(AlignerConfig())
    path = save_lafr(tmp_path / "stage1.safetensors", aligner=aligner)
    weights = load_lafr(path)
    assert weights.aligner.config == AlignerConfig()
    assert count_parameters(weights.aligner) == count_parameters(aligner)
    for key, value in aligner.state_dict().items():
        assert torch.equal(weights.aligner.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("adapter", "lora", "stages"),
    [(True, False, "1"), (False, True, "2"), (True, True, "1+2")],
)
def test_stages_follow_content(tmp_path, adapter, lora, stages):
    path = save_lafr(
        tmp_path / "x.safetensors",
        aligner=make_aligner() if adapter else None,
        kohya_lora=make_kohya() if lora else None,
        prompt_embeds=make_prompt() if lora else None,
    )
    weights = load_lafr(path)
    assert weights.stages == weights.meta["lafr.stages"] == stages
    assert (weights.has_adapter, weights.has_lora) == (adapter, lora)
    assert ("lafr.adapter_config" in weights.meta) == adapter
    assert ("lafr.lora_rank" in weights.meta) == lora
    assert (weights.prompt_embeds is not None) == lora


def test_adapter_with_prompt_but_no_lora_is_stage_1(tmp_path):
    """The ablation 'adapter + base UNet' needs the prompt but has no LoRA."""
    path = save_lafr(tmp_path / "x.safetensors", aligner=make_aligner(), prompt_embeds=make_prompt())
    weights = load_lafr(path)
    assert weights.stages == "1" and weights.kohya_lora is None
    assert torch.equal(weights.prompt_embeds, make_prompt())


def test_load_casts_dtype(full_file):
    weights = load_lafr(full_file, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in weights.aligner.parameters())
    assert all(v.dtype == torch.float16 for v in weights.kohya_lora.values())
    assert weights.prompt_embeds.dtype == torch.float16


def test_half_precision_file_keeps_its_dtype(tmp_path):
    aligner = make_aligner().half()
    path = save_lafr(tmp_path / "h.safetensors", aligner=aligner)
    assert next(load_lafr(path).aligner.parameters()).dtype == torch.float16


def test_meta_overrides_and_adds(tmp_path):
    path = save_lafr(
        tmp_path / "x.safetensors",
        aligner=make_aligner(),
        meta={"lafr.prompt": "a face", "modelspec.title": "my run"},
    )
    meta = load_lafr(path).meta
    assert (meta["lafr.prompt"], meta["modelspec.title"]) == ("a face", "my run")


def test_fractional_alpha_is_recorded(tmp_path):
    path = save_lafr(tmp_path / "x.safetensors", kohya_lora=make_kohya(alpha=2.5), prompt_embeds=make_prompt())
    assert load_lafr(path).meta["lafr.lora_alpha"] == "2.5"


def test_load_never_keeps_module_on_meta_device(full_file):
    weights = load_lafr(full_file)
    assert not any(p.is_meta for p in weights.aligner.parameters())
    assert all(p.device.type == "cpu" for p in weights.aligner.parameters())


# --------------------------------------------------------------------------- save refuses


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "nothing to save"),
        ({"prompt_embeds": make_prompt()}, "nothing to save"),
        ({"kohya_lora": make_kohya()}, "LoRA needs its prompt_embeds"),
        ({"aligner": make_aligner(), "meta": {"lafr.note": 3}}, "metadata must map str to str"),
        ({"aligner": make_aligner(), "meta": {"lafr.base": "sdxl"}}, "trained for 'sdxl'"),
        ({"aligner": make_aligner(), "meta": {"lafr.trainer": "{oops"}}, "lafr.trainer is not valid JSON"),
        ({"aligner": make_aligner(), "meta": {"lafr.timestep": "late"}}, "not an integer"),
        ({"aligner": make_aligner(), "prompt_embeds": make_prompt((1, 77, 768))}, r"shape \[1, 77, 768\]"),
        (
            {"kohya_lora": {**make_kohya(), f"{LINEAR}.lora_down.weight": torch.randn(8, 320)}, "prompt_embeds": make_prompt()},
            "mixes ranks",
        ),
        (
            {"kohya_lora": {**make_kohya(), f"{LINEAR}.alpha": torch.tensor(8.0)}, "prompt_embeds": make_prompt()},
            "mixes alphas",
        ),
        ({"kohya_lora": make_kohya(), "prompt_embeds": make_prompt(), "meta": {"lafr.lora_alpha": "1"}}, "lafr.lora_alpha is 1"),
    ],
)
def test_save_refuses_invalid_content(tmp_path, kwargs, match):
    target = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match=match):
        save_lafr(target, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_other_suffix(tmp_path):
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_lafr(tmp_path / "x.pt", aligner=make_aligner())


# --------------------------------------------------------------------------- atomic write


def test_save_leaves_only_the_file(tmp_path):
    save_lafr(tmp_path / "a.safetensors", aligner=make_aligner())
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_saved_file_mode_follows_umask(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX modes")
    umask = os.umask(0o022)
    try:
        path = save_lafr(tmp_path / "a.safetensors", aligner=make_aligner())
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failing_save_keeps_existing_file(tmp_path, monkeypatch, failing):
    path = save_lafr(tmp_path / "a.safetensors", aligner=make_aligner(seed=0))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(f"lafr_core.lafr_file.os.{failing}", boom)
    with pytest.raises(OSError, match="disk full"):
        save_lafr(path, aligner=make_aligner(seed=1))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_save_overwrites_existing_file(tmp_path):
    path = save_lafr(tmp_path / "a.safetensors", aligner=make_aligner(seed=0))
    save_lafr(path, aligner=make_aligner(seed=1))
    loaded = load_lafr(path).aligner.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in make_aligner(seed=1).state_dict().items())


# --------------------------------------------------------------------------- container errors


def test_error_is_a_value_error_naming_the_file(tmp_path):
    assert issubclass(LafrFileError, ValueError)
    path = tmp_path / "missing.safetensors"
    with pytest.raises(LafrFileError) as info:
        load_lafr(path)
    assert str(path) in str(info.value) and info.value.path == path


@pytest.mark.parametrize("reader", [load_lafr, read_lafr_metadata])
def test_missing_path(tmp_path, reader):
    with pytest.raises(LafrFileError, match="does not exist"):
        reader(tmp_path / "nope.safetensors")


def test_directory(tmp_path):
    with pytest.raises(LafrFileError, match="is not a file"):
        load_lafr(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a safetensors file .it is a PNG image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "not a safetensors file .it is a JPEG image"),
        (b"hello, this is a text file\n", "not a safetensors file .it looks like a text file"),
        (b"", r"too short \(0 bytes\)"),
        (b"\x10\x00\x00", r"too short \(3 bytes\)"),
    ],
)
def test_not_safetensors(tmp_path, content, match):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(LafrFileError, match=match):
        load_lafr(path)


def test_truncated_data(full_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full_file.read_bytes()[: full_file.stat().st_size // 2])
    with pytest.raises(LafrFileError, match="truncated or corrupt: tensor .* beyond the end of the data"):
        load_lafr(cut)


def test_truncated_header(full_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full_file.read_bytes()[:40])
    with pytest.raises(LafrFileError, match="is truncated: its safetensors header declares"):
        load_lafr(cut)


def test_bad_json_header(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 11) + b'{"a": 1,,,}')
    with pytest.raises(LafrFileError, match="header is not valid JSON"):
        load_lafr(path)


def test_offsets_out_of_range(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}
    path = raw_safetensors(tmp_path / "x.safetensors", header, b"\x00" * 16)
    with pytest.raises(LafrFileError, match=r"data offsets \[0, 400\] beyond the end of the data section \(16 bytes\)"):
        load_lafr(path)


def test_offsets_with_gap(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    }
    path = raw_safetensors(tmp_path / "x.safetensors", header, b"\x00" * 20)
    with pytest.raises(LafrFileError, match="tensor 'b' starts at byte 12, expected 8"):
        load_lafr(path)


def test_trailing_bytes(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    path = raw_safetensors(tmp_path / "x.safetensors", header, b"\x00" * 12)
    with pytest.raises(LafrFileError, match="4 bytes follow the last tensor"):
        load_lafr(path)


def test_size_disagrees_with_dtype(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    path = raw_safetensors(tmp_path / "x.safetensors", header, b"\x00" * 8)
    with pytest.raises(LafrFileError, match=r"holds 8 bytes but F32 \[3\] needs 12"):
        load_lafr(path)


def test_torch_zip_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"adapter.x": torch.zeros(2)}, path)
    with pytest.raises(LafrFileError, match="pickle checkpoint .* never unpickles .* `export` command"):
        load_lafr(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_raw_pickle_is_refused(tmp_path, protocol):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=protocol))
    with pytest.raises(LafrFileError, match="is a pickle checkpoint"):
        read_lafr_metadata(path)


class _Trap:
    """Unpickling this creates a marker file: proves the loader never unpickles."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Trap(str(marker)), protocol=2))
    with pytest.raises(LafrFileError, match="pickle"):
        load_lafr(path)
    assert not marker.exists()


def test_safetensors_whose_length_field_starts_like_a_pickle(tmp_path):
    """A header of 0x10280 bytes is 80 02 01 00 ... on disk, like a pickle: it must still load."""
    target = 0x10280  # a multiple of 8, so safetensors' alignment padding lands on it exactly
    meta = {"lafr.pad": "x"}
    path = save_lafr(tmp_path / "a.safetensors", aligner=make_aligner(), meta=meta)
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    meta["lafr.pad"] = "x" * (1 + target - header_len)
    path = save_lafr(path, aligner=make_aligner(), meta=meta)
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert load_lafr(path).meta["lafr.pad"] == meta["lafr.pad"]


# --------------------------------------------------------------------------- not a LAFR file


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, "Stable Diffusion checkpoint"),
        ({f"{CONV}.lora_down.weight": torch.zeros(4, 2), f"{CONV}.alpha": torch.tensor(4.0)}, "plain LoRA"),
        ({"whatever": torch.zeros(2)}, "1 tensors without LAFR metadata"),
    ],
)
def test_not_a_lafr_file(tmp_path, tensors, match):
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(LafrFileError, match=f"not a LAFR file .no 'lafr.format' metadata; .*{match}"):
        load_lafr(path)


def test_unknown_format_version(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "v3.safetensors", meta={"lafr.format": "3"})
    with pytest.raises(LafrFileError, match="unknown LAFR format version '3'; this ComfyUI-LAFR reads formats 1 and 2"):
        load_lafr(path)


@pytest.mark.parametrize("base", ["sd1.5", "sdxl", "sd2.1-768"])
def test_wrong_base(full_file, tmp_path, base):
    path = rewrite(full_file, tmp_path / "b.safetensors", meta={"lafr.base": base})
    with pytest.raises(LafrFileError, match=f"trained for '{base}', but LAFR needs SD2.1-base"):
        read_lafr_metadata(path)


def test_wrong_prediction(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "v.safetensors", meta={"lafr.prediction": "v_prediction"})
    with pytest.raises(LafrFileError, match="for 'v_prediction' prediction, but LAFR needs an epsilon"):
        load_lafr(path)


def test_missing_metadata(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "m.safetensors", drop_meta=("lafr.latent_scale",))
    with pytest.raises(LafrFileError, match=r"missing metadata \['lafr.latent_scale'\]"):
        load_lafr(path)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"lafr.stages": "3"}, "lafr.stages is '3'; expected one of"),
        ({"lafr.timestep": "1000"}, "lafr.timestep is 1000"),
        ({"lafr.latent_scale": "-1"}, "lafr.latent_scale '-1' is not a positive number"),
        ({"lafr.lora_rank": "four"}, "lafr.lora_rank 'four' is not an integer"),
        ({"lafr.trainer": "[1, 2]"}, "lafr.trainer must be a JSON object"),
    ],
)
def test_bad_metadata_values(full_file, tmp_path, meta, match):
    path = rewrite(full_file, tmp_path / "m.safetensors", meta=meta)
    with pytest.raises(LafrFileError, match=match):
        load_lafr(path)


# --------------------------------------------------------------------------- sections


def test_stage_1_without_adapter(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", drop=("adapter.",))
    with pytest.raises(LafrFileError, match=r"lafr.stages is '1\+2' but the file has no adapter tensors"):
        load_lafr(path)


def test_stage_2_without_lora(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", drop=("lora_unet_",))
    with pytest.raises(LafrFileError, match=r"lafr.stages is '1\+2' but the file has no LoRA tensors"):
        load_lafr(path)


def test_stage_2_without_prompt(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", drop=("prompt_embeds",))
    with pytest.raises(LafrFileError, match="has a LoRA .stage 2. but no 'prompt_embeds' tensor"):
        load_lafr(path)


def test_stage_1_file_with_lora_tensors(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", meta={"lafr.stages": "1"})
    with pytest.raises(LafrFileError, match="lafr.stages is '1' but the file has LoRA tensors"):
        load_lafr(path)


def test_stage_2_file_with_adapter_tensors(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", meta={"lafr.stages": "2"})
    with pytest.raises(LafrFileError, match="lafr.stages is '2' but the file has adapter tensors"):
        load_lafr(path)


@pytest.mark.parametrize("suffix", [".lora_up.weight", ".lora_down.weight", ".alpha"])
def test_lora_layer_without_its_pair(full_file, tmp_path, suffix):
    path = rewrite(full_file, tmp_path / "s.safetensors", drop=(CONV + suffix,))
    with pytest.raises(LafrFileError, match=f"LoRA layer '{CONV}' lacks '{CONV}{suffix}'"):
        load_lafr(path)


def test_unexpected_tensor(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", add={"lora_te_text_model.alpha": torch.tensor(1.0)})
    with pytest.raises(LafrFileError, match="unexpected tensor 'lora_te_text_model.alpha'"):
        load_lafr(path)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("{not json", "lafr.adapter_config is invalid"),
        ('{"hidden_width": 3}', r"lafr.adapter_config is invalid \(adapter config has unknown keys \['hidden_width'\]"),
        ("[1]", "lafr.adapter_config is invalid .adapter config must be a JSON object"),
    ],
)
def test_bad_adapter_config(full_file, tmp_path, config, match):
    path = rewrite(full_file, tmp_path / "s.safetensors", meta={"lafr.adapter_config": config})
    with pytest.raises(LafrFileError, match=match):
        load_lafr(path)


def test_missing_adapter_config(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", drop_meta=("lafr.adapter_config",))
    with pytest.raises(LafrFileError, match="adapter tensors but no 'lafr.adapter_config'"):
        load_lafr(path)


def test_adapter_shapes_disagree_with_config(full_file, tmp_path):
    other = AlignerConfig(hidden_channels=16, codebook_size=16, codebook_dim=8, norm_groups=8)
    path = rewrite(full_file, tmp_path / "s.safetensors", meta={"lafr.adapter_config": other.to_json()})
    with pytest.raises(
        LafrFileError,
        match=r"adapter tensor 'adapter.extractor.0.weight' has shape \[32, 4, 3, 3\] but "
        r"lafr.adapter_config expects \[16, 4, 3, 3\]",
    ):
        load_lafr(path)


def test_adapter_tensor_missing(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", drop=("adapter.codebook.embed",))
    with pytest.raises(LafrFileError, match=r"adapter tensor 'adapter.codebook.embed' is missing"):
        load_lafr(path)


def test_adapter_tensor_extra(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", add={"adapter.extra.weight": torch.zeros(1)})
    with pytest.raises(LafrFileError, match="'adapter.extra.weight' is not part of the adapter"):
        load_lafr(path)


def test_prompt_embeds_wrong_shape(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", add={"prompt_embeds": make_prompt((1, 77, 768))})
    with pytest.raises(LafrFileError, match=r"'prompt_embeds' has shape \[1, 77, 768\] but LAFR needs \[1, 77, 1024\]"):
        load_lafr(path)


def test_lora_rank_disagrees_with_metadata(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", meta={"lafr.lora_rank": "8"})
    with pytest.raises(LafrFileError, match=rf"LoRA layer '{CONV}' has rank 4 .* but lafr.lora_rank is 8"):
        load_lafr(path)


def test_lora_up_rank_disagrees(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", add={f"{CONV}.lora_up.weight": torch.zeros(320, 2, 1, 1)})
    with pytest.raises(LafrFileError, match=r"lora_up \[320, 2, 1, 1\]\) but lafr.lora_rank is 4"):
        load_lafr(path)


def test_lora_alpha_value_disagrees(full_file, tmp_path):
    path = rewrite(full_file, tmp_path / "s.safetensors", add={f"{CONV}.alpha": torch.tensor(1.0)})
    read_lafr_metadata(path)  # header-only: alpha values are tensor data
    with pytest.raises(LafrFileError, match=f"'{CONV}.alpha' is 1 but lafr.lora_alpha is 4"):
        load_lafr(path)


# --------------------------------------------------------------------------- hosts


def test_module_imports_no_diffusers_peft_or_comfy():
    """Every host imports this file; only torch, safetensors and the adapter are allowed."""
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('lafr_core'); pkg.__path__ = [{str(REPO / 'lafr_core')!r}]\n"
        "sys.modules['lafr_core'] = pkg\n"
        "import lafr_core.lafr_file\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'peft', 'comfy', 'transformers'))\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_weights_helpers_without_file():
    weights = LafrWeights(aligner=make_aligner(), kohya_lora=None, prompt_embeds=None, meta={})
    assert (weights.stages, weights.has_adapter, weights.has_lora, weights.lora_rank) == ("1", True, False, None)
    assert weights.latent_scale == 0.18215 and weights.trainer == {}
