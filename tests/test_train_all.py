"""`python -m train all` (train/run_all.py) with tiny models: stage 1 + stage 2 + export in one
call; interrupted (Ctrl-C in stage 1, a crash in stage 2) and rerun, it writes bit-identical
weights to the uninterrupted run."""

import signal
from dataclasses import replace

import pytest
import torch

from lafr_core.lafr_file import load_lafr
from train.config import ConfigError, DataConfig, RunConfig, Stage1Config, Stage2Config, TrainConfig
from train.models import BaseModels
from train.run_all import train_all
from train_helpers import RES, TINY_ADAPTER, portrait_folder, tiny_encoders, tiny_unet_1024, tiny_vae8
from train_helpers import one_thread  # noqa: F401  (autouse fixture)

PROMPT = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(3))
S1_STEPS, S2_STEPS = 4, 4  # 2 images at batch 1: stage 1 = 2 epochs; stage 2 crosses an epoch too


def all_config(data, work, **stage1):
    return TrainConfig(
        stage="stage1",
        data=DataConfig(data=(str(data),), resolution=RES, align="resize", variants=2, num_workers=0, val_images=1),
        run=RunConfig(output_dir=str(work), seed=0, checkpoint_every=2, log_every=1, validate_every=2),
        stage1=Stage1Config(lr=2e-3, batch_size=1, epochs=S1_STEPS // 2, reseed_every=2, **stage1),
        adapter=TINY_ADAPTER,
        stage2=Stage2Config(lr=1e-3, batch_size=1, steps=S2_STEPS),
    )


def run(config, output, on_step=None, logs=None):
    base = BaseModels(unet=tiny_unet_1024(), vae=tiny_vae8())  # fresh: stage 2 adds its LoRA in place
    return train_all(config, output, base=base, prompt_embeds=PROMPT, encoder_factory=tiny_encoders, on_step=on_step,
                     log=(logs.append if logs is not None else print))  # fmt: skip


def weights(path):
    w = load_lafr(path)
    return {**{f"adapter.{k}": v for k, v in w.aligner.state_dict().items()}, **w.kohya_lora, "prompt_embeds": w.prompt_embeds}


def test_all_in_one_command_and_resume_gives_the_same_weights(tmp_path):
    data = portrait_folder(tmp_path)
    straight = run(all_config(data, tmp_path / "straight"), tmp_path / "models" / "straight.safetensors")
    assert not straight.interrupted and straight.output == tmp_path / "models" / "straight.safetensors"
    assert straight.results["stage1"].state.step == S1_STEPS and straight.results["stage2"].state.step == S2_STEPS
    file = load_lafr(straight.output)
    assert file.stages == "1+2" and file.trainer["steps"] == S2_STEPS and torch.equal(file.prompt_embeds, PROMPT)
    for stage in ("stage1", "stage2"):  # validation every 2 steps (and at the end)
        grids = sorted(p.name for p in (tmp_path / "straight" / stage / "validation").glob("*.png"))
        assert grids == ["step-00000002.png", "step-00000004.png"], (stage, grids)
    # stage 2 scores its validation faces with the eval's numbers, one CSV row per validation
    rows = (tmp_path / "straight" / "stage2" / "validation" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[0] == "step" and {"psnr", "ssim", "lmd", "lpips", "psnr_aligned"} <= set(header)
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    values = dict(zip(header, map(float, rows[-1].split(","))))
    assert 5 < values["psnr"] < 60 and 0 < values["ssim"] <= 1 and values["lpips"] >= 0
    # stage 2 degraded on the fly: no latent cache of its own, stage 1's cache shared in work/cache
    assert not (tmp_path / "straight" / "stage2" / "cache").exists()
    assert list((tmp_path / "straight" / "cache" / "latents").glob("*/*.safetensors"))

    # interrupted: a real Ctrl-C after stage-1 step 3, then a crash in stage 2 after step 3
    # (its last checkpoint is step 2): each rerun of the same call continues where it stopped
    work, output = tmp_path / "resumed", tmp_path / "models" / "resumed.safetensors"
    config = all_config(data, work)

    def ctrl_c(stage, step):
        if (stage, step) == ("stage1", 3):
            signal.raise_signal(signal.SIGINT)

    first = run(config, output, on_step=ctrl_c)
    assert first.interrupted and first.output is None and not output.exists()
    assert first.results["stage1"].state.step == 3 and first.results["stage2"] is None

    class Crash(Exception):
        pass

    def crash(stage, step):
        if (stage, step) == ("stage2", 3):
            raise Crash

    logs = []
    with pytest.raises(Crash):
        run(config, output, on_step=crash, logs=logs)
    checkpoints = sorted(p.name for p in (work / "stage2" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-00000002"]  # the crash left the last atomic checkpoint

    logs = []
    third = run(config, output, logs=logs)
    assert not third.interrupted and third.output == output
    assert third.results["stage1"] is None  # finished before: skipped
    assert any("stage 1/2: finished before" in line for line in logs)
    assert third.results["stage2"].state.step == S2_STEPS
    assert [s for s, _ in third.results["stage2"].history] == [3, 4]  # resumed after step 2

    a, b = weights(straight.output), weights(output)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []  # bit-exact: same data order, degradations, RNG and optimizer state

    # a finished run with a changed setting is refused, not silently skipped
    with pytest.raises(ConfigError, match="stage1.lr: 0.002 -> 0.001"):
        run(replace(config, stage1=replace(config.stage1, lr=1e-3)), output)


def test_the_command_line_runs_both_stages_and_a_rerun_skips_them(tmp_path):
    """`python -m train all` end to end, offline, on a tiny diffusers base folder and a saved
    prompt embedding, with the encoder losses off (no weights here)."""
    import os
    import subprocess
    import sys

    from conftest import REPO
    from train.prompt import save_prompt_embeds

    base = tmp_path / "sd21-tiny"
    tiny_unet_1024().save_pretrained(base / "unet")
    tiny_vae8().save_pretrained(base / "vae")
    (base / "scheduler").mkdir()
    (base / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "epsilon"}')
    prompt = save_prompt_embeds(PROMPT, tmp_path / "prompt.safetensors", "face, high quality")
    output = tmp_path / "models" / "lafr" / "mine.safetensors"
    command = [
        sys.executable, "-m", "train", "all", "--data", str(portrait_folder(tmp_path)), "--output", str(output),
        "--output_dir", str(tmp_path / "work"), "--base_model", str(base), "--prompt_embeds", str(prompt),
        "--lambda_lpips", "0", "--lambda_id", "0", "--lambda_fs", "0", "--resolution", str(RES), "--align", "resize",
        "--variants", "2", "--num_workers", "0", "--val_images", "1", "--val_identity", "none", "--validate_every", "0",
        "--stage1_batch_size", "1", "--epochs", "1", "--stage2_batch_size", "1", "--steps", "2", "--degrade_preset", "codeformer",
        "--hidden_channels", "32", "--codebook_size", "128", "--codebook_dim", "8", "--norm_groups", "8",
        "--extractor_blocks", "1", "--mapping_blocks", "1",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage 1/2: the latent alignment adapter" in done.stdout and f"wrote {output}" in done.stdout
    assert "data: 2 image file(s)" in done.stdout
    assert "stage1: 100%" in done.stderr and "stage2: 100%" in done.stderr and "<00:00" in done.stderr  # bars with ETA
    file = load_lafr(output)
    assert file.stages == "1+2" and file.trainer["steps"] == 2 and torch.equal(file.prompt_embeds, PROMPT)
    saved = (tmp_path / "work" / "stage2" / "config.yaml").read_text()
    assert "kernel_types:\n  - iso\n  - aniso" in saved  # the preset reached the run

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage 1/2: finished before" in again.stdout and "stage 2/2: finished before" in again.stdout
    assert torch.equal(load_lafr(output).kohya_lora[next(iter(file.kohya_lora))], next(iter(file.kohya_lora.values())))
