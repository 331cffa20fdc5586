"""Errors of the face pipeline: each message names the file, folder or option that fixes it."""

from __future__ import annotations


class FaceError(ValueError):
    """Base class: something the user can fix (a file, a folder, an option)."""


class DetectorWeightsError(FaceError):
    """A detector's weights file is missing, unreadable or does not fit the network."""


class DetectorUnavailableError(FaceError):
    """A detector cannot run here (its optional package is not installed or does not import)."""
