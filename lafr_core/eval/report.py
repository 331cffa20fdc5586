"""An evaluation's outputs: per-face CSV, a summary table, a contact sheet PNG.

The table puts the restored faces' averages next to the LQ faces' (what restoration changed),
with the direction of each metric; the contact sheet shows LQ | restored | HQ per face with that
face's numbers under it, so a bad average can be traced to the faces that make it.

`--protocol table1` adds the LAFR paper's Table 1 (CelebA-Test) columns in the paper's order
(`protocol_table`, `write_protocol_csv`); a column that could not be computed stays in its place,
marked "not computed", with the reason listed under the table.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .runner import LOWER_IS_BETTER, SHEET_THUMB, EvalResult

LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "lpips": "LPIPS", "dists": "DISTS", "musiq": "MUSIQ", "clipiqa": "CLIP-IQA",
          "maniqa": "MANIQA", "niqe": "NIQE", "lmd_px": "LMD px", "id_dlib": "ID dlib", "id_arcface_deg": "ID deg", "fid": "FID",
          "fid_ffhq": "FID-F"}
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "dists": 4, "musiq": 2, "clipiqa": 4, "maniqa": 4, "niqe": 3, "lmd_px": 2, "id_dlib": 3,
          "id_arcface_deg": 2, "fid": 2, "fid_ffhq": 2}
SHORT = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "dists": "DISTS", "musiq": "MUSIQ", "clipiqa": "CLIPIQA", "maniqa": "MANIQA",
         "niqe": "NIQE", "lmd_px": "LMD", "id_dlib": "ID", "id_arcface_deg": "ID°"}
# The LAFR paper's Table 1 (CelebA-Test), its column names and order -> our column.
TABLE1 = (("PSNR", "psnr"), ("SSIM", "ssim"), ("LPIPS", "lpips"), ("DISTS", "dists"), ("MUSIQ", "musiq"), ("NIQE", "niqe"),
          ("Deg.", "id_arcface_deg"), ("LMD", "lmd_px"), ("FID-F", "fid_ffhq"), ("FID", "fid"), ("CLIP-IQA", "clipiqa"), ("MANIQA", "maniqa"))
SET_METRICS = ("fid", "fid_ffhq")  # one number for the whole set (result.fid), not per face
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
    for column in SET_METRICS:
        if column in result.fid:
            cells = [LABELS[column], "lower", fmt(column, result.fid[column])]
            cells += [fmt(column, result.fid.get(f"lq_{column}", math.nan))] if has_lq else []
            lines.append("| " + " | ".join([*cells, f"{len(result.rows)} (set)"]) + " |")
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines)


def protocol_values(result: EvalResult, column: str) -> tuple[float, float, str] | None:
    """(restored, LQ, faces) for one Table-1 column, or None when it was not computed."""
    if column in SET_METRICS:
        if column not in result.fid:
            return None
        return result.fid[column], result.fid.get(f"lq_{column}", math.nan), f"{len(result.rows)} (set)"
    if column not in result.columns:
        return None
    (mean, n), lq = result.mean(column), (result.mean(f"lq_{column}")[0] if f"lq_{column}" in result.columns else math.nan)
    return mean, lq, f"{n}/{len(result.rows)}"


def protocol_table(result: EvalResult, skipped: dict[str, str] | None = None) -> str:
    """Markdown: the paper's Table 1 columns in its order, then "not computed: <why>" for each gap.

    `skipped` maps our column to why it is missing (a loader's note); a gap without one is
    still listed."""
    skipped = skipped or {}
    lines = ["| Table 1 | better | restored | LQ input | faces |", "|---|---|---|---|---|"]
    gaps = []
    for label, column in TABLE1:
        better = "lower" if column in LOWER_IS_BETTER else "higher"
        values = protocol_values(result, column)
        if values is None:
            lines.append(f"| {label} | {better} | not computed | | |")
            why = re.sub(r"^[\w.\- ]+ (not computed|skipped): ", "", skipped.get(column, "no value (see the notes)"))
            gaps.append(f"not computed: {label}: {why}")
        else:
            lines.append(f"| {label} | {better} | {fmt(column, values[0])} | {fmt(column, values[1])} | {values[2]} |")
    return "\n".join(lines + [f"- {gap}" for gap in gaps])


def table1_order(columns: list[str]) -> list[str]:
    """Per-face columns with Table 1's first, in its order (restored, then their lq_ twins), then the rest."""
    paper = [c for _, c in TABLE1 if c in columns]
    first = paper + [f"lq_{c}" for c in paper if f"lq_{c}" in columns]
    return first + [c for c in columns if c not in first]


def write_protocol_csv(result: EvalResult, path: str | Path) -> Path:
    """table1.csv: a header of the paper's column names, then the 'restored' and 'lq' means (empty where not computed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = [protocol_values(result, column) for _, column in TABLE1]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", *(label for label, _ in TABLE1)])
        for k, name in enumerate(("restored", "lq")):
            writer.writerow([name, *("" if v is None else repr(float(v[k])) for v in values)])
    return path


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
