"""A1111/Forge installer: the webui runs this file in a subprocess before loading the extension.

It installs only what the webui path needs (requirements.txt) and only what is missing, through
the webui's own launch.run_pip. It never upgrades anything: a package that imports is left as the
webui pinned it (A1111 pins einops 0.4.1, numpy 1.26, Pillow 9.5), and a new package is installed
under a constraints file that pins every distribution already present, so pip cannot upgrade a
webui dependency as a side effect. torch is the webui's own; diffusers, peft, transformers and
accelerate belong to the standalone pipeline and trainer and are never installed here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import tempfile
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
NEVER_INSTALL = {"torch", "torchvision", "diffusers", "peft", "transformers", "accelerate"}
# distribution name -> module it provides, where they differ
IMPORT_NAMES = {"opencv-python-headless": "cv2", "opencv-python": "cv2", "pillow": "PIL"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path | None = None) -> list[tuple[str, str]]:
    """(distribution name, full requirement line) of each requirement, comments dropped."""
    found = []
    for line in (path or REQUIREMENTS).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        match = _NAME.match(line)
        if match:
            found.append((canonical(match.group(1)), line))
    return found


def importable(name: str) -> bool:
    module = IMPORT_NAMES.get(name, name.replace("-", "_"))
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(reqs: list[tuple[str, str]], is_installed) -> list[str]:
    """Requirement lines to install: not importable and not installed as a distribution
    (opencv-python satisfies cv2 as well as the headless build does), never NEVER_INSTALL."""
    return [line for name, line in reqs if name not in NEVER_INSTALL and not importable(name) and not is_installed(name)]


def _valid_version(version: str) -> bool:
    """pip refuses a constraints file with a version it cannot parse (legacy strings)."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pip vendors packaging; the webuis ship it too
        return True
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def pinned_constraints() -> str:
    """A pip constraints file pinning every installed distribution to its installed version. When a
    distribution is installed twice (a venv over system site-packages), the one that imports wins."""
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions():  # in sys.path order: the first one is what imports
        name = dist.metadata.get("Name")
        if name and dist.version and _valid_version(dist.version):
            pins.setdefault(canonical(name), f"{canonical(name)}=={dist.version}")
    return "\n".join(sorted(pins.values())) + "\n"


def install(lines: list[str], run_pip) -> None:
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text(pinned_constraints(), encoding="utf-8")
        for line in lines:
            run_pip(f'install "{line}" --constraint "{constraints}"', f"{line} for LAFR")


def webui_launch():
    """The webui's `launch` module (its installer runs us with the webui root on PYTHONPATH), or
    None when another host runs this file: ComfyUI-Manager also runs install.py, after it has
    installed requirements.txt itself."""
    try:
        import launch
    except ImportError:
        return None
    return launch if hasattr(launch, "run_pip") and hasattr(launch, "is_installed") else None


def main() -> int:
    launch = webui_launch()
    if launch is None:
        print("LAFR install.py: not run by AUTOMATIC1111/Forge; nothing to do (requirements.txt is the host's job)")
        return 0
    todo = missing(requirements(), launch.is_installed)
    if todo:
        install(todo, launch.run_pip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
