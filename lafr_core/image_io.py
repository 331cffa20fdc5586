"""Image files <-> float tensors [1, H, W, C] 0..1 for the CLI: the only place pixels change type.

What a user expects back from a face restorer is their file with better faces, so this keeps:
  * bit depth: 8-bit stays 8-bit, 16-bit PNG stays 16-bit (decoded with OpenCV, since PIL
    reduces 16-bit RGB to 8 bits); the float tensor holds 16-bit values exactly;
  * channels: grey stays grey, grey+alpha and RGBA keep their alpha byte for byte;
  * format: the output uses the input's format (or the one the output name asks for);
  * metadata: EXIF, ICC profile, DPI and PNG text chunks are carried over; for PNG every
    ancillary chunk of the input that describes the picture (iCCP, sRGB, gAMA, cHRM, pHYs, text,
    eXIf, tIME) is copied into the new file, so this also works for 16-bit files;
  * orientation: photos are processed upright (EXIF orientation applied) and written back in
    their stored orientation, so the kept EXIF tag stays right.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
IMAGE_SUFFIXES = tuple(SUFFIX_FORMAT)
JPEG_QUALITY = 95  # quality of the re-encoded JPEG/WebP (PIL cannot read back the original's)
PNG_COPIED_CHUNKS = (b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"pHYs", b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME")
EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """An input file is not a readable image (message names the file)."""


@dataclass(frozen=True)
class LoadedImage:
    """Pixels as float [1, H, W, C] 0..1 (upright) plus what is needed to write them back."""

    pixels: torch.Tensor
    path: Path
    format: str  # "PNG", "JPEG" or "WEBP"
    bit_depth: int  # 8 or 16
    mode: str  # "L", "LA", "RGB" or "RGBA": the channels the file stores
    orientation: int = 1  # EXIF orientation that was undone on reading
    exif: bytes | None = None
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    png_chunks: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)


# --------------------------------------------------------------------------- orientation


def _orient(pixels: torch.Tensor, orientation: int, inverse: bool = False) -> torch.Tensor:
    """Apply (or undo) an EXIF orientation to [1, H, W, C] pixels (as PIL's exif_transpose)."""
    # orientation -> (mirror left-right first?, then quarter turns counter-clockwise)
    ops = {2: (True, 0), 3: (False, 2), 4: (True, 2), 5: (True, 1), 6: (False, 3), 7: (True, 3), 8: (False, 1)}
    if orientation not in ops:
        return pixels
    flip, turns = ops[orientation]
    if not inverse:
        out = pixels.flip(2) if flip else pixels
        return torch.rot90(out, turns, dims=(1, 2)) if turns else out
    out = torch.rot90(pixels, -turns, dims=(1, 2)) if turns else pixels
    return out.flip(2) if flip else out


# --------------------------------------------------------------------------- reading


def _png_chunks(data: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The ancillary chunks worth carrying over, as (type, payload), in file order."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ()
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind in PNG_COPIED_CHUNKS:
            chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return tuple(chunks)


def read_image(path: str | Path) -> LoadedImage:
    """Read a PNG / JPEG / WebP file; ImageReadError with the reason when it cannot be."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(f"{path}: the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, pil_mode, info = im.format, im.mode, dict(im.info)
            exif = im.getexif()
            orientation = int(exif.get(EXIF_ORIENTATION, 1))
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    if fmt not in SUFFIX_FORMAT.values():
        raise ImageReadError(f"{path}: {fmt} images are not supported (PNG, JPEG or WebP)")
    if width == 0 or height == 0:
        raise ImageReadError(f"{path}: zero-size image ({width}x{height})")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None or array.size == 0:
        raise ImageReadError(f"{path}: the {fmt} data is truncated or corrupt")
    pixels, bit_depth, mode = _to_float(array, pil_mode)
    return LoadedImage(
        pixels=_orient(pixels, orientation),
        path=path,
        format=fmt,
        bit_depth=bit_depth,
        mode=mode,
        orientation=orientation,
        exif=info.get("exif"),
        icc_profile=info.get("icc_profile"),
        dpi=info.get("dpi"),
        png_chunks=_png_chunks(data) if fmt == "PNG" else (),
    )


def _to_float(array: np.ndarray, pil_mode: str) -> tuple[torch.Tensor, int, str]:
    """OpenCV array (BGR order, uint8/uint16) -> ([1, H, W, C] float32 RGB 0..1, depth, mode)."""
    if array.dtype == np.uint16:
        depth, scale = 16, 65535.0
    elif array.dtype == np.uint8:
        depth, scale = 8, 255.0
    else:
        raise ImageReadError(f"unsupported sample type {array.dtype} (8- or 16-bit images only)")
    if array.ndim == 2:
        array, mode = array[..., None], "L"
    elif array.shape[2] == 3:
        array, mode = array[..., ::-1], "RGB"
    elif array.shape[2] == 4:
        array, mode = array[..., [2, 1, 0, 3]], "RGBA"
    else:
        raise ImageReadError(f"unsupported channel count {array.shape[2]}")
    if mode == "RGBA" and pil_mode == "LA":  # OpenCV expands grey+alpha to BGRA; remember it
        mode = "LA"
    pixels = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32) / scale)
    return pixels[None], depth, mode


# --------------------------------------------------------------------------- writing


def output_format(path: Path, fallback: str) -> str:
    return SUFFIX_FORMAT.get(path.suffix.lower(), fallback)


def _quantise(pixels: torch.Tensor, depth: int) -> np.ndarray:
    """[H, W, C] float 0..1 -> uint8/uint16 with rounding (exact for values read from a file)."""
    scale = 65535.0 if depth == 16 else 255.0
    values = (pixels.clamp(0, 1) * scale).round().cpu().numpy()
    return values.astype(np.uint16 if depth == 16 else np.uint8)


def _with_png_chunks(png: bytes, chunks: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """Insert `chunks` right after IHDR (before any image data), as the spec allows."""
    if not chunks:
        return png
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    extra = b"".join(struct.pack(">I", len(p)) + k + p + struct.pack(">I", zlib.crc32(k + p)) for k, p in chunks)
    return png[:ihdr_end] + extra + png[ihdr_end:]


def _channels_for_mode(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """[H, W, C] in the pipeline's channels -> the channels the file stores."""
    if mode == "LA" and pixels.shape[-1] == 4:
        luma = (pixels[..., :3] * pixels.new_tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
        return torch.cat([luma, pixels[..., 3:]], dim=-1)
    return pixels


def encode_image(pixels: torch.Tensor, like: LoadedImage, fmt: str | None = None) -> bytes:
    """Encode [1, H, W, C] float 0..1 pixels as `fmt` (default: the source's), with its metadata."""
    fmt = fmt or like.format
    upright = _orient(pixels, like.orientation, inverse=True)[0]
    stored = _channels_for_mode(upright, like.mode)
    depth = like.bit_depth if fmt == "PNG" else 8
    array = _quantise(stored, depth)
    if fmt == "PNG":
        bgr = array[..., 0] if array.shape[-1] == 1 else array
        if array.shape[-1] == 3:
            bgr = array[..., ::-1]
        elif array.shape[-1] == 4:
            bgr = array[..., [2, 1, 0, 3]]
        elif array.shape[-1] == 2:  # grey + alpha: OpenCV cannot write it, PIL can (8-bit)
            return _encode_pil(Image.fromarray(_quantise(stored, 8), "LA"), like, fmt)
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(bgr))
        if not ok:
            raise ValueError("PNG encoding failed")
        return _with_png_chunks(encoded.tobytes(), like.png_chunks if like.format == "PNG" else ())
    if array.shape[-1] == 4 and fmt == "JPEG":  # JPEG has no alpha: keep colour only
        array = array[..., :3]
    if array.shape[-1] == 2 and fmt == "JPEG":
        array = array[..., :1]
    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array, modes[array.shape[-1]])
    return _encode_pil(image, like, fmt)


def _encode_pil(image: Image.Image, like: LoadedImage, fmt: str) -> bytes:
    options: dict = {}
    if like.exif:
        options["exif"] = like.exif
    if like.icc_profile:
        options["icc_profile"] = like.icc_profile
    if like.dpi:
        options["dpi"] = like.dpi
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = JPEG_QUALITY
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_image(path: str | Path, pixels: torch.Tensor, like: LoadedImage) -> Path:
    """Write `pixels` [1, H, W, C] to `path` in the format its suffix names (else the source's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(pixels, like, output_format(path, like.format)))
    return path


def to_uint8_rgb(pixels: torch.Tensor) -> np.ndarray:
    """[H, W, C] float 0..1 -> uint8 RGB for previews (grey repeated, alpha dropped)."""
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(*pixels.shape[:-1], 3)
    return _quantise(pixels[..., :3], 8)
