"""`lafr restore / eval / info` with InterLCM: the real code path (model lookup, from_pretrained of
diffusers / transformers folders, the converted file, the face chain) on tiny random models saved
as the folders a user downloads (LCM Dreamshaper v7: unet/ + vae/; CLIP ViT-B/16 save_pretrained),
on the real test photos. The spatial encoder is a tiny ControlNet: the loader's sentinel shapes
and the pipeline's ControlNet config are patched to it (the full one is 1.4 GB); `info` reads a
real-format file (full-size visual encoder, full-size sentinel layers)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face_fixtures import DATA
from lafr_core.__main__ import build_parser, main as lafr_main
from lafr_core.face import paste_faces
from lafr_core.host_chain import FaceOptions, find_and_align
from lafr_core.image_io import read_image
from lafr_core.interlcm import pipeline as pipeline_mod
from lafr_core.interlcm.visual_encoder import VisualEncoder
from lafr_core.interlcm.weights import SPATIAL_SENTINELS, base_metadata, save_interlcm
from lafr_core.restore_cli import EXIT_MISSING_WEIGHTS, find_weights, main

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from interlcm_fixtures import LICENCE, SOURCE, TINY_UNET, home, tiny  # noqa: E402, F401 - fixtures are used by name


def restore(*argv) -> int:
    return main(build_parser().parse_args(["restore", *map(str, argv)]))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def lafr_file(tmp_path: Path) -> Path:
    """A small valid LAFR file (stage 1: a narrow adapter)."""
    from lafr_core.adapter import AlignerConfig, LatentAligner
    from lafr_core.lafr_file import save_lafr

    config = AlignerConfig(hidden_channels=32, codebook_size=16, codebook_dim=8, norm_groups=8)
    return save_lafr(tmp_path / "lafr.safetensors", aligner=LatentAligner(config))


# --------------------------------------------------------------------------- restore


def test_restore_runs_interlcm_from_the_file_alone_and_equals_pipeline_plus_paste(tmp_path, home, tiny, capsys):
    """No --engine: the converted file selects InterLCM. Each photo's output is the chain by hand:
    MTCNN -> aligned crops -> InterLCMPipeline.restore (seed 0, no colour fix) -> paste with the
    file's wavelet colour fix; the face changes, the far corner does not."""
    photos = [shutil.copy(DATA / name, tmp_path) for name in ("astronaut.png", "grace_hopper.jpg")]
    out = tmp_path / "out"
    assert restore(*photos, "-o", out, "--lafr", tiny.file, "--lcm", tiny.lcm, "--clip-vision", tiny.clip,
                   "--detector", "mtcnn", "--device", "cpu", "--save-crops") == 0
    printed = capsys.readouterr().out
    assert "astronaut.png: 1 face" in printed and "grace_hopper.jpg: 1 face" in printed

    pipe = pipeline_mod.InterLCMPipeline.from_pretrained(tiny.lcm, tiny.clip, tiny.file, seed=0, device="cpu")
    for photo in photos:
        image = read_image(photo).pixels
        crops, faces = find_and_align(image, FaceOptions(detector="mtcnn"))
        restored = pipe.restore(crops, colour_fix="none")
        expected = paste_faces(image, restored, faces, colour_correction="wavelet", source_crops=crops)
        got = torch.from_numpy(pixels(out / Path(photo).name)) / 255
        if Path(photo).suffix == ".png":
            assert (got - expected[0]).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
        else:
            assert (got - expected[0]).abs().mean() < 2 / 255  # JPEG re-encoding
        crop = pixels(out / f"{Path(photo).stem}.face0.restored.png") / 255
        assert np.abs(crop - restored[0].numpy()).max() <= 0.5 / 255 + 1e-6
        before = pixels(photo)
        after = pixels(out / Path(photo).name)
        x0, y0, x1, y1 = faces.boxes[0].int().tolist()
        assert np.abs(after - before)[y0:y1, x0:x1].mean() > 5  # restored by random weights: clearly changed
        assert np.abs(after - before)[:20, :20].mean() < 2


def test_seed_draws_other_noise_and_colour_choice_is_the_users(tmp_path, home, tiny, capsys):
    photo = shutil.copy(DATA / "astronaut.png", tmp_path)
    common = ["--lafr", tiny.file, "--lcm", tiny.lcm, "--clip-vision", tiny.clip, "--detector", "mtcnn", "--device", "cpu"]
    runs = {name: tmp_path / name / "astronaut.png" for name in ("default", "seed7", "none")}
    assert restore(photo, "-o", runs["default"], *common, "--engine", "interlcm") == 0  # seed 0 (the first test's)
    assert restore(photo, "-o", runs["seed7"], *common, "--seed", "7") == 0
    assert restore(photo, "-o", runs["none"], *common, "--colour-correction", "none") == 0
    default, seed7, raw = (pixels(runs[k]) for k in ("default", "seed7", "none"))
    assert np.abs(default - seed7).mean() > 0.05  # other noise, another face
    assert np.abs(default - raw).mean() > 0.05  # wavelet (the file's) vs none


def test_model_folders_and_hub_cache_are_searched(tmp_path, home, tiny, capsys):
    """No flags: the file in ComfyUI/models/lafr (beside a LAFR file: --engine interlcm picks the
    InterLCM one), LCM Dreamshaper v7 in ComfyUI/models/diffusers (an SD1.5 folder there is
    passed over), CLIP in the hub cache (also what its hub id resolves to, offline)."""
    from diffusers import UNet2DConditionModel

    models = home / "ComfyUI" / "models"
    (models / "lafr").mkdir(parents=True)
    shutil.copy(lafr_file(tmp_path), models / "lafr" / "a_lafr.safetensors")
    shutil.copy(tiny.file, models / "lafr" / "b_interlcm.safetensors")
    UNet2DConditionModel(**TINY_UNET).save_pretrained(models / "diffusers" / "A_sd15" / "unet")  # no LCM guidance embedding
    (models / "diffusers" / "A_sd15" / "vae").mkdir()
    shutil.copytree(tiny.lcm, models / "diffusers" / "LCM_Dreamshaper_v7")
    snapshot = home / ".cache" / "huggingface" / "hub" / "models--openai--clip-vit-base-patch16" / "snapshots" / "0123abc"
    shutil.copytree(tiny.clip, snapshot)

    found = find_weights(None, None, engine="interlcm")
    assert (found.engine, found.missing) == ("interlcm", None)
    assert found.lafr == models / "lafr" / "b_interlcm.safetensors"
    assert found.lcm == str(models / "diffusers" / "LCM_Dreamshaper_v7") and found.clip_vision == str(snapshot)
    assert find_weights(None, None, engine="interlcm", clip_vision="openai/clip-vit-base-patch16").clip_vision == str(snapshot)
    assert find_weights(None, None).lafr == models / "lafr" / "a_lafr.safetensors"  # no engine asked: LAFR files first
    assert find_weights(None, None, lcm=str(tiny.lcm)).lafr == models / "lafr" / "b_interlcm.safetensors"  # --lcm: InterLCM

    photo = shutil.copy(DATA / "astronaut.png", tmp_path)
    assert restore(photo, "-o", tmp_path / "out", "--engine", "interlcm", "--detector", "mtcnn", "--device", "cpu") == 0
    assert "astronaut.png: 1 face -> " in capsys.readouterr().out


def test_missing_base_models_name_every_place_and_still_preview(tmp_path, home, tiny, capsys):
    photo = shutil.copy(DATA / "astronaut.png", tmp_path)
    out = tmp_path / "out"
    assert restore(photo, "-o", out, "--lafr", tiny.file, "--detector", "mtcnn", "--device", "cpu") == EXIT_MISSING_WEIGHTS
    text = capsys.readouterr().out
    assert "astronaut.png: 1 face" in text
    assert "LCM Dreamshaper v7 (InterLCM's UNet and VAE): none found" in text
    assert "CLIP ViT-B/16 (InterLCM's image encoder): none found" in text
    assert "SD2.1-base" not in text and "InterLCM weights" not in text  # the file was given; LAFR's base is not needed
    for place in ("LAFR_LCM_MODEL (not set)", f"{home}/ComfyUI/models/diffusers", f"{home}/stable-diffusion-webui/models/diffusers",
                  "(SimianLuo/LCM_Dreamshaper_v7)", "LAFR_CLIP_VISION (not set)", f"{home}/ComfyUI/models/clip_vision",
                  f"{home}/stable-diffusion-webui/models/clip_vision", "(openai/clip-vit-base-patch16)", f"{home}/.cache/huggingface/hub"):
        assert place in text, place
    assert "hf download SimianLuo/LCM_Dreamshaper_v7" in text and "--lcm FOLDER" in text and "--clip-vision FOLDER" in text
    assert (out / "astronaut.preview.png").is_file() and not (out / "astronaut.png").exists()

    assert restore(photo, "-o", out, "--engine", "interlcm", "--lcm", tmp_path / "nowhere", "--clip-vision", tiny.clip,
                   "--detector", "mtcnn") == EXIT_MISSING_WEIGHTS
    text = capsys.readouterr().out
    assert "InterLCM weights: none found" in text and f"--lcm {tmp_path / 'nowhere'}" in text
    assert "lafr convert visual_encoder_1step.pth spatial_encoder_1step.pth" in text and "CLIP ViT-B/16" not in text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--engine", "interlcm", "--lafr", "LAFR"], "error: --engine interlcm: 'LAFR' is a LAFR file (lafr.engine 'lafr'); give a converted InterLCM file"),
        (["--engine", "lafr", "--lafr", "INTERLCM"], "error: --engine lafr: 'INTERLCM' is a converted InterLCM file (lafr.engine 'interlcm'); leave --engine out"),
        (["--lafr", "INTERLCM", "--base", "sd21"], "error: --base is SD2.1-base, LAFR's base model; InterLCM runs on LCM Dreamshaper v7: give --lcm"),
        (["--lafr", "LAFR", "--lcm", "LCM"], "error: --lcm is InterLCM's; 'LAFR' is a LAFR file (lafr.engine 'lafr'), which runs on SD2.1-base"),
        (["--lafr", "LAFR", "--seed", "3", "--base", "sd21"], "error: --seed seeds InterLCM's noise; LAFR restores deterministically"),
        (["--lafr", "INTERLCM", "--prompt", "a face"], "error: --prompt is LAFR's: InterLCM takes no text"),
    ],
)
def test_flags_of_the_other_engine_are_one_line_errors(tmp_path, home, tiny, capsys, flags, message):
    names = {"LAFR": str(lafr_file(tmp_path)), "INTERLCM": str(tiny.file), "LCM": str(tiny.lcm), "sd21": str(tmp_path)}
    flags = [names.get(f, f) for f in flags]
    message = message.replace("'LAFR'", f"'{names['LAFR']}'").replace("'INTERLCM'", f"'{names['INTERLCM']}'")
    out = tmp_path / "out"
    assert restore(DATA / "astronaut.png", "-o", out, *flags, "--detector", "mtcnn") == 1
    printed = capsys.readouterr().out
    assert printed.startswith(message) and printed.count("\n") == 1, printed
    assert not out.exists()


def test_steps_is_not_an_option_the_files_are_used(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["restore", "x.png", "-o", "out", "--steps", "3"])
    assert "unrecognized arguments: --steps 3" in capsys.readouterr().err


def test_a_broken_interlcm_file_or_base_model_folder_is_one_line(tmp_path, home, tiny, capsys):
    broken = tmp_path / "interlcm_1step.safetensors"
    broken.write_bytes(tiny.file.read_bytes()[:4096])  # truncated
    common = ["--lcm", tiny.lcm, "--clip-vision", tiny.clip, "--detector", "mtcnn", "--device", "cpu"]
    assert restore(DATA / "astronaut.png", "-o", tmp_path / "o1", "--engine", "interlcm", "--lafr", broken, *common) == 1
    assert "is truncated" in capsys.readouterr().out
    empty = tmp_path / "empty_lcm"
    empty.mkdir()
    assert restore(DATA / "astronaut.png", "-o", tmp_path / "o2", "--lafr", tiny.file, "--lcm", empty, "--clip-vision", tiny.clip,
                   "--detector", "mtcnn", "--device", "cpu") == 1
    printed = capsys.readouterr().out
    assert printed.startswith(f"error: InterLCM's base models could not be loaded from --lcm '{empty}'") and printed.count("\n") == 1


def test_a_video_restores_through_the_interlcm_engine(tmp_path, home, tiny, capsys):
    from video_cli_fixtures import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=4, size=256, audio=False)
    out = tmp_path / "out.mp4"
    assert restore(clip, "-o", out, "--lafr", tiny.file, "--lcm", tiny.lcm, "--clip-vision", tiny.clip,
                   "--detector", "mtcnn", "--device", "cpu") == 0
    assert "4 frames, faces in 4" in capsys.readouterr().out
    import av

    with av.open(str(clip)) as a, av.open(str(out)) as b:
        before = [f.to_ndarray(format="rgb24").astype(np.float32) for f in a.decode(video=0)]
        after = [f.to_ndarray(format="rgb24").astype(np.float32) for f in b.decode(video=0)]
    assert len(after) == 4
    assert np.abs(after[0] - before[0])[90:180, 90:170].mean() > 5 and np.abs(after[0] - before[0])[:16, :16].mean() < 4


# --------------------------------------------------------------------------- engine


def test_engine_is_the_pipeline_raw_in_any_chunking(home, tiny):
    from lafr_core.interlcm.engine import interlcm_engine

    pipe = pipeline_mod.InterLCMPipeline.from_pretrained(tiny.lcm, tiny.clip, tiny.file, seed=2, device="cpu")
    crops = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    engine = interlcm_engine(pipe, batch_size=2)
    assert engine.name == "InterLCM" and engine.device == torch.device("cpu")
    out = engine.restore(crops)
    assert torch.allclose(out, pipe.restore(crops, colour_fix="none"), atol=1e-5)
    assert torch.allclose(interlcm_engine(pipe).restore(crops[1:]), out[1:], atol=1e-5)


# --------------------------------------------------------------------------- info


def real_format_file(path: Path, steps: int = 3) -> Path:
    """The smallest file the loader takes as real: the full-size visual encoder and the spatial
    encoder's full-size sentinel layers (fp16 zeros; the header is what is checked)."""
    spatial = {k: torch.zeros(shape, dtype=torch.float16) for k, shape in SPATIAL_SENTINELS.items()}
    return save_interlcm(path, VisualEncoder().state_dict(), spatial, base_metadata(steps, SOURCE, LICENCE, "params_ema"))


def test_info_describes_a_converted_interlcm_file(tmp_path, capsys):
    """Before: `lafr info` called it INVALID ("not a LAFR file"). Now: what it is, what it needs."""
    path = real_format_file(tmp_path / "interlcm_3step.safetensors")
    assert lafr_main(["info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    visual_params = sum(p.numel() for p in VisualEncoder().parameters())
    spatial_params = sum(int(np.prod(s)) for s in SPATIAL_SENTINELS.values())
    assert lines[0] == f"{path}: valid InterLCM file"
    expected = [
        "  engine:         InterLCM (ICLR 2025, github.com/sen-mao/InterLCM), converted from its published checkpoint",
        "  steps:          3 (LCM timesteps 999 -> 759 -> 499 -> 259: the schedule the weights are trained for)",
        "  base:           LCM Dreamshaper v7 (lcm-dreamshaper-v7): its UNet and VAE, latent scale 0.18215",
        "  clip vision:    CLIP ViT-B/16 (clip-vit-b-16): its image tower -> the visual encoder's prompt tokens",
        "  guidance:       scale 8 (LCM's guidance embedding, no classifier-free pass)",
        "  colour fix:     wavelet",
        f"  visual encoder: 110 tensors, {visual_params:,} parameters",
        f"  ControlNet:     the spatial encoder, of SD1.5's UNet: {len(SPATIAL_SENTINELS)} tensors, {spatial_params:,} parameters",
        f"  source:         {SOURCE}",
        f"  licence:        {LICENCE}",
    ]
    for line in expected:
        assert line in lines, line
    needs = next(line for line in lines if line.startswith("  needs:"))
    assert "SimianLuo/LCM_Dreamshaper_v7" in needs and "openai/clip-vit-base-patch16" in needs


def test_info_reports_each_file_of_either_engine_and_a_broken_interlcm_file(tmp_path, capsys):
    good = real_format_file(tmp_path / "interlcm.safetensors", steps=1)
    bad = tmp_path / "bad_interlcm.safetensors"
    spatial = {k: torch.zeros(shape, dtype=torch.float16) for k, shape in SPATIAL_SENTINELS.items()}
    meta = base_metadata(1, SOURCE, LICENCE, "params_ema")
    from safetensors.torch import save_file

    save_file({**{"visual_encoder." + k: v for k, v in VisualEncoder().state_dict().items()},
               **{"spatial_encoder." + k: v for k, v in spatial.items() if k != "controlnet_mid_block.weight"}},
              str(bad), metadata=meta)
    lafr = lafr_file(tmp_path)
    assert lafr_main(["info", str(lafr), str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{lafr}: valid LAFR file" in out and f"{good}: valid InterLCM file" in out
    assert "  steps:          1 (LCM timesteps 999 -> 499" in out
    assert f"{bad}: INVALID" in out and "the spatial encoder lacks 'controlnet_mid_block.weight'" in out


# --------------------------------------------------------------------------- eval


@pytest.fixture(scope="module")
def hq_folder(tmp_path_factory) -> Path:
    from eval_fixtures import aligned_crop

    folder = tmp_path_factory.mktemp("hq")
    for name in ("astronaut", "grace_hopper"):
        Image.fromarray((aligned_crop(name)[0].numpy() * 255 + 0.5).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def eval_cli(*argv) -> int:
    return lafr_main(["eval", *map(str, argv)])


def test_eval_scores_interlcm_on_two_faces(tmp_path, home, tiny, hq_folder, capsys):
    """`lafr eval --lafr interlcm.safetensors ...`: the CSV's numbers are those of the pipeline
    run by hand (seed 0, the file's wavelet fix against the LQ crop) on the same LQ faces."""
    from lafr_core.eval import EvalOptions, EvalSet, evaluate
    from lafr_core.face import correct_colour

    out = tmp_path / "eval"
    common = ["--hq", hq_folder, "--preset", "x4", "--size", 256, "--identity", "none", "--lpips", "none", "--no-fid", "--no-lmd"]
    assert eval_cli(*common, "--lafr", tiny.file, "--lcm", tiny.lcm, "--clip-vision", tiny.clip, "--device", "cpu", "-o", out) == 0
    with (out / "eval.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["astronaut", "grace_hopper", "mean"]
    pipe = pipeline_mod.InterLCMPipeline.from_pretrained(tiny.lcm, tiny.clip, tiny.file, seed=0, device="cpu")
    data = EvalSet.from_folders(hq_folder, preset="x4", seed=0, size=256)
    direct = evaluate(data, lambda crops: correct_colour(pipe.restore(crops), crops, "wavelet"), options=EvalOptions(landmarks=False),
                      progress=False)
    for row, ref in zip(rows, direct.rows):
        assert float(row["psnr"]) == pytest.approx(ref["psnr"], abs=1e-6)
        assert float(row["ssim"]) == pytest.approx(ref["ssim"], abs=1e-6)
        assert 5 < float(row["psnr"]) < 60 and float(row["psnr"]) != pytest.approx(float(row["lq_psnr"]))
    capsys.readouterr()

    assert eval_cli(*common, "--lafr", tiny.file, "--lcm", tiny.lcm, "--clip-vision", tiny.clip, "--device", "cpu",
                    "--noise-seed", "5", "-o", tmp_path / "seed5") == 0
    with (tmp_path / "seed5" / "eval.csv").open() as handle:
        assert float(next(csv.DictReader(handle))["psnr"]) != pytest.approx(float(rows[0]["psnr"]), abs=1e-6)

    assert eval_cli(*common, "--engine", "interlcm", "--lafr", tiny.file, "-o", tmp_path / "missing") == 2
    text = capsys.readouterr().out
    assert "lafr eval: missing weights." in text and "LCM Dreamshaper v7 (InterLCM's UNet and VAE): none found" in text
    assert eval_cli(*common, "--engine", "lafr", "--lafr", tiny.file, "-o", tmp_path / "mismatch") == 1
    assert f"lafr eval: --engine lafr: '{tiny.file}' is a converted InterLCM file" in capsys.readouterr().out
