"""The webui path imports without diffusers, peft, transformers or accelerate (A1111 pins old
transformers/huggingface_hub; install.py installs none of them), and on the torch the webuis ship.
Checked in fresh interpreters, with the fake `modules` tree standing in for the webui."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

BLOCK = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"diffusers", "peft", "transformers", "accelerate"}:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocker())
"""

LOAD_WEBUI_PATH = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, "tests")
from webui_fakes import FakeWebui
webui = FakeWebui(Path(tempfile.mkdtemp())).install()
script = webui.load_script()
import install
import lafr_core.host_chain
import lafr_webui.a1111, lafr_webui.forge, lafr_webui.service, lafr_webui.unet_hooks, lafr_webui.model_check
import lafr_webui.report, lafr_webui.images, lafr_webui.settings, lafr_webui.extras, lafr_webui.restorer
assert [r.name() for r in webui.shared.face_restorers] == ["LAFR"], webui.shared.face_restorers
assert script.LafrExtras.name == "LAFR"
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"diffusers", "peft", "transformers", "accelerate", "gradio"})
assert not heavy, heavy
print("ok")
"""

OLD_TORCH = """
import torch
if hasattr(torch, "OutOfMemoryError"):  # torch < 2.5 (A1111 ships 2.1.2, Forge 2.3.1) lacks it
    del torch.OutOfMemoryError
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)


def test_script_and_package_import_with_diffusers_peft_transformers_blocked():
    out = run(BLOCK + LOAD_WEBUI_PATH)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_blocker_really_blocks():
    out = run(BLOCK + "import peft")
    assert out.returncode != 0 and "blocked in this test" in out.stderr


def test_webui_path_imports_on_torch_without_the_generic_out_of_memory_error():
    out = run(OLD_TORCH + BLOCK + LOAD_WEBUI_PATH)
    assert out.returncode == 0, out.stderr
