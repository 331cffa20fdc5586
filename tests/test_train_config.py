"""Trainer config and CLI: paper defaults, YAML < flags, checks, resume consistency, export."""

from dataclasses import replace

import pytest
import yaml

from lafr_core.lafr_file import load_lafr
from train.__main__ import build_parser, main
from train.config import ConfigError, TrainConfig, config_from_args, from_dict, merge
from train.stage1 import train_stage1
from train_helpers import portrait_folder, stage1_config, tiny_vae8
from train_helpers import one_thread  # noqa: F401  (autouse fixture)


def parse(argv):
    args = build_parser().parse_args(argv)
    return config_from_args(args, args.command)


def test_paper_defaults():
    c = TrainConfig()
    assert (c.stage1.lr, c.stage1.batch_size, c.stage1.epochs) == (1e-4, 16, 100)
    assert (c.adapter.codebook_size, c.adapter.codebook_dim) == (1024, 256)
    s2 = c.stage2
    assert (s2.lr, s2.batch_size, s2.steps, s2.lora_rank) == (5e-5, 2, 17000, 4)
    assert (s2.lambda_mse, s2.lambda_lpips, s2.lambda_id, s2.lambda_fs) == (1.0, 2.0, 1.0, 1.0)
    assert s2.prompt == "face, high quality" and c.data.resolution == 512
    assert c.degrade.downsample_scale == (1.0, 12.0) and c.degrade.jpeg_quality == (30, 95)


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stage1", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--lr", "--codebook_size", "--jpeg_quality", "--gradient_checkpointing", "--resume", "--variants"):
        assert flag in text
    assert "(default: 0.0001)" in text and "(default: [30, 95])" in text


def test_yaml_then_flags(tmp_path):
    data = portrait_folder(tmp_path)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({
        "data": {"data": [str(data)], "resolution": 256},
        "degrade": {"jpeg_quality": [50, 70]},
        "run": {"output_dir": str(tmp_path / "out"), "seed": 4},
        "stage1": {"lr": 3e-4},
    }))
    c = parse(["stage1", "--config", str(config_file), "--lr", "2e-4", "--jpeg_quality", "40", "60", "--no-latent_cache"])
    assert c.stage1.lr == 2e-4 and c.run.seed == 4 and c.data.resolution == 256
    assert c.degrade.jpeg_quality == (40, 60) and c.data.latent_cache is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resolution", "100"], "multiple of 8"),
        (["--mixed_precision", "fp8"], "mixed_precision"),
        (["--jpeg_prob", "2"], "jpeg_prob must be a probability"),
        (["--batch_size", "two"], "batch_size.*not a valid int"),
        (["--align", "guess"], "align must be one of"),
    ],
)
def test_bad_values_are_refused_by_name(tmp_path, argv, message):
    data = portrait_folder(tmp_path)
    with pytest.raises(ConfigError, match=message):
        parse(["stage1", "--data", str(data), "--output_dir", str(tmp_path / "o"), *argv])


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no data"):
        parse(["stage1", "--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse(["stage1", "--data", str(tmp_path / "nope"), "--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="stage2 needs the stage-1 file"):
        parse(["stage2", "--data", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="unknown setting.*'lr'"):
        from_dict(TrainConfig, {"run": {"lr": 1}})


def test_resume_refuses_changed_training_settings_and_export_rewrites_the_file(tmp_path, capsys):
    data = portrait_folder(tmp_path)
    out = tmp_path / "run"
    first = train_stage1(stage1_config(data, out, max_steps=2), vae=tiny_vae8())
    saved = from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text()))
    assert saved == stage1_config(data, out, max_steps=2)

    with pytest.raises(ConfigError, match="already holds a run with checkpoints"):
        train_stage1(stage1_config(data, out, max_steps=4), vae=tiny_vae8())
    changed = stage1_config(data, out, max_steps=4, resume="latest")
    changed.stage1 = replace(changed.stage1, lr=1.0)
    with pytest.raises(ConfigError, match=r"stage1\.lr: 0\.002 -> 1\.0"):
        train_stage1(changed, vae=tiny_vae8())
    longer = train_stage1(stage1_config(data, out, max_steps=4, resume="latest", log_every=2), vae=tiny_vae8())
    assert longer.state.step == 4

    # CLI resume reads the saved config (no --data needed)
    args = build_parser().parse_args(["stage1", "--output_dir", str(out), "--resume", "latest", "--max_steps", "5"])
    resumed = config_from_args(args, "stage1")
    assert resumed.data.data == (str(data),) and resumed.run.max_steps == 5 and resumed.stage1.lr == 2e-3

    target = tmp_path / "exported.safetensors"
    assert main(["export", str(out), "--output", str(target)]) == 0
    exported, original = load_lafr(target), load_lafr(longer.export)
    assert exported.stages == "1" and exported.meta == original.meta
    assert all((exported.aligner.state_dict()[k] == v).all() for k, v in original.aligner.state_dict().items())
    assert first.state.step == 2
    with pytest.raises(SystemExit) as stop:  # a message and exit code 2, no traceback
        main(["export", str(tmp_path / "empty")])
    assert stop.value.code == 2 and "no checkpoint to export" in capsys.readouterr().err


def test_merge_keeps_unrelated_sections():
    c = merge(TrainConfig(), {"stage1": {"lr": 0.5}})
    assert c.stage1.lr == 0.5 and c.stage2 == TrainConfig().stage2


def test_degrade_preset_flag_sets_the_preset_and_single_flags_still_override(tmp_path):
    data = portrait_folder(tmp_path)
    c = parse(["stage2", "--data", str(data), "--output_dir", str(tmp_path / "r"), "--adapter", str(data / "astronaut.png"),
               "--degrade_preset", "codeformer", "--jpeg_quality", "70", "90"])  # fmt: skip
    from lafr_core.degrade import DegradeConfig

    assert c.degrade == replace(DegradeConfig.preset("codeformer"), jpeg_quality=(70, 90))
    assert c.uses_latent_cache is False  # stage 2 degrades on the fly unless --latent_cache
    assert parse(["stage1", "--data", str(data), "--output_dir", str(tmp_path / "s")]).uses_latent_cache is True


def test_all_flags_prefix_the_names_both_stages_share():
    text = build_parser().parse_args(["all", "--output", "x.safetensors", "--stage1_lr", "3e-4", "--stage2_batch_size", "4", "--fs_checkpoint", "d.pth"])
    from train.run_all import all_config_from_args

    c = all_config_from_args(text)
    assert (c.stage1.lr, c.stage2.batch_size, c.stage2.fs_checkpoint) == (3e-4, 4, "d.pth")
    assert (c.stage2.lr, c.stage1.batch_size, c.stage1.epochs, c.stage2.steps) == (5e-5, 16, 100, 17000)  # the paper's
    assert c.run.output_dir == "lafr_runs/x"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["all", "--output", "x.safetensors", "--adapter", "a.safetensors"])  # all makes its own
