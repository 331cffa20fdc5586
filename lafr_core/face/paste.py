"""Paste restored crops back into their photos: every face at once, with soft overlaps.

For each face only the image window its mask can reach is computed: the windows of all faces
(padded to the largest) are mapped into crop space with each face's affine, weighted by the soft
face mask and sampled from the crops in one grid_sample call; the pixels some mask reaches are
then accumulated per image pixel. facexlib instead warps a full-size image, mask and eroded,
blurred mask per face. Overlapping faces are blended by their weights (never "last face wins"
with a hard edge); the combined coverage is 1 - prod(1 - m_i), so it never exceeds one.

What must not change does not: outside the masks every pixel is returned exactly (so 16-bit
values survive), alpha is copied untouched, grey images stay one channel, the size never changes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .align import affine_scale, apply_affine, check_images, warp_faces
from .colour import COLOUR_CORRECTIONS, correct_colour
from .faceset import FaceSet
from .mask import DEFAULT_FEATHER, border_at, ellipse_extent, ellipse_params, face_crop_landmarks, mask_at

# ITU-R BT.601 luma, the weights PIL and OpenCV use for RGB -> grey: a grey image pasted with
# grey crops (R = G = B) gets its own values back.
LUMA = (0.299, 0.587, 0.114)
# Antialiasing blur, in image pixels, for a crop shrunk a lot on its way back (0 for no shrink).
# Measured trade-off on tests/data: 0.3 keeps pasting unmodified crops above 44 dB PSNR while
# cutting the response at the image's Nyquist frequency to 0.64 (none: 1.0, aliasing); 0.5
# would suppress more but blurs the photo's own detail (38 dB).
ANTIALIAS_SIGMA = 0.3
MASKS = ("landmarks", "parsenet")


def _sigmas(scale: torch.Tensor, sigma: float = ANTIALIAS_SIGMA) -> torch.Tensor:
    """Blur per face in crop pixels: sigma * sqrt(scale^2 - 1), 0 for crops that do not shrink."""
    return sigma * (scale.double().clamp_min(1) ** 2 - 1).sqrt()


def blur_radius(scale: torch.Tensor, sigma: float = ANTIALIAS_SIGMA) -> int:
    """Kernel radius (crop pixels) of the widest blur; 0 when no face needs one."""
    sigmas = _sigmas(scale, sigma)
    return 0 if float(sigmas.max()) < 0.05 else int(math.ceil(3 * float(sigmas.max())))


def antialias_crops(crops: torch.Tensor, scale: torch.Tensor, sigma: float = ANTIALIAS_SIGMA) -> torch.Tensor:
    """Blur each crop [N, 3, h, w] by a Gaussian of `sigma` image pixels taken into its crop
    (scale [N]: crop pixels per image pixel): sigma_crop = sigma * sqrt(scale^2 - 1), so a crop
    pasted at its own resolution or larger is not blurred. One grouped conv for all faces; each
    face's kernel has its own support, so the result does not depend on the other faces."""
    sigmas = _sigmas(scale, sigma).to(crops.device)
    radius = blur_radius(scale, sigma)
    if radius == 0:
        return crops
    n, c, h, w = crops.shape
    taps = torch.arange(-radius, radius + 1, device=crops.device, dtype=torch.float64)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigmas[:, None].clamp_min(1e-3) ** 2))
    kernel = kernel * (taps[None].abs() <= (3 * sigmas[:, None]).ceil())  # each face its own support
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).float().repeat_interleave(c, dim=0)  # [N*C, L]
    x = crops.reshape(1, n * c, h, w).float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c)
    return x.view(n, c, h, w).to(crops.dtype)


def _windows(params: torch.Tensor, inverses: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, 4] integer x0, y0, x1, y1 (exclusive) of the image area each face's mask covers (its
    ellipse's bounding box plus a pixel), clipped to the image; empty for a face outside it."""
    params, inverses = params.double().cpu(), inverses.double().cpu()
    centre = apply_affine(inverses, params[:, None, :2])[:, 0]
    axis = (inverses[:, :, :2] @ params[:, 2:4, None])[..., 0]  # the eye axis, in image pixels
    scale = axis.norm(dim=-1)  # image pixels per crop pixel
    in_image = torch.cat([centre, axis / scale[:, None], (params[:, 4:6] * scale[:, None])], dim=-1)
    extent = ellipse_extent(in_image)
    low = (centre - extent).floor() - 1
    high = (centre + extent).ceil() + 2
    limit = torch.tensor([width, height], dtype=torch.float64)
    low = low.clamp_min(0).minimum(limit)
    high = high.minimum(limit).maximum(low)
    return torch.cat([low, high], dim=1).long()


def _crop_windows(inverses: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """[N, 4] like _windows, for masks that may reach anywhere in the crop: the crop's corners."""
    corners = torch.tensor([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]], dtype=torch.float64)
    mapped = apply_affine(inverses.double().cpu(), corners.expand(inverses.shape[0], -1, -1))
    limit = torch.tensor([width, height], dtype=torch.float64)
    low = (mapped.min(dim=1).values.floor() - 1).clamp_min(0).minimum(limit)
    high = (mapped.max(dim=1).values.ceil() + 2).minimum(limit).maximum(low)
    return torch.cat([low, high], dim=1).long()


def _prepare_crops(nchw: torch.Tensor, params: torch.Tensor | None, scale: torch.Tensor, antialias: bool) -> tuple[torch.Tensor, int, int]:
    """Crops [N, C, S, S] ready for sampling, and the crop pixel (x0, y0) their corner stands for.

    With antialiasing only the region the masks can reach (plus the blur radius and the bicubic
    taps) is blurred: with ellipse `params` the union of the ellipses, about half the crop;
    without, the whole crop."""
    if not antialias or blur_radius(scale) == 0:
        return nchw.contiguous(), 0, 0
    if params is None:
        return antialias_crops(nchw, scale), 0, 0
    size = nchw.shape[-1]
    extent = ellipse_extent(params.float())
    margin = blur_radius(scale) + 3
    x0, y0 = ((params[:, :2] - extent).min(dim=0).values.floor() - margin).clamp(0, size).long().tolist()
    x1, y1 = ((params[:, :2] + extent).max(dim=0).values.ceil() + margin).clamp(0, size).long().tolist()
    return antialias_crops(nchw[:, :, y0:y1, x0:x1], scale), x0, y0


def _crop_space_mask(mask: str | torch.Tensor, crops: torch.Tensor, mask_weights: str | Path | None) -> torch.Tensor | None:
    """None for the landmark ellipse, else soft masks [N, S, S] in crop space."""
    if isinstance(mask, torch.Tensor):
        if tuple(mask.shape) != tuple(crops.shape[:3]):
            raise ValueError(f"a mask tensor must be [{crops.shape[0]}, {crops.shape[1]}, {crops.shape[2]}] (one per crop), got {tuple(mask.shape)}")
        return mask.to(crops.device).float().clamp(0, 1)
    if mask == "landmarks":
        return None
    if mask == "parsenet":
        from .parsing import load_parsenet, parse_masks

        return parse_masks(crops, load_parsenet(mask_weights, crops.device))
    raise ValueError(f"mask must be one of {', '.join(MASKS)} or a tensor of crop masks, got {mask!r}")


class PasteGrid(NamedTuple):
    """Every face's window of image pixels [N, rows, cols] (padded to the largest window) and
    where each of its pixels lands in the crop."""

    xs: torch.Tensor  # [N, cols] image x of the window's columns
    ys: torch.Tensor  # [N, rows] image y of the window's rows
    qx: torch.Tensor  # [N, rows, cols] crop x of each window pixel
    qy: torch.Tensor  # [N, rows, cols] crop y
    inside: torch.Tensor  # [N, rows, cols] bool: the pixel is in this face's own window (not padding)


def paste_faces(
    images: torch.Tensor,
    crops: torch.Tensor,
    faces: FaceSet,
    strength: float = 1.0,
    colour_correction: str = "none",
    feather: float = DEFAULT_FEATHER,
    source_crops: torch.Tensor | None = None,
    antialias: bool = True,
    mask: str | torch.Tensor = "landmarks",
    mask_weights: str | Path | None = None,
) -> torch.Tensor:
    """Blend restored `crops` [N, S, S, 3] into `images` [B, H, W, C] at the faces' places.

    faces: the FaceSet align_faces returned (its affines place each crop). strength 0..1 scales
    the mask (0 returns the images unchanged). colour_correction: one of COLOUR_CORRECTIONS
    ("none", "lab", "wavelet", "adain": OSEDiff's default, the `lafr.colour_fix` of converted
    files), against `source_crops` (the unrestored crops; re-sampled from the images when not given).
    mask: "landmarks" (feathered ellipse, `feather`), "parsenet" (facexlib's face parsing of the
    restored crops; weights file or folder `mask_weights`, else the face-model folders) or a
    tensor [N, S, S] of crop-space masks. antialias: blur crops that shrink on the way back.
    Returns a new tensor of the images' shape and dtype; the inputs are not modified."""
    check_paste_inputs(images, crops, faces, strength, colour_correction)
    if len(faces) == 0 or strength == 0.0:
        return images.clone()
    device = images.device
    affines = faces.affines.to(device)
    params = ellipse_params(face_crop_landmarks(affines, faces.landmarks))  # [N, 6] crop pixels
    crops = crops.to(device)
    crop_mask = _crop_space_mask(mask, crops, mask_weights)
    if colour_correction != "none":
        crops = _match_colours(crops, images, faces, params, crop_mask, source_crops, colour_correction, feather)
    grid = paste_grid(faces, params, crop_mask is not None, images.shape[1], images.shape[2], device)
    if grid is None:  # every face lies outside its image
        return images.clone()
    colour, weight = _sample_crops(crops, crop_mask, params, affine_scale(affines), grid, feather, strength, antialias)
    return _blend(images, faces.image_index.to(device), grid, colour, weight)


def check_paste_inputs(images: torch.Tensor, crops: torch.Tensor, faces: FaceSet, strength: float, colour_correction: str) -> None:
    """paste_faces' arguments, each problem with a message that says what was expected."""
    check_images(images)
    if not faces.aligned:
        raise ValueError("paste_faces needs the FaceSet returned by align_faces (it carries the affines)")
    if faces.num_images != images.shape[0] or any(tuple(s) != tuple(images.shape[1:3]) for s in faces.image_sizes):
        raise ValueError(f"these faces were found in images of sizes {list(faces.image_sizes)}, not in {tuple(images.shape)}")
    size = faces.crop_size
    if crops.ndim != 4 or tuple(crops.shape) != (len(faces), size, size, 3):
        raise ValueError(f"crops must be [{len(faces)}, {size}, {size}, 3] (one per face), got {tuple(crops.shape)}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    if colour_correction not in COLOUR_CORRECTIONS:
        raise ValueError(f"colour_correction must be one of {', '.join(COLOUR_CORRECTIONS)}, got {colour_correction!r}")


def _match_colours(
    crops: torch.Tensor,
    images: torch.Tensor,
    faces: FaceSet,
    params: torch.Tensor,
    crop_mask: torch.Tensor | None,
    source_crops: torch.Tensor | None,
    colour_correction: str,
    feather: float,
) -> torch.Tensor:
    """Restored crops with the unrestored crops' colours, statistics weighted by the paste mask
    (the source crops are re-sampled from the images when not given)."""
    device, size = crops.device, faces.crop_size
    if source_crops is None:
        source_crops = warp_faces(images, faces, faces.inverses.to(device), size)
    stats_weight = crop_mask if crop_mask is not None else mask_at(*_crop_coords(size, device), params[:, None, None, :], size, feather)
    return correct_colour(crops, source_crops.to(device), colour_correction, stats_weight)


def paste_grid(faces: FaceSet, params: torch.Tensor, whole_crop: bool, height: int, width: int, device: torch.device) -> PasteGrid | None:
    """The image pixels each face can reach (its ellipse's box, or the whole crop's for a
    crop-space mask) mapped into crop space; None when no face reaches any pixel."""
    size = faces.crop_size
    windows = _crop_windows(faces.inverses, size, height, width) if whole_crop else _windows(params, faces.inverses, height, width)
    sizes = windows[:, 2:] - windows[:, :2]
    if int(sizes.prod(dim=1).max()) == 0:
        return None
    cols, rows = sizes.max(dim=0).values.tolist()
    windows, sizes = windows.to(device), sizes.to(device)
    col, row = torch.arange(cols, device=device), torch.arange(rows, device=device)
    xs = (windows[:, 0:1] + col).float()
    ys = (windows[:, 1:2] + row).float()
    a = faces.affines.to(device).float()[:, :, :, None, None]  # [N, 2, 3, 1, 1]
    qx = a[:, 0, 0] * xs[:, None, :] + a[:, 0, 1] * ys[:, :, None] + a[:, 0, 2]
    qy = a[:, 1, 0] * xs[:, None, :] + a[:, 1, 1] * ys[:, :, None] + a[:, 1, 2]
    inside = (row[None, :, None] < sizes[:, 1, None, None]) & (col[None, None, :] < sizes[:, 0, None, None])
    return PasteGrid(xs, ys, qx, qy, inside)


def _sample_crops(
    crops: torch.Tensor,
    crop_mask: torch.Tensor | None,
    params: torch.Tensor,
    scale: torch.Tensor,
    grid: PasteGrid,
    feather: float,
    strength: float,
    antialias: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(colour [N, 3 or 4, rows, cols], weight [N, rows, cols]) at every window pixel: colour
    (and a crop-space mask) sampled from the crops in one grid_sample, crops that shrink blurred
    first (antialiasing, scale [N] = crop pixels per image pixel); the weight is the mask times
    strength, zero outside each face's own window."""
    size = crops.shape[1]
    nchw = crops.permute(0, 3, 1, 2).float()
    if crop_mask is not None:
        nchw = torch.cat([nchw, crop_mask[:, None]], dim=1)
    source, x0, y0 = _prepare_crops(nchw, params if crop_mask is None else None, scale, antialias)
    sh, sw = source.shape[2:]
    sample_at = torch.stack([(2 * (grid.qx - x0) + 1) / sw - 1, (2 * (grid.qy - y0) + 1) / sh - 1], dim=-1)
    colour = F.grid_sample(source, sample_at, mode="bicubic", padding_mode="border", align_corners=False)
    if crop_mask is None:
        weight = mask_at(grid.qx, grid.qy, params[:, None, None, :], size, feather)
    else:
        weight = colour[:, 3].clamp(0, 1) * border_at(grid.qx, grid.qy, size)
    return colour, torch.where(grid.inside, weight * strength, 0.0)


def _blend(images: torch.Tensor, image_index: torch.Tensor, grid: PasteGrid, colour: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The images with the faces blended in. Only pixels some mask reaches are touched: per image
    pixel the weighted colour, the weight and the log of the uncovered fraction are accumulated
    (overlaps blend, coverage 1 - prod(1 - w) stays <= 1), then blended into the photo's own
    channels; every other value (alpha too) is copied as it is, so 16-bit values survive."""
    device = images.device
    b, h, w, channels = images.shape
    face, r, c = (weight > 0).nonzero(as_tuple=True)
    wgt = weight[face, r, c]
    col_rgb = colour[face, :3, r, c].clamp(0, 1)  # [P, 3]; bicubic overshoots
    pixel = (image_index[face] * h + grid.ys[face, r].long()) * w + grid.xs[face, c].long()
    touched, slot = _compact(pixel, b * h * w)
    num = torch.zeros(len(touched), 3, device=device).index_add_(0, slot, col_rgb * wgt[:, None])
    den = torch.zeros(len(touched), device=device).index_add_(0, slot, wgt)
    log_uncovered = torch.zeros(len(touched), device=device).index_add_(0, slot, torch.log1p(-wgt.clamp(max=1.0)))
    coverage = (1 - torch.exp(log_uncovered))[:, None]
    face_colour = num / den.clamp_min(1e-12)[:, None]
    if channels == 1:
        face_colour = (face_colour * face_colour.new_tensor(LUMA)).sum(dim=-1, keepdim=True)
    k = min(channels, 3)
    out = images.clone(memory_format=torch.contiguous_format)
    flat = out.view(-1, channels)
    base = flat[touched, :k].float()
    flat[touched, :k] = (base + coverage * (face_colour - base)).to(images.dtype)
    return out


def _compact(pixel: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct pixel indices, sorted; each entry's position among them). Same as
    torch.unique(return_inverse=True) but by marking an image-sized table: linear, no sort."""
    marked = torch.zeros(total, dtype=torch.bool, device=pixel.device)
    marked[pixel] = True
    touched = marked.nonzero()[:, 0]
    position = torch.empty(total, dtype=torch.long, device=pixel.device)
    position[touched] = torch.arange(len(touched), device=pixel.device)
    return touched, position[pixel]


def _crop_coords(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop pixel coordinates as broadcastable x [1, 1, S] and y [1, S, 1]."""
    coords = torch.arange(size, device=device, dtype=torch.float32)
    return coords[None, None, :], coords[None, :, None]
