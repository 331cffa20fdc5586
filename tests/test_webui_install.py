"""install.py, the A1111 way (launch.is_installed / launch.run_pip), with a recording fake `launch`:
only missing requirements, never the ones the webui owns or the pipeline/trainer extras, and never
an upgrade (a constraints file pins what is installed)."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
import install  # noqa: E402


class FakeLaunch(types.ModuleType):
    def __init__(self, installed=()):
        super().__init__("launch")
        self.installed, self.calls = set(installed), []

    def is_installed(self, name):
        return name in self.installed

    def run_pip(self, command, desc=None):
        constraint = command.split('--constraint "', 1)[1].rstrip('"')
        self.calls.append((command, desc, Path(constraint).read_text()))


@pytest.fixture
def requirements(tmp_path, monkeypatch):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nsafetensors>=0.4\nnumpy\nopencv-python-headless  # cv2\npillow\n"
                    "diffusers>=0.30\ntorch\nlafr-test-missing-package>=1.0\n\n")
    monkeypatch.setattr(install, "REQUIREMENTS", path)
    return path


def test_requirements_are_parsed_by_canonical_name(requirements):
    names = [name for name, _ in install.requirements(requirements)]
    assert names == ["safetensors", "numpy", "opencv-python-headless", "pillow", "diffusers", "torch",
                     "lafr-test-missing-package"]


def test_only_missing_requirements_are_installed_with_everything_else_pinned(requirements, monkeypatch):
    launch = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", launch)

    assert install.main() == 0

    assert [desc for _, desc, _ in launch.calls] == ["lafr-test-missing-package>=1.0 for LAFR"]
    command, _, constraints = launch.calls[0]
    assert command.startswith('install "lafr-test-missing-package>=1.0" --constraint ')
    assert "-U" not in command.split() and "--upgrade" not in command
    assert f"numpy=={importlib.metadata.version('numpy')}\n" in constraints  # no side-effect upgrades


def test_nothing_to_do_when_all_is_present(requirements, monkeypatch):
    launch = FakeLaunch(installed={"lafr-test-missing-package"})
    monkeypatch.setitem(sys.modules, "launch", launch)
    assert install.main() == 0
    assert launch.calls == []


def test_the_real_requirements_never_ask_for_pipeline_or_trainer_packages():
    names = {name for name, _ in install.requirements()}
    assert names and not names & install.NEVER_INSTALL
    assert install.missing(install.requirements(), lambda name: False) == []  # this environment has them all


def test_under_another_host_it_does_nothing(requirements, monkeypatch, capsys):
    """ComfyUI-Manager runs install.py too (after requirements.txt): no `launch` there."""
    monkeypatch.setitem(sys.modules, "launch", None)  # import launch -> ImportError
    assert install.main() == 0
    assert "nothing to do" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "launch", types.ModuleType("launch"))  # an unrelated module of that name
    assert install.main() == 0


def test_a_distribution_installed_twice_is_pinned_at_the_version_that_imports(monkeypatch):
    """A webui venv over system site-packages can hold numpy 1.26 (venv, first on sys.path) and
    numpy 2.x (system): pinning the system one would make pip 'upgrade' the webui's numpy."""
    dists = [types.SimpleNamespace(metadata={"Name": "numpy"}, version="1.26.2"),
             types.SimpleNamespace(metadata={"Name": "NumPy"}, version="2.3.0"),
             types.SimpleNamespace(metadata={"Name": "legacy"}, version="not a version")]
    monkeypatch.setattr(install.importlib.metadata, "distributions", lambda: iter(dists))
    assert install.pinned_constraints() == "numpy==1.26.2\n"
