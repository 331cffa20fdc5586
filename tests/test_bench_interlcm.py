"""bench/bench_interlcm.py end to end on toy models: three engines in their own workers, rounds
interleaved, the README table and the JSON it writes (the full-size run is the README's numbers)."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_interlcm  # noqa: E402


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    """One run: 2 rounds, one thread per worker (two OpenMP threads per worker on a shared 2-core
    machine spin against each other and make toy calls seconds long)."""
    out = tmp_path_factory.mktemp("bench") / "result.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench_interlcm.main(["--tiny", "--rounds", "2", "--threads", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert printed.getvalue().strip() == result["markdown"]  # what is printed is what is saved
    return result


def test_three_engines_timed_round_by_round(tiny_result):
    result = tiny_result
    rows = {row["engine"]: row for row in result["engines"]}
    assert list(rows) == ["lafr", "interlcm-1", "interlcm-3"]
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for engine, row in rows.items():
        assert len(row["times"]) == 2 and all(0 < t < 60 for t in row["times"])
        assert len(row["cpu_times"]) == 2 and all(0 < t < 60 for t in row["cpu_times"])
        assert row["s_per_face"] == statistics.median(row["times"])
        assert row["cpu_s_per_face"] == statistics.median(row["cpu_times"])
        assert row["out_shape"] == [1, 64, 64, 3]  # crops in -> restored crops of the same size out
        assert 0 < row["weights_gb"] < row["peak_gb"] < 8
        assert row["peak_from_warmup"]  # the build's high-water mark was reset (Linux)
    assert (rows["lafr"]["network_steps"], rows["interlcm-1"]["network_steps"], rows["interlcm-3"]["network_steps"]) == (1, 1, 3)


def test_ratios_are_per_round_then_median(tiny_result):
    result = tiny_result
    rows = {row["engine"]: row for row in result["engines"]}
    for engine in ("interlcm-1", "interlcm-3"):
        for times, ratios, ratio in (("s_per_face", "ratios", "ratio_vs_lafr"), ("cpu_s_per_face", "cpu_ratios", "cpu_ratio_vs_lafr")):
            per_round = [r[times][engine] / r[times]["lafr"] for r in result["rounds"]]
            assert rows[engine][ratios] == pytest.approx(per_round)
            assert rows[engine][ratio] == pytest.approx(statistics.median(per_round))
    assert rows["lafr"]["ratio_vs_lafr"] == rows["lafr"]["cpu_ratio_vs_lafr"] == 1.0
    # the toy InterLCM runs CLIP + the full visual encoder + ControlNet + UNet: slower than toy LAFR
    assert rows["interlcm-3"]["ratio_vs_lafr"] > 1
    for r in result["rounds"]:
        assert r["load_before"] >= 0 and r["load_after"] >= 0


def test_markdown_table_has_the_three_rows_and_the_rounds(tiny_result):
    result = tiny_result
    lines = result["markdown"].splitlines()
    table = [line for line in lines if line.startswith("| lafr |") or line.startswith("| interlcm-")]
    assert len(table) == 3
    rows = {row["engine"]: row for row in result["engines"]}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = rows[cells[0]]
        assert float(cells[2]) == pytest.approx(row["s_per_face"], abs=0.006)
        assert float(cells[3]) == pytest.approx(row["cpu_s_per_face"], abs=0.006)
        assert cells[4:6] == [f"{row['ratio_vs_lafr']:.2f}x", f"{row['cpu_ratio_vs_lafr']:.2f}x"]
    round_lines = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(round_lines) == 2 and "load" in result["markdown"] and "torch threads 1, fp32" in lines[0]


def test_bad_arguments_are_refused_in_one_line(capsys):
    for argv, message in ((["--rounds", "0"], "at least 1"), (["--device", "tpu"], "use cpu, cuda or cuda:N")):
        with pytest.raises(SystemExit):
            bench_interlcm.parse_args(argv)
        assert message in capsys.readouterr().err
