"""FaceSet: every face found in a batch of images, as one immutable record.

Hosts pass this between nodes (ComfyUI's LAFR_FACES socket) and the CLI passes it between
detect, align and paste. facexlib keeps the same data as lists on a helper object that must be
cleaned between images and whose stored inverse affines are shifted by every paste; here every
step returns a new FaceSet (dataclasses.replace), so pasting twice gives the same result and
nothing leaks from one image to the next.

Coordinates are image pixels with pixel centres at integer positions (OpenCV's convention, which
the FFHQ template and facexlib's landmarks use too). Landmark order: left eye, right eye, nose,
left mouth corner, right mouth corner, "left" meaning the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True, eq=False)  # tensors have no single truth value: identity equality
class FaceSet:
    """All faces of a batch: tensors indexed by face, sorted by image, then largest box first.

    image_index [N] int64 : which image of the batch each face is in
    boxes       [N, 4]    : x1, y1, x2, y2 (image pixels)
    scores      [N]       : detector confidence 0..1
    landmarks   [N, 5, 2] : x, y of LANDMARK_NAMES
    image_sizes           : (height, width) of every image in the batch, also those with no face
    skipped_small         : per image, faces the detector found but `min_size` dropped
    affines     [N, 2, 3] : image pixel -> crop pixel (set by align_faces)
    inverses    [N, 2, 3] : crop pixel -> image pixel (set by align_faces)
    crop_size             : side of the aligned crops the affines refer to (set by align_faces)
    track_ids   [N] int64 : video only: the track each face belongs to across frames (0 = the first
                            face to appear; lafr_core.video.temporal_faces sets it), else None
    """

    image_index: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor
    image_sizes: tuple[tuple[int, int], ...]
    skipped_small: tuple[int, ...] = ()
    detector: str = ""
    affines: torch.Tensor | None = None
    inverses: torch.Tensor | None = None
    crop_size: int | None = None
    track_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.image_index.shape[0]
        shapes = {"boxes": (n, 4), "scores": (n,), "landmarks": (n, 5, 2)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"FaceSet.{name} must have shape {shape}, got {tuple(getattr(self, name).shape)}")
        for name in ("affines", "inverses"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (n, 2, 3):
                raise ValueError(f"FaceSet.{name} must have shape {(n, 2, 3)}, got {tuple(value.shape)}")
        if self.track_ids is not None and tuple(self.track_ids.shape) != (n,):
            raise ValueError(f"FaceSet.track_ids must have shape {(n,)}, got {tuple(self.track_ids.shape)}")
        if self.skipped_small and len(self.skipped_small) != len(self.image_sizes):
            raise ValueError("FaceSet.skipped_small needs one count per image")
        if n and int(self.image_index.max()) >= len(self.image_sizes):
            raise ValueError("FaceSet.image_index points past the last image")

    # ------------------------------------------------------------------ construction

    @classmethod
    def empty(cls, image_sizes: tuple[tuple[int, int], ...], detector: str = "", device: torch.device | str = "cpu") -> "FaceSet":
        """No faces: what detection returns for images without any (never an exception)."""
        z = torch.zeros
        return cls(
            image_index=z(0, dtype=torch.long, device=device),
            boxes=z(0, 4, device=device),
            scores=z(0, device=device),
            landmarks=z(0, 5, 2, device=device),
            image_sizes=tuple(image_sizes),
            skipped_small=(0,) * len(image_sizes),
            detector=detector,
        )

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @property
    def num_images(self) -> int:
        return len(self.image_sizes)

    @property
    def aligned(self) -> bool:
        return self.affines is not None

    def counts(self) -> list[int]:
        """Faces per image (0 for an image without faces)."""
        return torch.bincount(self.image_index.cpu(), minlength=self.num_images).tolist()

    def face_sizes(self) -> torch.Tensor:
        """Size of each face in pixels: the longer side of its box (what `min_size` compares)."""
        wh = self.boxes[:, 2:] - self.boxes[:, :2]
        return wh.max(dim=1).values

    # ------------------------------------------------------------------ new sets

    def subset(self, keep: torch.Tensor) -> "FaceSet":
        """Faces where `keep` (bool mask or index tensor) selects, in that order."""
        keep = keep.to(self.image_index.device)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return t[keep] if t is not None else None

        return replace(
            self,
            image_index=self.image_index[keep],
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            landmarks=self.landmarks[keep],
            affines=pick(self.affines),
            inverses=pick(self.inverses),
            track_ids=pick(self.track_ids),
        )

    def to(self, device: torch.device | str) -> "FaceSet":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.to(device) if t is not None else None

        return replace(
            self,
            image_index=self.image_index.to(device),
            boxes=self.boxes.to(device),
            scores=self.scores.to(device),
            landmarks=self.landmarks.to(device),
            affines=move(self.affines),
            inverses=move(self.inverses),
            track_ids=move(self.track_ids),
        )

    def with_affines(self, affines: torch.Tensor, inverses: torch.Tensor, crop_size: int) -> "FaceSet":
        return replace(self, affines=affines, inverses=inverses, crop_size=int(crop_size))

    def with_track_ids(self, track_ids: torch.Tensor | None) -> "FaceSet":
        """The same faces labelled with their video track ids ([N] int64; None drops them)."""
        ids = None if track_ids is None else track_ids.to(device=self.image_index.device, dtype=torch.long)
        return replace(self, track_ids=ids)

    def describe(self) -> str:
        """One line for logs and the CLI: faces per image and what was skipped."""
        counts = self.counts()
        skipped = sum(self.skipped_small)
        text = f"{len(self)} face{'s' if len(self) != 1 else ''} in {self.num_images} image{'s' if self.num_images != 1 else ''}"
        if self.num_images > 1:
            text += f" ({', '.join(map(str, counts))})"
        if skipped:
            text += f", {skipped} too small skipped"
        if self.track_ids is not None and len(self):
            tracks = len(set(self.track_ids.tolist()))
            text += f", {tracks} track{'s' if tracks != 1 else ''}"
        return text
