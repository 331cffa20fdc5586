"""What an evaluation compares: (name, LQ face, HQ face[, restored face]) per face, read lazily.

Three ways in, each matched by file stem and sorted by name:
- HQ faces + a named degradation preset + a seed (`lafr_core.degrade.degrade_preset`): the LQ of
  face `name` is seeded by (seed, crc32(name)), so adding or removing files changes no other
  face's LQ, and the same command gives the same set on every machine;
- LQ/HQ pair folders (CelebA-Test's celeba_512_validation_lq / celeba_512_validation);
- either of those plus a folder of faces another tool already restored (`restored`).

HQ images that are square are taken as aligned faces (CelebA-Test, FFHQ) and resized to `size`
if needed; other photos are detected (bundled MTCNN) and their largest face aligned to the FFHQ
template, the way the trainer reads a user's photos. Faces are read one at a time: CelebA-Test's
3,000 faces would not fit in memory as float tensors.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..image_io import IMAGE_SUFFIXES, read_image


class EvalDataError(ValueError):
    """The evaluation inputs do not fit together; the message names the folder or file."""


def list_images(folder: str | Path, what: str) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalDataError(f"{what} folder {folder} does not exist")
    found = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    if not found:
        raise EvalDataError(f"{what} folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def rgb_numpy(path: Path) -> np.ndarray:
    """[H, W, 3] float32 0..1 RGB (grey repeated, alpha dropped)."""
    pixels = read_image(path).pixels[0]
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(-1, -1, 3)
    return np.ascontiguousarray(pixels[..., :3].numpy(), dtype=np.float32)


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    mode = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return np.clip(cv2.resize(image, (size, size), interpolation=mode), 0, 1)


def aligned_face(image: np.ndarray, size: int, name: str) -> np.ndarray:
    """A square image as it is (resized); another photo's largest face aligned to FFHQ."""
    if image.shape[0] == image.shape[1]:
        return resize_to(image, size)
    from ..face import align_faces, detect_faces

    pixels = torch.from_numpy(image)[None]
    faces = detect_faces(pixels, detector="mtcnn", select="largest")
    if len(faces) == 0:
        raise EvalDataError(f"{name}: not square (so not an aligned face) and no face was found in it")
    crops, _ = align_faces(pixels, faces, size=size)
    return crops[0].numpy()


def face_seed(seed: int, name: str) -> tuple[int, int]:
    """The degradation seed of one face: stable under adding/removing other files."""
    return (int(seed), zlib.crc32(name.encode("utf-8")))


@dataclass(frozen=True)
class EvalFace:
    name: str
    lq: torch.Tensor  # [S, S, 3] float 0..1
    hq: torch.Tensor
    restored: torch.Tensor | None = None


@dataclass
class EvalSet:
    """The faces of one evaluation, loaded one by one with `face(i)`."""

    names: list[str]
    hq: dict[str, Path]
    size: int = 512
    lq: dict[str, Path] | None = None  # None: degrade the HQ with `preset`
    preset: str | None = None
    seed: int = 0
    restored: dict[str, Path] | None = None

    @classmethod
    def from_folders(
        cls,
        hq: str | Path,
        lq: str | Path | None = None,
        preset: str | None = None,
        seed: int = 0,
        restored: str | Path | None = None,
        size: int = 512,
        limit: int | None = None,
    ) -> "EvalSet":
        """Match the folders by file stem; faces missing from LQ or restored are an error that
        lists a few of them (a silent subset would make numbers incomparable)."""
        if (lq is None) == (preset is None):
            raise EvalDataError("give either an LQ folder (LQ/HQ pairs) or a degradation preset, not both or neither")
        if preset is not None:
            from ..degrade import DegradeConfig

            DegradeConfig.preset(preset)  # unknown names fail here, listing the presets
        hq_files = list_images(hq, "HQ")
        lq_files = list_images(lq, "LQ") if lq is not None else None
        restored_files = list_images(restored, "restored") if restored is not None else None
        names = sorted(hq_files)
        for what, files in (("LQ", lq_files), ("restored", restored_files)):
            if files is not None:
                missing = [n for n in names if n not in files]
                if missing:
                    raise EvalDataError(
                        f"{len(missing)} HQ faces have no {what} file of the same name, e.g. {', '.join(missing[:5])}"
                    )
        if limit is not None:
            names = names[: max(0, int(limit))]
        return cls(names, hq_files, size, lq_files, preset, seed, restored_files)

    def __len__(self) -> int:
        return len(self.names)

    def face(self, i: int) -> EvalFace:
        from ..degrade import degrade_preset

        name = self.names[i]
        hq = aligned_face(rgb_numpy(self.hq[name]), self.size, name)
        if self.lq is not None:
            lq = resize_to(rgb_numpy(self.lq[name]), self.size)  # CelebA-Test's LQ are already 512
        else:
            lq, _ = degrade_preset(hq, self.preset, face_seed(self.seed, name))
        restored = None
        if self.restored is not None:
            restored = rgb_numpy(self.restored[name])
            if restored.shape[:2] != (self.size, self.size):
                raise EvalDataError(f"{self.restored[name]}: restored faces must be {self.size}x{self.size}, got {restored.shape[1]}x{restored.shape[0]}")
            restored = torch.from_numpy(restored)
        return EvalFace(name, torch.from_numpy(np.ascontiguousarray(lq, np.float32)), torch.from_numpy(hq), restored)

    def describe(self) -> str:
        source = f"LQ from {self.preset!r} degradation, seed {self.seed}" if self.preset else "LQ/HQ pairs"
        extra = ", restored faces from a folder" if self.restored is not None else ""
        return f"{len(self)} faces at {self.size}px, {source}{extra}"
