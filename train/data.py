"""Training data: folders of HQ faces -> aligned squares -> seeded (LQ, HQ) pairs -> cached latents.

Why pairs are indexed by (image, variant) and seeded by the image's content hash: every random
choice of a pair (flip, crop, the whole degradation) is drawn from
`np.random.default_rng([seed, image_key, variant])`, so a pair is the same in every worker,
process, run and resumed run, whatever the data-loader order. That makes three things possible:
  * the latent cache: the VAE latents of pair (image, variant) are computed once, stored on disk
    under a fingerprint of everything that shaped them (VAE weights, resolution, degradation,
    augmentation, seed), and every later epoch reads them instead of running the VAE;
  * exact resume: the data order is a pure function of (seed, epoch), so a resumed run skips the
    batches it already consumed and sees exactly what the uninterrupted run would have seen;
  * adding images to a folder leaves the pairs (and cache entries) of the others unchanged.
An epoch visits every image once. With the cache, image i uses variant (epoch + offset_i) mod
`variants`; without it, the variant is the epoch itself (a fresh degradation every epoch).

Preparation lists the folders, decodes every file once (unreadable, truncated or tiny images are
skipped and listed, never fatal), and aligns non-aligned photos with lafr_core.face once, caching
the crops. The result is remembered in a scan index (size + mtime), so restarts are quick.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lafr_core.degrade import DegradeConfig, degrade

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MIN_SIDE = 64  # smaller images cannot make a face crop worth training on
VAL_STREAM = 1 << 30  # variant id of validation pairs: never a training variant
SCAN_INDEX = "scan_index.json"
SKIPPED_LIST = "skipped_images.txt"


class BadImage(Exception):
    """An image that cannot be used; the message says why (it ends up in skipped_images.txt)."""


@dataclass(frozen=True)
class FaceImage:
    """One usable training image: `load_path` holds an aligned face (square, any size)."""

    source: str  # the user's file
    load_path: str  # the file to read (the source, or its aligned crop in the cache)
    key: str  # content hash of the source (16 hex digits), seeds its pairs and names its cache entries

    @property
    def seed_int(self) -> int:
        return int(self.key, 16) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class PreparedData:
    images: list[FaceImage]
    skipped: list[tuple[str, str]]  # (file, reason)

    def write_skipped(self, folder: str | Path) -> Path | None:
        """List skipped files in <folder>/skipped_images.txt (removed when nothing was skipped)."""
        path = Path(folder) / SKIPPED_LIST
        if not self.skipped:
            path.unlink(missing_ok=True)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{src}\t{why}\n" for src, why in self.skipped))
        return path


# --------------------------------------------------------------------------- images


def load_rgb(path: str | Path) -> np.ndarray:
    """Any common image file -> RGB float32 [H, W, 3] in 0..1 (EXIF rotation applied, 16-bit
    kept at full precision, alpha dropped). Raises BadImage."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                gray = np.asarray(im, dtype=np.float32) / 65535.0
                array = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2)
            else:
                array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise BadImage(f"cannot decode: {type(err).__name__}: {err}") from None
    if array.ndim != 3 or min(array.shape[:2]) < MIN_SIDE:
        raise BadImage(f"too small ({array.shape[1]}x{array.shape[0]}, need at least {MIN_SIDE} px)")
    return np.ascontiguousarray(array)


def to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to `size` (area when shrinking, bicubic when growing)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    mode = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return np.clip(cv2.resize(square, (size, size), interpolation=mode), 0, 1)


def list_image_files(folders: Sequence[str | Path]) -> list[Path]:
    """Image files under `folders`, recursively, sorted (a stable order for seeding)."""
    files: list[Path] = []
    for folder in folders:
        files += [p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(set(files))


def file_key(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def align_face(image: np.ndarray, size: int) -> np.ndarray:
    """The largest face of `image`, aligned to the FFHQ template at `size` (lafr_core.face).

    Imported here, not at module level: only non-aligned data sets need the face pipeline. No
    face is a per-image problem (BadImage: skipped and listed); a detector that cannot run at
    all is a set-up problem and stops the run with the face pipeline's own message."""
    try:
        from lafr_core.face import align_faces, detect_faces
    except ImportError as err:
        raise RuntimeError(f"non-square images need the face pipeline to align them ({err}); pre-align them or pass --align resize") from None
    batch = torch.from_numpy(image)[None]
    try:
        faces = detect_faces(batch, select="largest")
    except ValueError as err:  # lafr_core.face.FaceError: missing detector weights / package
        raise RuntimeError(f"cannot detect faces to align the training images: {err} (or pass --align resize for pre-aligned data)") from None
    if len(faces) == 0:
        raise BadImage("no face detected")
    crops, _ = align_faces(batch, faces, size=size)
    return np.ascontiguousarray(crops[0].float().cpu().numpy())


def _save_png(image: np.ndarray, path: Path) -> None:
    """8-bit PNG written atomically (a half-written crop would poison the cache)."""
    bgr = cv2.cvtColor(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.tobytes())
    tmp.replace(path)


def prepare_images(
    folders: Sequence[str | Path],
    align: str,
    resolution: int,
    cache_dir: str | Path,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> PreparedData:
    """Scan, check and (when needed) align every image once. See the module docstring.

    align: "auto" (square = already aligned, other shapes are detected and aligned), "detect"
    (align everything) or "resize" (centre-crop, never detect).
    """
    cache_dir = Path(cache_dir)
    index_path = cache_dir / SCAN_INDEX
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    except json.JSONDecodeError:
        index = {}
    files = list_image_files(folders)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {', '.join(map(str, folders))}")
    images: list[FaceImage] = []
    skipped: list[tuple[str, str]] = []
    new_index: dict[str, dict] = {}
    seen_keys: dict[str, str] = {}
    iterator = progress(iter(files)) if progress else files
    for path in iterator:
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}:{align}:{resolution}"
        entry = index.get(str(path))
        if entry is None or entry.get("stamp") != stamp or (entry.get("load") and not Path(entry["load"]).is_file()):
            entry = _prepare_one(path, stamp, align, resolution, cache_dir)
        new_index[str(path)] = entry
        if entry.get("error"):
            skipped.append((str(path), entry["error"]))
        elif entry["key"] in seen_keys:
            skipped.append((str(path), f"duplicate of {seen_keys[entry['key']]}"))
        else:
            seen_keys[entry["key"]] = str(path)
            images.append(FaceImage(source=str(path), load_path=entry["load"], key=entry["key"]))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f".{SCAN_INDEX}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(new_index))
    tmp.replace(index_path)
    if not images:
        reasons = "; ".join(f"{Path(s).name}: {r}" for s, r in skipped[:5])
        raise FileNotFoundError(f"none of the {len(files)} images is usable ({reasons})")
    return PreparedData(images=images, skipped=skipped)


def _prepare_one(path: Path, stamp: str, align: str, resolution: int, cache_dir: Path) -> dict:
    try:
        image = load_rgb(path)
        key = file_key(path)
        h, w = image.shape[:2]
        if align == "resize" or (align == "auto" and h == w):
            return {"stamp": stamp, "key": key, "load": str(path)}
        crop = align_face(image, resolution)
        target = cache_dir / "aligned" / f"{key}-{resolution}.png"
        _save_png(crop, target)
        return {"stamp": stamp, "key": key, "load": str(target)}
    except BadImage as err:
        return {"stamp": stamp, "error": str(err)}


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class PairRecipe:
    """What shapes a pair; its JSON is part of the latent-cache fingerprint."""

    resolution: int
    seed: int
    flip_prob: float
    crop_scale: tuple[float, float]
    degrade: DegradeConfig

    def to_json(self) -> str:
        return json.dumps(
            {"resolution": self.resolution, "seed": self.seed, "flip_prob": self.flip_prob,
             "crop_scale": list(self.crop_scale), "degrade": self.degrade.to_dict()},
            sort_keys=True,
        )  # fmt: skip


@dataclass(frozen=True)
class Augment:
    """One pair's augmentation: a square crop (top, left, side) resized back to `size`, then an
    optional horizontal flip."""

    size: int
    flip: bool
    side: int
    top: int
    left: int

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Move [k, 2] pixel points (centres at integers) of the square image with the crop and
        flip; for the 5 face landmarks, a flip also swaps left/right (eyes, mouth corners)."""
        scale = self.size / self.side
        out = (np.asarray(xy, np.float64) - [self.left, self.top] + 0.5) * scale - 0.5
        if self.flip:
            out[:, 0] = self.size - 1 - out[:, 0]
            if len(out) == 5:
                out = out[[1, 0, 2, 4, 3]]
        return out


def draw_augment(rng: np.random.Generator, size: int, flip_prob: float, crop_scale: tuple[float, float]) -> Augment:
    """The random draws of `augment`, in its order (pairs and cached latents depend on it)."""
    flip = rng.random() < flip_prob
    scale = float(rng.uniform(*crop_scale)) if crop_scale[1] > crop_scale[0] else float(crop_scale[0])
    side = max(8, min(size, round(size * scale)))
    top = int(rng.integers(0, size - side + 1))
    left = int(rng.integers(0, size - side + 1))
    return Augment(size=size, flip=bool(flip), side=side, top=top, left=left)


def apply_augment(hq: np.ndarray, aug: Augment) -> np.ndarray:
    out = hq[aug.top : aug.top + aug.side, aug.left : aug.left + aug.side]
    if aug.side != aug.size:
        out = np.clip(cv2.resize(out, (aug.size, aug.size), interpolation=cv2.INTER_CUBIC), 0, 1)
    if aug.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def augment(hq: np.ndarray, rng: np.random.Generator, flip_prob: float, crop_scale: tuple[float, float]) -> np.ndarray:
    """Random flip and random square crop resized back to the input size (drawn from `rng`)."""
    return apply_augment(hq, draw_augment(rng, hq.shape[0], flip_prob, crop_scale))


def pair_landmarks(image: FaceImage, variant: int, recipe: PairRecipe) -> np.ndarray:
    """[5, 2] float32: the FFHQ template's 5 points where they land in pair (image, variant)'s
    HQ crop (training images are FFHQ-aligned squares), for the D3DFR alignment of the
    facial-structure loss."""
    from lafr_core.face.align import ffhq_template

    rng = np.random.default_rng([recipe.seed, image.seed_int, variant])
    aug = draw_augment(rng, recipe.resolution, recipe.flip_prob, recipe.crop_scale)
    return aug.points(ffhq_template(recipe.resolution).numpy()).astype(np.float32)


def make_pair(hq_square: np.ndarray, image: FaceImage, variant: int, recipe: PairRecipe) -> tuple[np.ndarray, np.ndarray]:
    """(LQ, HQ) of one (image, variant), both [R, R, 3] float32 0..1; deterministic."""
    rng = np.random.default_rng([recipe.seed, image.seed_int, variant])
    hq = augment(hq_square, rng, recipe.flip_prob, recipe.crop_scale)
    lq, _ = degrade(hq, rng, recipe.degrade)
    return lq, hq


def validation_pair(hq_square: np.ndarray, image: FaceImage, recipe: PairRecipe, degrade_config: DegradeConfig) -> tuple[np.ndarray, np.ndarray]:
    """A fixed validation pair: no augmentation, its own degradation stream."""
    lq, _ = degrade(hq_square, np.random.default_rng([recipe.seed, image.seed_int, VAL_STREAM]), degrade_config)
    return lq, hq_square


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """[H, W, 3] 0..1 -> [3, H, W] -1..1 (what the SD VAE takes)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) * 2.0 - 1.0


# --------------------------------------------------------------------------- latent cache


class LatentCache:
    """Scaled VAE latents of (image, variant) pairs on disk, one small safetensors per pair.

    Entries live in a folder named by the fingerprint of everything that shaped them, so a
    changed VAE, resolution, degradation or seed can never read stale latents. Writes are
    atomic (temp + rename); an unreadable entry counts as missing and is recomputed.
    Stored in float16: half the disk, and far below the VAE's own fp16 noise on GPU.
    """

    def __init__(self, root: str | Path, fingerprint: str, describe: dict | None = None) -> None:
        self.fingerprint = fingerprint
        self.dir = Path(root) / "latents" / fingerprint[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        if describe is not None and not (self.dir / "recipe.json").exists():
            (self.dir / "recipe.json").write_text(json.dumps(describe, indent=1, sort_keys=True))

    def path(self, key: str, variant: int) -> Path:
        return self.dir / f"{key}-{variant:04d}.safetensors"

    def has(self, key: str, variant: int) -> bool:
        return self.path(key, variant).is_file()

    def save(self, key: str, variant: int, lq: torch.Tensor, hq: torch.Tensor) -> None:
        from safetensors.torch import save_file

        target = self.path(key, variant)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        save_file({"lq": lq.detach().to("cpu", torch.float16).contiguous(), "hq": hq.detach().to("cpu", torch.float16).contiguous()}, str(tmp))
        tmp.replace(target)

    def load(self, key: str, variant: int) -> dict[str, torch.Tensor] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return {k: v.float() for k, v in load_file(str(self.path(key, variant))).items()}
        except (FileNotFoundError, SafetensorError, OSError):
            return None


def cache_fingerprint(recipe: PairRecipe, vae_fingerprint: str, latent_scale: float) -> str:
    text = json.dumps({"recipe": recipe.to_json(), "vae": vae_fingerprint, "scale": latent_scale, "v": 1}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


# --------------------------------------------------------------------------- datasets and order


class FacePairs(Dataset):
    """Pairs by flat index `variant * num_images + image`; returns the requested `fields`:
    "lq", "hq" (pixels [3, R, R] in -1..1), "lq_latent", "hq_latent" (from the cache) and/or
    "landmarks" ([5, 2], the FFHQ template moved with the pair's crop and flip)."""

    FIELDS = ("lq", "hq", "lq_latent", "hq_latent", "landmarks")

    def __init__(self, images: Sequence[FaceImage], recipe: PairRecipe, fields: Sequence[str], cache: LatentCache | None = None) -> None:
        bad = [f for f in fields if f not in self.FIELDS]
        if bad or not fields:
            raise ValueError(f"FacePairs fields must be a non-empty subset of {self.FIELDS}, got {list(fields)}")
        if any(f.endswith("_latent") for f in fields) and cache is None:
            raise ValueError("latent fields need a LatentCache")
        self.images, self.recipe, self.fields, self.cache = list(images), recipe, tuple(fields), cache

    def __len__(self) -> int:
        return len(self.images)  # one epoch = every image once; indices may name any variant

    def split(self, index: int) -> tuple[int, int]:
        return index % len(self.images), index // len(self.images)

    def hq_square(self, i: int) -> np.ndarray:
        return to_square(load_rgb(self.images[i].load_path), self.recipe.resolution)

    def pixels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        i, variant = self.split(index)
        return make_pair(self.hq_square(i), self.images[i], variant, self.recipe)

    def __getitem__(self, index: int) -> dict:
        i, variant = self.split(index)
        item: dict = {"index": index}
        if "lq" in self.fields or "hq" in self.fields:
            if "lq" in self.fields:
                lq, hq = self.pixels(index)
                item["lq"] = to_tensor(lq)
            else:  # HQ only: the augmentation alone, no degradation work
                rng = np.random.default_rng([self.recipe.seed, self.images[i].seed_int, variant])
                hq = augment(self.hq_square(i), rng, self.recipe.flip_prob, self.recipe.crop_scale)
            if "hq" in self.fields:
                item["hq"] = to_tensor(hq)
        if "lq_latent" in self.fields or "hq_latent" in self.fields:
            entry = self.cache.load(self.images[i].key, variant)
            if entry is None:
                raise RuntimeError(
                    f"latent cache entry missing for {self.images[i].source} variant {variant} in {self.cache.dir}; "
                    "the trainer fills the cache before training (was it deleted meanwhile?)"
                )
            for name in ("lq", "hq"):
                if f"{name}_latent" in self.fields:
                    item[f"{name}_latent"] = entry[name]
        if "landmarks" in self.fields:
            item["landmarks"] = torch.from_numpy(pair_landmarks(self.images[i], variant, self.recipe))
        return item


class EpochSampler(Sampler[int]):
    """Data order as a pure function of (seed, epoch): a seeded permutation of the images, each
    with its variant for the epoch. `variants=None` means a fresh variant every epoch."""

    def __init__(self, num_images: int, variants: int | None, seed: int) -> None:
        self.num_images, self.variants, self.seed, self.epoch = num_images, variants, seed, 0
        offsets = torch.Generator().manual_seed(seed * 7919 + 17)
        self.offsets = torch.randint(0, variants or 1, (num_images,), generator=offsets).tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_variant(self, image: int, epoch: int) -> int:
        return (epoch + self.offsets[image]) % self.variants if self.variants else epoch

    def __len__(self) -> int:
        return self.num_images

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_images, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        for i in order.tolist():
            yield self.epoch_variant(i, self.epoch) * self.num_images + i

