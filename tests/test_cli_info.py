"""`python -m lafr_core info`: describes valid files, reports invalid ones, exit code says which."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lafr_core.__main__ import COMMANDS, main
from lafr_core.adapter import AlignerConfig, LatentAligner, count_parameters
from lafr_core.lafr_file import save_lafr

REPO = Path(__file__).resolve().parents[1]
SMALL = AlignerConfig(hidden_channels=32, codebook_size=16, codebook_dim=8, norm_groups=8)
LAYER = "lora_unet_input_blocks_1_0_in_layers_2"
TRAINER = {"version": "0.1.0", "steps": 17000, "images": 600}


def kohya(rank: int = 4) -> dict[str, torch.Tensor]:
    return {
        f"{LAYER}.lora_down.weight": torch.randn(rank, 320, 3, 3),
        f"{LAYER}.lora_up.weight": torch.randn(320, rank, 1, 1),
        f"{LAYER}.alpha": torch.tensor(float(rank)),
    }


@pytest.fixture
def valid_file(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_lafr(
        tmp_path / "lafr.safetensors",
        aligner=LatentAligner(SMALL),
        kohya_lora=kohya(),
        prompt_embeds=torch.randn(1, 77, 1024),
        meta={"lafr.trainer": json.dumps(TRAINER)},
    )


@pytest.fixture
def invalid_file(tmp_path) -> Path:
    path = tmp_path / "photo.safetensors"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return path


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lafr_core", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_info_valid_file(valid_file):
    result = run_cli("info", valid_file)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    adapter_params = count_parameters(LatentAligner(SMALL))
    lora_params = 4 * 320 * 9 + 320 * 4
    assert lines[0] == f"{valid_file}: valid LAFR file"
    assert "  format:         1" in lines
    assert "  base:           sd2.1-base (epsilon, timestep 999)" in lines
    assert "  latent scale:   0.18215" in lines
    assert "  stages:         1+2" in lines
    assert f"  adapter:        {adapter_params:,} parameters, config {SMALL.to_json()}" in lines
    assert f"  lora:           1 layer, {lora_params:,} parameters, rank 4, alpha 4" in lines
    assert "  prompt:         'face, high quality'" in lines
    assert "  prompt_embeds:  [1, 77, 1024] float32" in lines
    assert f"  trainer:        {json.dumps(TRAINER, sort_keys=True)}" in lines


def test_info_invalid_file(invalid_file):
    result = run_cli("info", invalid_file)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{invalid_file}: INVALID"
    assert "is not a safetensors file (it is a PNG image)" in lines[1]


def test_info_mixed_files_fail_but_report_each(valid_file, invalid_file, tmp_path):
    missing = tmp_path / "missing.safetensors"
    result = run_cli("info", invalid_file, valid_file, missing)
    assert result.returncode == 1
    out = result.stdout
    assert f"{invalid_file}: INVALID" in out
    assert f"{valid_file}: valid LAFR file" in out
    assert f"{missing}: INVALID" in out and "does not exist" in out


def test_info_in_process_adapter_only(tmp_path, capsys):
    path = save_lafr(tmp_path / "stage1.safetensors", aligner=LatentAligner(AlignerConfig()))
    assert main(["info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"  adapter:        {count_parameters(LatentAligner(AlignerConfig())):,} parameters, " \
        f"config {AlignerConfig().to_json()}" in lines
    assert "  stages:         1" in lines
    assert "  lora:           none" in lines
    assert "  prompt_embeds:  none" in lines
    assert "  trainer:        (not recorded)" in lines


def test_info_needs_a_file(capsys):
    with pytest.raises(SystemExit) as info:
        main(["info"])
    assert info.value.code == 2


def test_commands_are_registered_in_one_place():
    assert "info" in COMMANDS
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_eval_is_a_lafr_command(tmp_path):
    """`lafr eval` is registered: the LQ faces scored as they are, files written, exit 0."""
    from lafr_core.__main__ import main

    out = tmp_path / "eval"
    code = main(["eval", "--hq", str(Path(__file__).parent / "data"), "--preset", "x4", "--restorer", "none",
                 "--no-lmd", "--identity", "none", "--lpips", "none", "--no-fid", "-o", str(out)])
    assert code == 0
    assert {"eval.csv", "summary.md", "contact_sheet.png"} <= {p.name for p in out.iterdir()}
