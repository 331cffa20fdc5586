"""Error reports for the webui entry points: what failed, with which inputs, on which system.

A bug report from a webui user usually arrives as the last line of a traceback. The entry points
(face restorer, Extras script) wrap their body so an unexpected exception prints one block with the
LAFR/torch/Python versions, the device, the inputs (tensors and images summarised by shape and
type) and the traceback, with rich when the webui has it (both ship it) and plain text otherwise.
"""

from __future__ import annotations

import functools
import inspect
import platform
import sys
import traceback
from typing import Any, Callable, Mapping, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
MAX_REPR = 200


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


def reported(what: str) -> Callable[[F], F]:
    """Decorator: on an exception print the report (inputs bound to parameter names), then re-raise."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                try:
                    bound = signature.bind_partial(*args, **kwargs).arguments
                except TypeError:
                    bound = {"args": args, "kwargs": kwargs}
                print_report(what, {k: v for k, v in bound.items() if k != "self"}, exc)
                raise

        return inner  # type: ignore[return-value]

    return wrap
