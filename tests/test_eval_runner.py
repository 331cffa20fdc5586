"""The evaluation runner and `lafr eval` on the real photos' aligned faces: numbers equal direct
computations, determinism by seed, LQ/HQ pairs, another tool's outputs, CSV, summary and contact
sheet, exit codes."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lafr_core.degrade import degrade_preset
from lafr_core.eval import EvalDataError, EvalOptions, EvalSet, evaluate, psnr, quantise, ssim
from lafr_core.eval.cli import add_eval_parser, run_eval
from lafr_core.eval.data import face_seed
from eval_fixtures import DATA, aligned_crop
from lafr_core.identity import dlib_problem, load_identity_model

SIZE = 256  # faces at 256 px keep MTCNN and dlib quick; the code path is the 512 one


@pytest.fixture(scope="module")
def hq_folder(tmp_path_factory) -> Path:
    """Aligned 512 crops of both real photos, saved as PNG (square = aligned, as CelebA-Test)."""
    folder = tmp_path_factory.mktemp("hq")
    for name in ("astronaut", "grace_hopper"):
        crop = aligned_crop(name)[0]
        Image.fromarray((crop.numpy() * 255 + 0.5).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lafr")
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    assert args.run is run_eval
    return run_eval(args)


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_identity_restorer_scores_the_lq_against_direct_computation(hq_folder):
    data = EvalSet.from_folders(hq_folder, preset="celeba-test", seed=3, size=SIZE)
    result = evaluate(data, restore=lambda crops: crops.clone(), options=EvalOptions(batch_size=2), progress=False)
    assert [r["name"] for r in result.rows] == ["astronaut", "grace_hopper"]
    for row in result.rows:
        hq = data.face(data.names.index(row["name"])).hq.numpy()  # the aligned PNG resized to SIZE
        lq, _ = degrade_preset(hq, "celeba-test", face_seed(3, row["name"]))
        lq_t, hq_t = quantise(torch.from_numpy(lq)[None]), quantise(torch.from_numpy(hq)[None])
        assert row["psnr"] == pytest.approx(float(psnr(lq_t, hq_t)[0]), abs=1e-9)
        assert row["ssim"] == pytest.approx(float(ssim(lq_t, hq_t)[0]), abs=1e-12)
        assert row["psnr"] == row["lq_psnr"] and row["ssim"] == row["lq_ssim"]  # nothing was restored
        assert 15 < row["psnr"] < 35 and 0.3 < row["ssim"] < 0.95
        assert row["lmd_px"] < 8  # MTCNN finds the same face on the degraded crop
    mean, n = result.mean("psnr")
    assert n == 2 and mean == pytest.approx(np.mean([r["psnr"] for r in result.rows]))


def test_same_seed_same_numbers_other_seed_other_numbers(hq_folder):
    def run(seed: int) -> list[float]:
        data = EvalSet.from_folders(hq_folder, preset="celeba-test", seed=seed, size=SIZE, limit=1)
        return [v for row in evaluate(data, options=EvalOptions(baseline=False, landmarks=False), progress=False).rows for k, v in row.items() if k != "name"]

    first = run(0)
    assert len(first) == 3  # psnr, ssim, niqe (always: it needs no weights)
    assert run(0) == first
    assert run(1) != first


def test_pairs_restored_folder_and_mismatched_names(hq_folder, tmp_path):
    lq = tmp_path / "lq"
    lq.mkdir()
    for path in hq_folder.iterdir():  # LQ of half size: resized back to the HQ size on reading
        Image.open(path).resize((128, 128), Image.BICUBIC).save(lq / path.name)
    restored = tmp_path / "restored"  # another tool's outputs: here exactly the HQ faces at SIZE
    restored.mkdir()
    pairs = EvalSet.from_folders(hq_folder, lq=lq, size=SIZE)
    for i, name in enumerate(pairs.names):
        face = pairs.face(i)
        Image.fromarray((quantise(face.hq).numpy() * 255).round().astype(np.uint8)).save(restored / f"{name}.png")
    data = EvalSet.from_folders(hq_folder, lq=lq, restored=restored, size=SIZE)
    result = evaluate(data, restore=lambda crops: pytest.fail("a restored folder needs no restorer"),
                      options=EvalOptions(landmarks=False), progress=False)
    for row in result.rows:
        assert math.isinf(row["psnr"]) and row["ssim"] == pytest.approx(1.0) and "lmd_px" not in row
        assert row["lq_psnr"] < 40
    (lq / "grace_hopper.png").unlink()
    with pytest.raises(EvalDataError, match="1 HQ faces have no LQ file of the same name, e.g. grace_hopper"):
        EvalSet.from_folders(hq_folder, lq=lq)
    with pytest.raises(ValueError, match="unknown degradation preset 'nope'"):
        EvalSet.from_folders(hq_folder, preset="nope")


def test_a_photo_that_is_not_square_is_detected_and_aligned(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "grace_hopper.jpg").write_bytes((DATA / "grace_hopper.jpg").read_bytes())  # 512x600
    face = EvalSet.from_folders(folder, preset="x4", size=SIZE).face(0)
    assert face.hq.shape == (SIZE, SIZE, 3) and face.lq.shape == (SIZE, SIZE, 3)


def test_a_restorer_returning_another_shape_is_an_error(hq_folder):
    data = EvalSet.from_folders(hq_folder, preset="x4", size=SIZE, limit=1)
    with pytest.raises(ValueError, match="the restorer returned"):
        evaluate(data, restore=lambda crops: crops[:, :64], progress=False)


@pytest.mark.skipif(dlib_problem() is not None, reason="identity extra not installed")
def test_cli_writes_csv_summary_and_contact_sheet_with_identity(hq_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli("--hq", str(hq_folder), "--preset", "x4", "--seed", "7", "--restorer", "none", "--identity", "dlib",
               "--size", str(SIZE), "--lpips", "none", "--no-fid", "-o", str(out))
    assert code == 0
    printed = capsys.readouterr().out
    assert "| PSNR dB | higher |" in printed and "| ID dlib | lower |" in printed
    assert "dlib ResNet descriptor" in printed and "'x4' degradation, seed 7" in printed
    rows = read_csv(out / "eval.csv")
    assert [r["name"] for r in rows] == ["astronaut", "grace_hopper", "mean"]
    assert {"psnr", "ssim", "lmd_px", "id_dlib", "lq_psnr", "lq_id_dlib"} <= set(rows[0])
    # identity of the x4-degraded face vs its HQ: same person by dlib's threshold, but not 0
    assert all(0.02 < float(r["id_dlib"]) < 0.6 for r in rows[:2])
    direct = load_identity_model("dlib")
    data = EvalSet.from_folders(hq_folder, preset="x4", seed=7, size=SIZE)
    face = data.face(0)
    expected = direct.distances(quantise(face.lq[None]), quantise(face.hq[None]))
    assert float(rows[0]["id_dlib"]) == pytest.approx(float(expected[0]), abs=1e-9)
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width == 3 * 160 + 12 and sheet.height > 2 * 160
    assert "| metric |" in (out / "summary.md").read_text()


def test_cli_exit_codes_for_missing_weights_and_bad_inputs(hq_folder, tmp_path, capsys):
    code = cli("--hq", str(hq_folder), "--lafr", str(tmp_path / "none.safetensors"), "--base", str(tmp_path / "nobase.safetensors"),
               "--identity", "none", "-o", str(tmp_path / "o"))
    assert code == 2
    printed = capsys.readouterr().out
    assert "missing weights" in printed and "--restorer none" in printed
    assert cli("--hq", str(tmp_path / "nowhere"), "--identity", "none") == 1
    assert "HQ folder" in capsys.readouterr().out
    assert cli("--hq", str(hq_folder), "--lq", str(hq_folder), "--preset", "x4", "--identity", "none") == 1


def test_a_lafr_pipeline_plugs_in_as_the_restorer_with_its_files_colour_fix(hq_folder, monkeypatch):
    """LafrPipeline (tiny random SD2.1-shaped models) restores the LQ crops; the runner scores
    exactly its output; `pipeline_restorer` applies the file's colour fix (OSEDiff's adain)."""
    pytest.importorskip("diffusers")
    from conftest import build_unet, tiny_unet_config
    from test_pipeline import tiny_vae, tiny_weights

    import lafr_core.lafr_file
    import lafr_core.pipeline
    from lafr_core.eval.cli import pipeline_restorer
    from lafr_core.face import correct_colour
    from lafr_core.pipeline import LafrPipeline

    weights, _ = tiny_weights()
    pipe = LafrPipeline.from_modules(build_unet(tiny_unet_config()), tiny_vae(), weights, device="cpu")
    data = EvalSet.from_folders(hq_folder, preset="x4", seed=0, size=64)
    result = evaluate(data, restore=pipe.restore, options=EvalOptions(landmarks=False), progress=False)
    lq = quantise(torch.stack([data.face(i).lq for i in range(2)]))  # one batch, as the runner's
    hq = quantise(torch.stack([data.face(i).hq for i in range(2)]))
    direct, direct_lq = psnr(quantise(pipe.restore(lq)), hq), psnr(lq, hq)
    for i, row in enumerate(result.rows):
        assert row["psnr"] == pytest.approx(float(direct[i]), abs=1e-9)
        assert row["lq_psnr"] == pytest.approx(float(direct_lq[i]), abs=1e-9)
        assert row["psnr"] != row["lq_psnr"]

    weights.meta["lafr.colour_fix"] = "adain"
    monkeypatch.setattr(lafr_core.lafr_file, "load_lafr", lambda path: weights)
    monkeypatch.setattr(lafr_core.pipeline.LafrPipeline, "from_pretrained", classmethod(lambda cls, base, w, device=None: pipe))
    restore = pipeline_restorer("base", Path("file.safetensors"), "cpu", batch_size=2)
    crops = torch.stack([data.face(i).lq for i in range(2)])
    assert torch.allclose(restore(crops), correct_colour(pipe.restore(crops), crops, "adain"))


def test_fid_of_the_restored_set_and_of_the_lq_set_reach_the_table(hq_folder):
    from lafr_core.eval.learned import FidAccumulator
    from lafr_core.eval.metrics import frechet_distance
    from lafr_core.eval.report import summary_table

    def features(images: torch.Tensor) -> np.ndarray:  # stand-in extractor: channel means and stds
        x = images.double().flatten(1, 2)
        return torch.cat([x.mean(1), x.std(1)], 1).numpy()

    data = EvalSet.from_folders(hq_folder, preset="x4", seed=0, size=64)
    brighten = lambda crops: (crops * 1.2).clamp(0, 1)  # noqa: E731
    result = evaluate(data, restore=brighten, fid=FidAccumulator(features), options=EvalOptions(landmarks=False), progress=False)
    lq = quantise(torch.stack([data.face(i).lq for i in range(2)]))
    hq = quantise(torch.stack([data.face(i).hq for i in range(2)]))
    f_hq, f_lq, f_out = features(hq), features(lq), features(quantise(brighten(lq)))
    stats = (f_hq.mean(0), np.cov(f_hq, rowvar=False))
    assert result.fid["fid"] == pytest.approx(frechet_distance(f_out.mean(0), np.cov(f_out, rowvar=False), *stats), rel=1e-9)
    assert result.fid["lq_fid"] == pytest.approx(frechet_distance(f_lq.mean(0), np.cov(f_lq, rowvar=False), *stats), rel=1e-9)
    assert f"| FID | lower | {result.fid['fid']:.2f} | {result.fid['lq_fid']:.2f} | 2 (set) |" in summary_table(result)
