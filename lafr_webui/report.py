"""Failures at the webui entry points: the user's image is kept, and the console says why once.

Both entry points (face restorer, Extras script) run their body inside `image_kept`, so no LAFR
failure ever reaches the webui's own handler. That handler matters: an exception escaping a
postprocessing script ends the whole Extras run (A1111's runner does not catch it), the webui
prints its own traceback after ours, and the gallery comes back empty. Instead:
  * a problem the user can fix (USER_ERRORS: a missing or broken LAFR file, a bad argument, an
    image or detector problem, InterLCM's base models missing or unreadable) prints ONE line, once per cause (messages.notify_once);
  * anything else is a bug: one report block with the LAFR/torch/Python versions, the device, the
    inputs (tensors and images summarised by shape and type) and the traceback, with rich when
    the webui has it (both ship it) and plain text otherwise.
Either way the caller goes on with the image it had.
"""

from __future__ import annotations

import platform
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from lafr_core.face import FaceError
from lafr_core.lafr_file import LafrFileError
from lafr_core.latent_ops import MissingStageError

from .args import ArgsError
from .images import UnsupportedImage
from .interlcm import InterlcmSetupError
from .messages import notify_once

MAX_REPR = 200
# problems of files, settings or inputs: the message says what to fix, no traceback needed
USER_ERRORS = (FileNotFoundError, LafrFileError, MissingStageError, FaceError, ArgsError, UnsupportedImage, InterlcmSetupError)


def summarise(value: Any) -> str:
    """Short description of an argument: shapes for arrays/tensors, size/mode for PIL images."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__} shape={tuple(shape)} dtype={dtype}"
    if hasattr(value, "mode") and hasattr(value, "size") and not isinstance(value, (str, bytes)):
        return f"{type(value).__name__} mode={value.mode} size={value.size}"
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


def system_info() -> dict[str, str]:
    info = {"Python": sys.version.split()[0], "Platform": platform.platform()}
    try:
        import lafr_core

        info["LAFR"] = lafr_core.__version__
    except Exception as exc:  # noqa: BLE001 - the report must not fail on what it reports
        info["LAFR"] = f"unimportable ({exc})"
    try:
        import torch

        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception as exc:  # noqa: BLE001
        info["torch"] = f"unimportable ({exc})"
    return info


def format_report(what: str, inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows: the failing step, the system, each input."""
    rows = [("Failed", what)] + list(system_info().items())
    rows += [(f"input {name}", summarise(value)) for name, value in inputs.items()]
    return rows


def print_report(what: str, inputs: Mapping[str, Any], exc: BaseException) -> None:
    """Print the report block and the traceback of `exc` to stderr."""
    rows = format_report(what, inputs)
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.traceback import Traceback

        console = Console(stderr=True)
        table = Table(title="LAFR error", show_header=False)
        for label, value in rows:
            table.add_row(label, value)
        console.print(table)
        console.print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
    except ImportError:
        width = max(len(label) for label, _ in rows)
        lines = ["LAFR error"] + [f"  {label.ljust(width)}  {value}" for label, value in rows]
        print("\n".join(lines), file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


@contextmanager
def image_kept(what: str, inputs: Mapping[str, Any]) -> Iterator[None]:
    """`with image_kept("Extras", {...}): ...` never raises an Exception: a user error prints
    "<what>: image passed through unchanged: <why>" once per cause, anything else the report (with
    `inputs`), and the with-block is left, so the caller goes on with its unchanged image."""
    try:
        yield
    except USER_ERRORS as exc:
        notify_once((what, type(exc).__name__, str(exc)), f"{what}: image passed through unchanged: {exc}")
    except Exception as exc:  # noqa: BLE001 - an image must never be lost to LAFR
        print_report(f"{what} (the image passes through unchanged)", inputs, exc)
