"""The extension in a real AUTOMATIC1111 tree (A1111_DIR), through A1111's own loader, settings,
face_restoration.restore_faces and Extras runner, on a tiny real ldm LatentDiffusion (see
a1111_real_check.py for what is real and what stands in). Skipped unless A1111_DIR is set; the
python running pytest must import A1111's modules (gradio 3.41, omegaconf, pytorch_lightning, ...)
and the tree needs repositories/stable-diffusion-stability-ai:

    A1111_DIR=/path/to/stable-diffusion-webui /path/to/webui-venv/bin/python -m pytest tests/host/test_webui_a1111_real.py
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

A1111_DIR = os.environ.get("A1111_DIR")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
pytestmark = pytest.mark.skipif(not A1111_DIR, reason="set A1111_DIR to an AUTOMATIC1111 tree whose requirements this python has")


@pytest.fixture(scope="module")
def run():
    out = subprocess.run([sys.executable, str(HERE / "a1111_real_check.py"), A1111_DIR, str(REPO)],
                         capture_output=True, text=True, timeout=900)
    checks = dict(line[len("CHECK "):].split(" ", 1) for line in out.stdout.splitlines() if line.startswith("CHECK "))
    assert out.returncode == 0, out.stderr[-4000:]
    return checks, out.stderr


def test_loaded_by_the_webuis_script_loader_and_deduplicated_on_reload(run):
    checks, _ = run
    assert checks["extension_active"] == "True"
    assert checks["restorers"].split(",").count("LAFR") == 1
    assert checks["postprocessing_scripts"].split(",").count("LafrExtras") == 1
    assert checks["settings"] == "lafr_colour_correction,lafr_detector,lafr_file,lafr_strength"


def test_restore_faces_runs_on_the_ldm_model_and_leaves_it_untouched(run):
    checks, _ = run
    assert checks["ldm_weights_loaded"] == "True"
    assert checks["model"] == "ldm.models.diffusion.ddpm.LatentDiffusion/eps"
    assert float(checks["face_changed"]) > 5 and checks["corner_same"] == "True"
    assert checks["weights_identical"] == "True" and checks["hooks_left"] == "0" and checks["state_restored"] == "True"


def test_extras_runner_writes_info_and_api_none_means_off(run):
    checks, _ = run
    expected = [("LAFR faces", 1), ("LAFR model", "tiny.safetensors"), ("LAFR visibility", 0.5)]
    assert ast.literal_eval(checks["extras_info"]) == expected
    assert checks["extras_api_without_lafr"] == "True"


def test_an_sd15_checkpoint_is_refused_with_one_message(run):
    checks, stderr = run
    assert checks["sd15_unchanged"] == "True"
    assert stderr.count("[LAFR] the loaded checkpoint pretend-sd15.safetensors: LAFR needs") == 1
