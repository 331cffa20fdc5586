"""`lafr eval --protocol table1` and its new columns: NIQE in the runner, FID-F beside FID, the
pyiqa metrics' skip path (never a download) and their plumbing with a stand-in pyiqa, the
paper-ordered summary and table1.csv."""

from __future__ import annotations

import csv
import os
import sys
import types

import numpy as np
import pytest
import torch

from lafr_core.eval import EvalOptions, EvalSet, evaluate, quantise
from lafr_core.eval import iqa as iqa_module
from lafr_core.eval.iqa import IQA_METRICS, DownloadRefused, load_iqa, no_downloads
from lafr_core.eval.learned import FidAccumulator
from lafr_core.eval.metrics import frechet_distance
from lafr_core.eval.niqe import niqe
from lafr_core.eval.report import TABLE1, protocol_table, summary_table
from test_eval_runner import cli, hq_folder  # noqa: F401  (the aligned real faces, the CLI entry)

SIZE = 256  # two by two NIQE blocks; MTCNN stays quick


def channel_features(images: torch.Tensor) -> np.ndarray:  # stand-in FID extractor: channel means and stds
    x = images.double().flatten(1, 2)
    return torch.cat([x.mean(1), x.std(1)], 1).numpy()


def test_runner_niqe_column_equals_direct_niqe_and_small_faces_get_a_note(hq_folder):
    data = EvalSet.from_folders(hq_folder, preset="x4", seed=0, size=SIZE)
    darken = lambda crops: crops * 0.8  # noqa: E731
    result = evaluate(data, restore=darken, options=EvalOptions(landmarks=False), progress=False)
    lq = quantise(torch.stack([data.face(i).lq for i in range(2)]))
    assert [r["niqe"] for r in result.rows] == pytest.approx(niqe(quantise(darken(lq))).tolist(), abs=1e-12)
    assert [r["lq_niqe"] for r in result.rows] == pytest.approx(niqe(lq).tolist(), abs=1e-12)
    assert "| NIQE | lower |" in summary_table(result)
    small = evaluate(EvalSet.from_folders(hq_folder, preset="x4", size=128), options=EvalOptions(landmarks=False), progress=False)
    assert "niqe" not in small.columns and any("NIQE not computed: 128x128" in n for n in small.notes)


def test_fid_f_against_given_statistics_beside_fid_against_hq(hq_folder):
    data = EvalSet.from_folders(hq_folder, preset="x4", seed=0, size=64)
    rng = np.random.default_rng(0)
    ffhq = (rng.normal(0.5, 0.1, 6), np.diag(rng.uniform(0.01, 0.02, 6)))
    result = evaluate(data, fid=FidAccumulator(channel_features), options=EvalOptions(landmarks=False, fid_ffhq=ffhq), progress=False)
    lq = quantise(torch.stack([data.face(i).lq for i in range(2)]))
    hq = quantise(torch.stack([data.face(i).hq for i in range(2)]))
    f_lq, f_hq = channel_features(lq), channel_features(hq)
    cov = np.cov(f_lq, rowvar=False)
    assert result.fid["fid_ffhq"] == pytest.approx(frechet_distance(f_lq.mean(0), cov, *ffhq), rel=1e-9)
    assert result.fid["fid"] == pytest.approx(frechet_distance(f_lq.mean(0), cov, f_hq.mean(0), np.cov(f_hq, rowvar=False)), rel=1e-9)
    assert result.fid["fid_ffhq"] != pytest.approx(result.fid["fid"])
    assert f"| FID-F | lower | {result.fid['fid_ffhq']:.2f} |" in summary_table(result)


def test_iqa_skips_with_one_line_notes_and_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(iqa_module.importlib.util, "find_spec", lambda name: None)
    metrics, skipped = load_iqa(["dists", "musiq"])
    assert metrics == [] and set(skipped) == {"dists", "musiq"}
    assert skipped["dists"] == "DISTS not computed: pip install pyiqa (and its weights)"
    with pytest.raises(ValueError, match="unknown pyiqa metric"):
        load_iqa(["brisque"])
    # pyiqa "installed" but its cache empty: named files, no attempt to build
    monkeypatch.setattr(iqa_module.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=lambda *a, **k: pytest.fail("built without weights")))
    saved = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        metrics, skipped = load_iqa(["musiq", "maniqa"])
    finally:
        torch.hub.set_dir(saved)
    assert metrics == []
    assert str(tmp_path / "hub" / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth") in skipped["musiq"]
    assert "\n" not in skipped["maniqa"] and "ckpt_koniq10k.pt" in skipped["maniqa"]


def test_no_downloads_refuses_and_restores():
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    original, offline = torch.hub.download_url_to_file, hf_constants.is_offline_mode()
    with no_downloads():
        assert hf_constants.is_offline_mode()  # timm / transformers fetches fail fast instead of downloading
        with pytest.raises(DownloadRefused):
            torch.hub.download_url_to_file("https://example.invalid/w.pth", "/tmp/w.pth")
        with pytest.raises(DownloadRefused):
            import urllib.request

            urllib.request.urlopen("https://example.invalid/")
    assert torch.hub.download_url_to_file is original and hf_constants.is_offline_mode() == offline


@pytest.fixture()
def stand_in_pyiqa(monkeypatch, tmp_path):
    """A pyiqa whose metrics are simple formulas, its weight files present (empty) in a temporary hub."""
    hub = tmp_path / "hub"
    for spec in IQA_METRICS.values():
        for f in spec.hub_files:
            (hub / f).parent.mkdir(parents=True, exist_ok=True)
            (hub / f).write_bytes(b"")
    (tmp_path / "hf").mkdir()
    for spec in IQA_METRICS.values():
        for repo in spec.hf_repos:
            (tmp_path / "hf" / repo).mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))

    def create_metric(name, device=None):
        if name == "clipiqa" and os.environ.get("STAND_IN_PICKLE"):  # pyiqa's own call: weights_only=False
            torch.load(os.environ["STAND_IN_PICKLE"], weights_only=False)
        if name == "maniqa":
            return lambda x: torch.hub.download_url_to_file("https://example.invalid/vit.pth", "/tmp/vit.pth")
        if name == "dists":
            return lambda x, y: (x - y).abs().mean((1, 2, 3))[:, None]  # pyiqa returns [B, 1]
        return lambda x: x.mean((1, 2, 3)) * (100 if name == "musiq" else 1)

    def create_metric_checked(name, device=None):
        metric = create_metric(name, device)
        if name == "maniqa":
            metric(None)  # tries to fetch its trunk while being built
        return metric

    monkeypatch.setattr(iqa_module.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric_checked))
    saved = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    yield
    torch.hub.set_dir(saved)


def test_a_checkpoint_holding_code_is_refused_even_when_pyiqa_asks_for_full_pickles(stand_in_pyiqa, tmp_path, monkeypatch):
    import collections

    path = tmp_path / "clipiqa.pth"
    torch.save({"params": collections.OrderedDict(w=torch.ones(1)), "hook": print}, path)  # a pickled callable
    monkeypatch.setenv("STAND_IN_PICKLE", str(path))
    metrics, skipped = load_iqa(["clipiqa", "dists"])
    assert [m.spec.column for m in metrics] == ["dists"]
    assert skipped["clipiqa"].startswith("CLIP-IQA not computed: pyiqa could not build it offline (UnpicklingError")
    assert torch.load(path, weights_only=False)["hook"] is print  # torch.load is itself again afterwards


def test_iqa_plumbing_with_a_stand_in_pyiqa(stand_in_pyiqa, hq_folder):
    metrics, skipped = load_iqa(sorted(IQA_METRICS))
    assert [m.spec.column for m in metrics] == ["clipiqa", "dists", "musiq"]
    assert list(skipped) == ["maniqa"] and "could not build it offline (DownloadRefused" in skipped["maniqa"]
    data = EvalSet.from_folders(hq_folder, preset="x4", seed=0, size=64)
    result = evaluate(data, iqa=metrics, options=EvalOptions(landmarks=False), progress=False)
    lq = quantise(torch.stack([data.face(i).lq for i in range(2)]))
    hq = quantise(torch.stack([data.face(i).hq for i in range(2)]))
    assert [r["dists"] for r in result.rows] == pytest.approx((lq - hq).abs().mean((1, 2, 3)).tolist(), rel=1e-6)
    assert [r["musiq"] for r in result.rows] == pytest.approx((lq.mean((1, 2, 3)) * 100).tolist(), rel=1e-6)
    assert {"clipiqa", "lq_clipiqa", "dists", "lq_dists"} <= set(result.columns)
    table = protocol_table(result, skipped)
    assert "| MANIQA | higher | not computed | | |" in table and "| DISTS | lower |" in table


def test_cli_protocol_table1_writes_the_papers_columns_in_order(hq_folder, tmp_path, capsys):
    out = tmp_path / "t1"
    code = cli("--hq", str(hq_folder), "--preset", "x4", "--restorer", "none", "--identity", "none", "--size", str(SIZE),
               "--lpips", "none", "--no-fid", "--protocol", "table1", "-o", str(out))
    assert code == 0
    summary = (out / "summary.md").read_text()
    labels = [line.split(" | ")[0].removeprefix("| ") for line in summary.splitlines()[2:14]]
    assert labels == [label for label, _ in TABLE1]
    assert "| NIQE | lower |" in summary and "| PSNR | higher |" in summary
    assert "- not computed: Deg.: it is the ArcFace angle and --identity none was given (give an ArcFace .onnx" in summary
    assert "- not computed: LPIPS: --lpips none was given" in summary
    assert "- not computed: FID-F: --no-fid was given" in summary
    assert "- not computed: DISTS: " in summary and "- not computed: MANIQA: " in summary
    assert "DISTS not computed" not in summary.split("All columns")[0]  # the reason alone, not the note's prefix
    with (out / "table1.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["set", *(label for label, _ in TABLE1)] and [r[0] for r in rows[1:]] == ["restored", "lq"]
    psnr_mean, niqe_mean = float(rows[1][1]), float(rows[1][6])
    with (out / "eval.csv").open() as handle:
        per_face = list(csv.DictReader(handle))
    assert list(per_face[0])[:5] == ["name", "psnr", "ssim", "niqe", "lmd_px"]
    assert per_face[-1]["name"] == "mean" and float(per_face[-1]["niqe"]) == pytest.approx(niqe_mean)
    assert float(per_face[-1]["psnr"]) == pytest.approx(psnr_mean) and rows[1][3] == ""  # LPIPS empty
    assert "table1.csv" in capsys.readouterr().out


def test_cli_fid_ffhq_bad_file_is_a_one_line_error(hq_folder, tmp_path, capsys):
    bad = tmp_path / "stats.npz"
    np.savez(bad, mean=np.zeros(3))
    assert cli("--hq", str(hq_folder), "--identity", "none", "--restorer", "none", "--fid-ffhq", str(bad), "-o", str(tmp_path / "o")) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("lafr eval: --fid-ffhq:") and "'mu' and 'sigma'" in printed
