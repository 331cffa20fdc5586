"""Reading a published torch pickle (.pkl / .pth) safely: torch.load(weights_only=True) only,
with every way it can fail turned into one message that names the file and says what to do.

Why one module: OSEDiff's .pkl and InterLCM's .pth are both foreign pickles; a file that holds
code must be refused unread, and a truncated or wrong file must say so, the same way for each
engine's converter. Each converter passes its own error class and wording.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Callable

import torch


def load_plain_pickle(
    path: str | Path,
    what: str,
    error: Callable[[str], Exception],
    refetch_hint: str,
    suffix: str,
) -> object:
    """The object in `path`, unpickled with weights_only=True (tensors and plain values only).

    what: how the messages name the file ("OSEDiff checkpoint", "InterLCM visual encoder");
    refetch_hint: the end of the message for a file that holds code ("download ... again");
    suffix: the expected kind, named when the file is not a torch pickle (".pkl", ".pth")."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} '{path}' does not exist")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = unpickler_reason(exc)
        if "GLOBAL" in reason:  # torch's weights-only unpickler met a class or function reference
            raise error(
                f"{what} '{path}' holds more than tensors and plain values (code objects or custom classes: {reason}). "
                f"It is refused unread, since unpickling it could run code; {refetch_hint}"
            ) from None
        raise error(f"'{path}' is not a torch-saved {what} (the weights-only unpickler stops at: {reason})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise error(f"'{path}' cannot be read as a torch-saved {what} (truncated or not a {suffix}: {first_line(exc)})") from None


def unpickler_reason(exc: BaseException) -> str:
    """The line of torch's long weights-only message that says what it met."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported") or "WeightsUnpickler error:" in line and line[-1] != ":":
            return line[:300]
    return lines[-1][:300] if lines else type(exc).__name__


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
