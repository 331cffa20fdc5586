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
from PIL import Image, ImageDraw

from .runner import LOWER_IS_BETTER, SHEET_THUMB, EvalResult

LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "lpips": "LPIPS", "lmd_px": "LMD px", "id_dlib": "ID dlib", "id_arcface_deg": "ID deg", "fid": "FID"}
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "lmd_px": 2, "id_dlib": 3, "id_arcface_deg": 2, "fid": 2}
GAP, TEXT_H, HEADER_H = 6, 30, 20


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


def face_caption(row: dict, columns: list[str]) -> str:
    return "  ".join(f"{LABELS.get(c, c)} {fmt(c, row[c])}" for c in columns if not c.startswith("lq_"))


def contact_sheet(result: EvalResult) -> Image.Image:
    """Rows of LQ | restored | HQ thumbnails, each with the face's name and numbers under it."""
    rows = {row["name"]: row for row in result.rows}
    width = 3 * SHEET_THUMB + 2 * GAP
    height = HEADER_H + len(result.thumbs) * (SHEET_THUMB + TEXT_H + GAP)
    sheet = Image.new("RGB", (width, max(height, HEADER_H)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for k, title in enumerate(("LQ", "restored", "HQ")):
        draw.text((k * (SHEET_THUMB + GAP) + 4, 4), title, fill=(255, 255, 255))
    y = HEADER_H
    for name, *images in result.thumbs:
        for k, image in enumerate(images):
            sheet.paste(Image.fromarray(np.ascontiguousarray(image)), (k * (SHEET_THUMB + GAP), y))
        row = rows[name]
        caption = face_caption(row, result.columns)
        lq = "  ".join(f"{LABELS.get(c[3:], c)} {fmt(c, row[c])}" for c in result.columns if c.startswith("lq_") and c[3:] in ("psnr", "ssim"))
        draw.text((4, y + SHEET_THUMB + 2), f"{name}: {caption}", fill=(255, 255, 160))
        draw.text((4, y + SHEET_THUMB + 15), f"LQ: {lq}" if lq else "", fill=(180, 180, 180))
        y += SHEET_THUMB + TEXT_H + GAP
    return sheet
