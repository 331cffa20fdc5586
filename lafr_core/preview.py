"""Preview sheets for the CLI: what was detected, what the restorer saw, what came out.

One PNG per photo: the input with each face's box, index, score and five landmarks drawn; the
output next to it (when there is one); below, the aligned crops (and restored crops) in a row.
Drawn with PIL on 8-bit copies; the pipeline's tensors are never touched.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from .face.faceset import FaceSet
from .image_io import to_uint8_rgb

LANDMARK_COLOURS = ((255, 64, 64), (64, 160, 255), (64, 255, 64), (255, 200, 0), (255, 0, 255))
BOX_COLOUR = (0, 255, 255)
CROP_THUMB = 192  # crops are shown at this size: 4 faces fit the width of a typical photo
PANEL_GAP = 8


def annotate(image: torch.Tensor, faces: FaceSet, image_index: int) -> Image.Image:
    """image [H, W, C] float 0..1 -> PIL RGB with boxes, indices, scores and landmarks drawn."""
    canvas = Image.fromarray(to_uint8_rgb(image.cpu()))
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(max(canvas.size) / 400))
    mine = (faces.image_index == image_index).nonzero()[:, 0].tolist()
    for rank, i in enumerate(mine):
        x1, y1, x2, y2 = faces.boxes[i].tolist()
        draw.rectangle([x1, y1, x2, y2], outline=BOX_COLOUR, width=line)
        draw.text((x1 + 2, max(0, y1 - 12)), f"{rank}: {float(faces.scores[i]):.2f}", fill=BOX_COLOUR)
        radius = max(2, line + 1)
        for (x, y), colour in zip(faces.landmarks[i].tolist(), LANDMARK_COLOURS, strict=True):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    return canvas


def _thumbs(crops: torch.Tensor | None) -> list[Image.Image]:
    if crops is None:
        return []
    return [Image.fromarray(to_uint8_rgb(c.cpu())).resize((CROP_THUMB, CROP_THUMB), Image.LANCZOS) for c in crops]


def preview_sheet(
    image: torch.Tensor,
    faces: FaceSet,
    image_index: int,
    crops: torch.Tensor | None = None,
    restored_crops: torch.Tensor | None = None,
    output: torch.Tensor | None = None,
) -> Image.Image:
    """Annotated input | output on top; aligned crops (and restored crops) underneath."""
    top = [annotate(image, faces, image_index)]
    if output is not None:
        top.append(Image.fromarray(to_uint8_rgb(output.cpu())))
    rows = [_thumbs(crops), _thumbs(restored_crops)]
    rows = [r for r in rows if r]
    width = max(sum(p.width for p in top) + PANEL_GAP * (len(top) - 1),
                max((len(r) * (CROP_THUMB + PANEL_GAP) for r in rows), default=0))
    height = max(p.height for p in top) + sum(CROP_THUMB + PANEL_GAP for _ in rows)
    sheet = Image.new("RGB", (width, height), (32, 32, 32))
    x = 0
    for panel in top:
        sheet.paste(panel, (x, 0))
        x += panel.width + PANEL_GAP
    y = max(p.height for p in top) + PANEL_GAP
    for row in rows:
        for j, thumb in enumerate(row):
            sheet.paste(thumb, (j * (CROP_THUMB + PANEL_GAP), y))
        y += CROP_THUMB + PANEL_GAP
    return sheet
