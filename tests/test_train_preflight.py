"""Start-up checks (train/preflight.py): a new user's first command, offline, with pieces missing,
gets one message listing every problem and how to fix it, exit code 2, no traceback."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import DATA_DIR, REPO
from train.config import Stage2Config, TrainConfig
from train.preflight import check_inputs

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "", "TORCH_HOME": ""}


def run_cli(tmp_path, *args):
    """`python -m train ...` in a fresh process, offline, with empty HF and torch caches."""
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


class Done:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """The same CLI in this process (quick): offline, empty caches as seen by the checks."""
    import torch

    import train.preflight as preflight
    from train.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(preflight, "_in_hub_cache", lambda repo, name: False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch" / "hub"))

    def run(_tmp, *args):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main(list(args))
        return Done(stop.value.code, capsys.readouterr().err)

    return run


@pytest.fixture
def faces(tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(DATA_DIR / "astronaut.png", folder / "astronaut.png")
    shutil.copy(DATA_DIR / "grace_hopper.jpg", folder / "sub" / "grace_hopper.jpg")
    return folder


def test_stage1_without_the_base_model_names_the_forms_it_accepts(tmp_path, faces):
    done = run_cli(tmp_path, "stage1", "--data", str(faces), "--output_dir", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "LocalEntryNotFoundError" not in done.stderr
    text = done.stderr
    assert "1 problem(s)" in text
    assert "'stabilityai/stable-diffusion-2-1-base' is not in the Hugging Face cache" in text
    for form in ("single-file checkpoint", "diffusers folder (with unet/ and vae/)", "hub id"):
        assert form in text
    assert not (tmp_path / "run").exists()  # nothing started


def test_stage2_lists_every_missing_input_at_once(tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    done = cli(
        tmp_path, "stage2", "--data", str(empty), str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "run"),
        "--adapter", str(tmp_path / "s1.safetensors"), "--base_model", str(tmp_path / "v2-1_512.safetensors"),
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    text = done.stderr
    assert "8 problem(s)" in text
    expected = [
        f"data folder '{empty}' holds no images",
        f"data folder '{tmp_path / 'nowhere'}' does not exist",
        f"base model '{tmp_path / 'v2-1_512.safetensors'}' not found",
        f"stage-1 adapter file '{tmp_path / 's1.safetensors'}' does not exist",
        "text encoder: hub id 'stabilityai/stable-diffusion-2-1-base' is not in the Hugging Face cache",  # a single file has no tokenizer
        f"LPIPS (vgg) needs torchvision's ImageNet weights at '{tmp_path / 'torch' / 'hub' / 'checkpoints' / 'vgg16-397923af.pth'}'",
        "CLIP image encoder: hub id 'h94/IP-Adapter' is not in the Hugging Face cache",
        "no D3DFR checkpoint; pass --fs_checkpoint",
    ]
    for line in expected:
        assert line in text, line
    assert "--lambda_lpips 0" in text and "--lambda_id 0" in text and "--lambda_fs 0" in text and "--prompt_embeds FILE" in text


def test_a_zero_lambda_needs_no_weights_and_bad_settings_join_the_list(tmp_path, faces, cli):
    base = tmp_path / "sd21"
    (base / "unet").mkdir(parents=True)  # a diffusers folder without its VAE
    (base / "unet" / "config.json").write_text("{}")
    done = cli(
        tmp_path, "stage2", "--data", str(faces), "--output_dir", str(tmp_path / "run"), "--adapter", str(tmp_path / "s1.safetensors"),
        "--base_model", str(base), "--prompt_embeds", str(tmp_path / "p.safetensors"),
        "--lambda_lpips", "0", "--lambda_id", "0", "--fs_checkpoint", str(tmp_path / "d3dfr.pth"), "--lr", "-1",
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    text = done.stderr
    assert "5 problem(s)" in text
    assert f"base model folder '{base}' is not a diffusers model (no vae/config.json)" in text
    assert f"prompt embedding file '{tmp_path / 'p.safetensors'}' not found" in text
    assert f"facial-structure regressor '{tmp_path / 'd3dfr.pth'}' not found" in text
    assert "stage2 needs lr > 0" in text
    assert "LPIPS" not in text and "CLIP" not in text


def test_all_checks_stage2_inputs_before_stage1_starts(tmp_path, faces, cli):
    done = cli(tmp_path, "all", "--data", str(faces), "--output", str(tmp_path / "models" / "mine.safetensors"),
                   "--output_dir", str(tmp_path / "work"), "--lambda_id", "0", "--lambda_lpips", "0", "--stage1_lr", "-1")  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "4 problem(s)" in done.stderr  # base model, text encoder, D3DFR, stage 1's lr
    assert "stage1 needs lr > 0" in done.stderr
    assert "no D3DFR checkpoint" in done.stderr and not (tmp_path / "work" / "stage1").exists()
    bad = cli(tmp_path, "all", "--data", str(faces), "--output", str(tmp_path / "mine.ckpt"))
    assert bad.returncode == 2 and "must be a .safetensors file" in bad.stderr


def test_checks_pass_and_count_images_when_everything_is_there(tmp_path, faces):
    base = tmp_path / "v2-1_512-ema-pruned.safetensors"
    base.write_bytes(b"x")  # presence and form only: loading checks the content
    fs = tmp_path / "epoch_20.pth"
    fs.write_bytes(b"x")
    clip = tmp_path / "clip"
    (clip / "models" / "image_encoder").mkdir(parents=True)
    (clip / "models" / "image_encoder" / "config.json").write_text("{}")
    backbone = tmp_path / "vgg.pth"
    backbone.write_bytes(b"x")
    adapter = tmp_path / "s1.safetensors"
    adapter.write_bytes(b"x")
    config = TrainConfig(stage="stage2")
    config.data.data = (str(faces),)
    config.run.base_model = str(base)
    config.run.output_dir = str(tmp_path / "run")
    config.stage2 = Stage2Config(adapter=str(adapter), fs_checkpoint=str(fs), clip_encoder=str(clip), lpips_backbone=str(backbone), prompt_embeds=str(adapter))
    report = check_inputs(config, ("stage2",))
    assert report.problems == []
    assert report.image_count == 2 and f"data: 2 image file(s) in {faces}" in report.notes


def test_loading_a_missing_hub_base_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    """Past the start-up checks (programmatic use), huggingface_hub's LocalEntryNotFoundError
    still becomes the trainer's ConfigError naming the accepted forms."""
    import huggingface_hub.constants as hub

    from train.config import ConfigError
    from train.models import load_base_models

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ConfigError) as err:
        load_base_models("stabilityai/stable-diffusion-2-1-base", need_unet=False)
    text = str(err.value)
    assert text.startswith("cannot load the base model 'stabilityai/stable-diffusion-2-1-base' (LocalEntryNotFoundError")
    assert "a diffusers folder (with unet/ and vae/)" in text
