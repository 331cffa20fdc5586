"""An evaluation's outputs: per-face CSV, a summary table, a contact sheet PNG.

The table puts the restored faces' averages next to the LQ faces' (what restoration changed),
with the direction of each metric; the contact sheet shows LQ | restored | HQ per face with that
face's numbers under it, so a bad average can be traced to the faces that make it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .runner import LOWER_IS_BETTER, SHEET_THUMB, EvalResult

LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "lpips": "LPIPS", "lmd_px": "LMD px", "id_dlib": "ID dlib", "id_arcface_deg": "ID deg", "fid": "FID"}
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "lmd_px": 2, "id_dlib": 3, "id_arcface_deg": 2, "fid": 2}
SHORT = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "lmd_px": "LMD", "id_dlib": "ID", "id_arcface_deg": "ID°"}
GAP, TEXT_H, HEADER_H = 6, 30, 20


def _font(size: int = 11):
    """Pillow's bundled FreeType font when Pillow has FreeType (>= 10.1), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def fmt(column: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.{DIGITS.get(column.removeprefix('lq_'), 4)}f}"


def write_csv(result: EvalResult, path: str | Path) -> Path:
    """One row per face (name + every column), then a 'mean' row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", *result.columns])
        for row in result.rows:
            writer.writerow([row["name"], *(repr(row[c]) for c in result.columns)])
        writer.writerow(["mean", *(repr(result.mean(c)[0]) for c in result.columns)])
    return path


def summary_table(result: EvalResult) -> str:
    """Markdown table: metric, direction, restored mean, LQ mean, faces scored; then notes."""
    metrics = [c for c in result.columns if not c.startswith("lq_")]
    has_lq = any(c.startswith("lq_") for c in result.columns)
    lines = [f"| metric | better | restored | {'LQ input | ' if has_lq else ''}faces |", "|---|---|---|" + ("---|" if has_lq else "") + "---|"]
    for column in metrics:
        mean, n = result.mean(column)
        cells = [LABELS.get(column, column), "lower" if column in LOWER_IS_BETTER else "higher", fmt(column, mean)]
        if has_lq:
            cells.append(fmt(column, result.mean(f"lq_{column}")[0]))
        lines.append("| " + " | ".join([*cells, f"{n}/{len(result.rows)}"]) + " |")
    if "fid" in result.fid:
        cells = ["FID", "lower", fmt("fid", result.fid["fid"])] + ([fmt("fid", result.fid.get("lq_fid", math.nan))] if has_lq else [])
        lines.append("| " + " | ".join([*cells, f"{len(result.rows)} (set)"]) + " |")
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines)


def face_caption(row: dict, columns: list[str], prefix: str = "") -> str:
    return "  ".join(f"{SHORT.get(c, c)} {fmt(c, row[prefix + c])}" for c in columns if not c.startswith("lq_") and prefix + c in row)


def contact_sheet(result: EvalResult) -> Image.Image:
    """Rows of LQ | restored | HQ thumbnails, each with the face's name and numbers under it."""
    rows = {row["name"]: row for row in result.rows}
    width = 3 * SHEET_THUMB + 2 * GAP
    height = HEADER_H + len(result.thumbs) * (SHEET_THUMB + TEXT_H + GAP)
    sheet = Image.new("RGB", (width, max(height, HEADER_H)), (24, 24, 24))
    draw, font = ImageDraw.Draw(sheet), _font()
    for k, title in enumerate(("LQ", "restored", "HQ")):
        draw.text((k * (SHEET_THUMB + GAP) + 4, 4), title, fill=(255, 255, 255), font=font)
    y = HEADER_H
    for name, *images in result.thumbs:
        for k, image in enumerate(images):
            sheet.paste(Image.fromarray(np.ascontiguousarray(image)), (k * (SHEET_THUMB + GAP), y))
        row = rows[name]
        draw.text((4, y + SHEET_THUMB + 2), f"{name}: {face_caption(row, result.columns)}", fill=(255, 255, 160), font=font)
        lq = face_caption(row, result.columns, "lq_")
        draw.text((4, y + SHEET_THUMB + 15), f"LQ input: {lq}" if lq else "", fill=(180, 180, 180), font=font)
        y += SHEET_THUMB + TEXT_H + GAP
    return sheet
