"""User-facing messages of the webui layer: each distinct problem is shown once per session.

Why once: a face restorer runs for every image of every batch; a refused checkpoint or a missing
LAFR file would otherwise fill the console with the same paragraph. Keys name the cause (the
checkpoint, the file), so a new checkpoint or file gets its message again. The message goes to the
console (where A1111 users look for extension output) and, when gradio can show it, as a toast.
"""

from __future__ import annotations

import sys
from typing import Hashable

PREFIX = "[LAFR]"
_shown: set[Hashable] = set()


def notify(message: str) -> None:
    """Console line, plus a gradio warning toast when called inside a UI event (else gradio
    itself turns it into a Python warning, which is harmless)."""
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)
    try:
        import gradio as gr

        gr.Warning(f"LAFR: {message}")
    except Exception:  # noqa: BLE001 - no gradio, or an old one without Warning: the console line stays
        pass


def _first_time(key: Hashable) -> bool:
    if key in _shown:
        return False
    _shown.add(key)
    return True


def notify_once(key: Hashable, message: str) -> bool:
    """notify(message) unless `key` was already shown; True when shown now."""
    if not _first_time(key):
        return False
    notify(message)
    return True


def log_once(key: Hashable, message: str) -> bool:
    """A console line, once per `key`, without a toast: for what the user may want to know but
    need not act on (how the webui runs a file that asks for something it does otherwise)."""
    if not _first_time(key):
        return False
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)
    return True
