"""The "LAFR" face restorer: Settings > Face restoration, txt2img/img2img "Restore faces", ADetailer.

A webui face restorer is a modules.face_restoration.FaceRestoration with name() and
restore(np_image uint8 RGB) -> np_image, listed in modules.shared.face_restorers (HOSTS.md).
"Reload UI" re-runs scripts/lafr_a1111.py but keeps that list, so `register` replaces an entry of
the same name instead of appending a second one.

restore() never loses the user's image: a refused checkpoint, a missing file, no face found, an
interrupt or an unexpected error all return the input unchanged; problems the user can fix are
shown once, bugs get a full report (report.image_kept) every time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from modules import face_restoration, shared

from . import RESTORER_NAME, service
from .images import array_to_pixels, pixels_to_array
from .report import image_kept
from .settings import read_settings


class LafrFaceRestorer(face_restoration.FaceRestoration):
    def name(self) -> str:
        return RESTORER_NAME

    def restore(self, np_image: np.ndarray) -> np.ndarray:
        with image_kept("face restoration", {"np_image": np_image}):  # a generation is never lost to LAFR
            args = read_settings(shared.opts)
            outcome = service.restore(array_to_pixels(np_image), args, label="LAFR face restoration")
            return np_image if outcome.skipped else pixels_to_array(outcome.images)
        return np_image


def _entry_name(restorer: Any) -> str | None:
    try:
        return restorer.name()
    except Exception:  # noqa: BLE001 - another extension's broken entry must not stop ours
        return None


def register(restorers: list | None = None) -> LafrFaceRestorer:
    """Put a fresh LafrFaceRestorer into shared.face_restorers (in place: the webui holds that
    list), at the position of a stale "LAFR" entry if there is one, dropping any duplicates."""
    restorers = shared.face_restorers if restorers is None else restorers
    fresh = LafrFaceRestorer()
    stale = [i for i, entry in enumerate(restorers) if _entry_name(entry) == RESTORER_NAME]
    if stale:
        restorers[stale[0]] = fresh
        for i in reversed(stale[1:]):
            del restorers[i]
    else:
        restorers.append(fresh)
    return fresh
