"""The arguments of the face restorer (from Settings) and of the Extras script (UI or API), checked.

One frozen model per entry point, built by `from_dict`, which acts like a pydantic model with
`extra="forbid"`: an unknown key is an error naming it (a typo in an API call must not be
silently ignored), every value is type- and range-checked, and None means "not given". That last
rule is A1111's: an API call that does not mention a postprocessing script passes None for every
one of its arguments, so ExtrasArgs with enable=None is simply off. No pydantic: A1111 pins v1,
Forge v2, and these few fields do not need either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, TypeVar

from lafr_core.face import COLOUR_CORRECTIONS, DETECTORS, FILE_COLOUR_FIX, colour_for

AUTOMATIC = "Automatic"  # Settings' LAFR file: the first file in models/LAFR
FROM_SETTINGS = "Use settings"  # Extras' LAFR file: whatever Settings > LAFR says
FILE_COLOUR = FILE_COLOUR_FIX  # the file's own `lafr.colour_fix` (none for LAFR, adain for OSEDiff)
COLOUR_CHOICES = (FILE_COLOUR, *COLOUR_CORRECTIONS)
MAX_SEED = 2**63  # torch.Generator.manual_seed takes any int64 >= 0

T = TypeVar("T")


class ArgsError(ValueError):
    """An argument is unknown, of the wrong type or out of range (the message names it)."""


def _model_from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """cls(**data) without None values; unknown keys rejected by name."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ArgsError(f"{where}: unknown argument(s) {unknown}; expected {sorted(names)}")
    return cls(**{key: value for key, value in data.items() if value is not None})


def _check_choice(where: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ArgsError(f"{where}: {name} must be one of {list(choices)}, got {value!r}")


def _check_unit(where: str, name: str, value: Any) -> float:
    """A number in [0, 1] (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgsError(f"{where}: {name} must be a number between 0 and 1, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ArgsError(f"{where}: {name} must be between 0 and 1, got {value}")
    return float(value)


def _check_name(where: str, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ArgsError(f"{where}: {name} must be a file name, got {value!r}")


def _check_seed(where: str, name: str, value: Any) -> int:
    """A whole number in [0, 2**63) (a settings file may store it as 7.0; bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise ArgsError(f"{where}: {name} must be a whole number, got {value!r}")
    if not 0 <= value < MAX_SEED:
        raise ArgsError(f"{where}: {name} must be between 0 and {MAX_SEED - 1}, got {int(value)}")
    return int(value)


def _check_text(where: str, name: str, value: Any) -> str:
    """Text, surrounding blanks dropped ("" = not set)."""
    if not isinstance(value, str):
        raise ArgsError(f"{where}: {name} must be text, got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class RestoreArgs:
    """Settings > LAFR: what the face restorer (txt2img/img2img "Restore faces", ADetailer) uses."""

    lafr_file: str = AUTOMATIC
    detector: str = "auto"
    strength: float = 1.0
    colour_correction: str = FILE_COLOUR
    prompt: str = ""  # "" = the file's own prompt (InterLCM files take none)
    seed: int = 0  # InterLCM files' noise (every face draws the same seed); LAFR's engine draws none

    def __post_init__(self) -> None:
        where = "Settings > LAFR"
        _check_name(where, "lafr_file", self.lafr_file)
        _check_choice(where, "detector", self.detector, DETECTORS)
        object.__setattr__(self, "strength", _check_unit(where, "strength", self.strength))
        _check_choice(where, "colour_correction", self.colour_correction, COLOUR_CHOICES)
        object.__setattr__(self, "prompt", _check_text(where, "prompt", self.prompt))
        object.__setattr__(self, "seed", _check_seed(where, "seed", self.seed))

    def colour_for(self, file_colour_fix: str) -> str:
        """The colour correction to run: the setting, or with FILE_COLOUR the file's own."""
        return colour_for(self.colour_correction, file_colour_fix)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RestoreArgs":
        return _model_from_dict(cls, data, "Settings > LAFR")


@dataclass(frozen=True)
class ExtrasArgs:
    """Extras tab > LAFR. `visibility` blends the restored faces over the input (GFPGAN's name for
    it); `lafr_file` FROM_SETTINGS and an empty `prompt` defer to Settings > LAFR."""

    enable: bool = False
    visibility: float = 1.0
    lafr_file: str = FROM_SETTINGS
    prompt: str = ""

    def __post_init__(self) -> None:
        where = "Extras > LAFR"
        if not isinstance(self.enable, bool):
            raise ArgsError(f"{where}: enable must be true or false, got {self.enable!r}")
        object.__setattr__(self, "visibility", _check_unit(where, "visibility", self.visibility))
        _check_name(where, "lafr_file", self.lafr_file)
        object.__setattr__(self, "prompt", _check_text(where, "prompt", self.prompt))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExtrasArgs":
        return _model_from_dict(cls, data, "Extras > LAFR")

    @property
    def active(self) -> bool:
        """Anything to do: enabled with a visible result."""
        return self.enable and self.visibility > 0.0

    def over(self, settings: RestoreArgs) -> RestoreArgs:
        """The restorer arguments for this Extras run: visibility as strength, file and prompt if
        given; detector, colour correction and InterLCM's seed from Settings."""
        lafr_file = settings.lafr_file if self.lafr_file == FROM_SETTINGS else self.lafr_file
        return RestoreArgs(lafr_file=lafr_file, detector=settings.detector, strength=self.visibility,
                           colour_correction=settings.colour_correction, prompt=self.prompt or settings.prompt, seed=settings.seed)
