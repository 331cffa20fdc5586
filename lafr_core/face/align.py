"""Similarity alignment of faces to the FFHQ 5-point template, batched on the compute device.

LAFR was trained on FFHQ-aligned 512x512 faces, so every detected face is warped so that its
eyes, nose and mouth corners land where FFHQ puts them. The warp is one `grid_sample` for the
whole batch: each image's faces are laid side by side in one sampling grid, so no image is
copied per face and there is no Python loop over faces.

Conventions: pixel centres at integer coordinates (OpenCV's, which the template uses); an
affine maps image pixels to crop pixels, its inverse maps back; `grid_sample` works with
align_corners=False, where a pixel centre x sits at (2x + 1) / W - 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .faceset import FaceSet

# The standard FFHQ 5-point template at 512x512 (left eye, right eye, nose, mouth corners), the
# mean landmark positions of FFHQ's aligned faces as published with GFPGAN/facexlib.
FFHQ_TEMPLATE_512 = torch.tensor(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=torch.float64,
)
DEFAULT_CROP_SIZE = 512  # LAFR's training resolution (paper: 512x512 FFHQ faces)
MAX_SUPERSAMPLE = 4  # antialiasing samples per axis; 4x4 already covers a 4x downscale


def ffhq_template(size: int = DEFAULT_CROP_SIZE) -> torch.Tensor:
    """[5, 2] template landmarks for a size x size crop (float64).

    Scaled about pixel edges, not centres: (p + 0.5) * size / 512 - 0.5."""
    return (FFHQ_TEMPLATE_512 + 0.5) * (size / 512.0) - 0.5


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) src -> dst, batched.

    src, dst [N, K, 2] -> [N, 2, 3] (float64). Closed form (Umeyama without reflection): with
    centred points, a = sum(s.d) / |s|^2 and b = sum(s x d) / |s|^2 give [[a, -b], [b, a]].
    facexlib uses OpenCV's LMEDS fit, which on 5 consistent points gives the same answer but
    one face at a time on the CPU."""
    src, dst = src.double(), dst.double()
    src_mean, dst_mean = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)
    s, d = src - src_mean, dst - dst_mean
    norm = (s**2).sum(dim=(1, 2)).clamp_min(1e-12)
    a = (s * d).sum(dim=(1, 2)) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / norm
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # [N, 2, 2]
    t = dst_mean[:, 0] - (rot @ src_mean[:, 0, :, None])[..., 0]
    return torch.cat([rot, t[..., None]], dim=-1)


def invert_affine(affine: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3] -> [N, 2, 3] inverse of each 2D affine map."""
    lin = torch.linalg.inv(affine[..., :2])
    return torch.cat([lin, -(lin @ affine[..., 2:])], dim=-1)


def apply_affine(affine: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """affine [N, 2, 3], points [N, ..., 2] -> transformed points, same shape."""
    shape = points.shape
    flat = points.reshape(shape[0], -1, 2).to(affine.dtype)
    out = flat @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]
    return out.reshape(shape)


def affine_scale(affine: torch.Tensor) -> torch.Tensor:
    """[N] linear scale factor of each similarity (output pixels per input pixel)."""
    return torch.linalg.det(affine[..., :2].double()).abs().sqrt()


def rgb_view(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] with C in {1, 3, 4} -> [B, H, W, 3]: grey repeated, alpha left out."""
    channels = images.shape[-1]
    if channels == 1:
        return images.expand(*images.shape[:-1], 3)
    if channels in (3, 4):
        return images[..., :3]
    raise ValueError(f"images must have 1, 3 or 4 channels (grey, RGB, RGBA), got {channels}")


def check_images(images: torch.Tensor) -> None:
    """The [B, H, W, C] float layout every face function takes, with a message that says why."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor [batch, height, width, channels], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float 0..1 (convert integers at the edge), got {images.dtype}")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"zero-size image: {tuple(images.shape[1:3])} (height, width)")
    rgb_view(images)  # validates the channel count


def alignment_affines(landmarks: torch.Tensor, size: int = DEFAULT_CROP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(affines, inverses) [N, 2, 3] float64 mapping each face's landmarks onto the template."""
    template = ffhq_template(size).to(landmarks.device)
    affines = estimate_similarity(landmarks, template.expand(landmarks.shape[0], -1, -1))
    return affines, invert_affine(affines)


def _sampling_theta(inverses: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """[N, 2, 3] for F.affine_grid: normalised crop coordinates -> normalised image coordinates.

    With align_corners=False a crop pixel c sits at x = (2c + 1) / S - 1 whatever the number of
    samples per pixel, so one theta serves any supersampling (affine_grid at S*k places k x k
    samples inside every crop pixel)."""
    inv = inverses.double()
    to_crop = inv.new_tensor([[size / 2, 0, size / 2 - 0.5], [0, size / 2, size / 2 - 0.5], [0, 0, 1]])
    to_norm = inv.new_tensor([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]])
    full = torch.cat([inv, inv.new_tensor([0, 0, 1]).expand(inv.shape[0], 1, 3)], dim=1)
    return (to_norm @ full @ to_crop)[:, :2].float()


def warp_faces(
    images: torch.Tensor,
    faces: FaceSet,
    inverses: torch.Tensor,
    size: int,
    border: str = "reflection",
    antialias: bool = True,
) -> torch.Tensor:
    """Crops [N, size, size, 3] sampled from `images` through `inverses`.

    Faces that shrink by k (image pixels per crop pixel, rounded up) average k x k bicubic
    samples per crop pixel (antialiasing); faces with the same k share one grid_sample, so a
    face's crop never depends on which other faces are in the batch."""
    n = len(faces)
    if n == 0:
        return images.new_zeros(0, size, size, 3)
    rgb = rgb_view(images).permute(0, 3, 1, 2).float()
    inverses = inverses.to(images.device)
    image_index = faces.image_index.to(images.device)
    scale = affine_scale(inverses)  # image pixels per crop pixel
    factors = (scale - 1e-6).ceil().clamp(1, MAX_SUPERSAMPLE).long()
    if not antialias:
        factors = torch.ones_like(factors)
    crops = images.new_zeros(n, 3, size, size, dtype=torch.float32)
    for k in factors.unique().tolist():
        group = (factors == k).nonzero()[:, 0].to(images.device)
        crops[group] = _warp_group(rgb, image_index[group], inverses[group], size, k, border)
    return crops.permute(0, 2, 3, 1).clamp(0, 1).to(images.dtype)


def _warp_group(rgb: torch.Tensor, image_index: torch.Tensor, inverses: torch.Tensor, size: int, k: int, border: str) -> torch.Tensor:
    """[n, 3, size, size] crops, k x k samples each, in one grid_sample: each image's faces sit
    side by side along the grid's width, so no image is copied per face."""
    b, _, h, w = rgb.shape
    side = size * k
    norm = F.affine_grid(_sampling_theta(inverses, size, h, w).to(rgb.device), [len(image_index), 3, side, side], align_corners=False)
    slot = slot_in_image(image_index)
    per_image = int(slot.max()) + 1
    if b == 1:  # one photo: its faces side by side is a plain reshape
        grid = norm.permute(1, 0, 2, 3).reshape(1, side, per_image * side, 2)
    else:
        grid = norm.new_full((b, side, per_image, side, 2), -4.0)  # slots an image lacks: sampled, then dropped
        grid[image_index, :, slot] = norm  # our own buffer: [n, side, side, 2] into (image, slot)
    sampled = F.grid_sample(rgb, grid.reshape(b, side, per_image * side, 2), mode="bicubic",
                            padding_mode=border, align_corners=False)  # [B, 3, side, per_image*side]
    if k > 1:
        sampled = F.avg_pool2d(sampled, k)
    return sampled.view(b, 3, size, per_image, size)[image_index, :, :, slot]  # [n, 3, size, size]


def slot_in_image(image_index: torch.Tensor) -> torch.Tensor:
    """[N] position of each face among the faces of its image (0, 1, ... per image)."""
    order = torch.arange(image_index.shape[0], device=image_index.device)
    first = torch.zeros(int(image_index.max()) + 1, dtype=torch.long, device=image_index.device)
    first = first.scatter_reduce(0, image_index, order, reduce="amin", include_self=False)
    return order - first[image_index]


def align_faces(
    images: torch.Tensor,
    faces: FaceSet,
    size: int = DEFAULT_CROP_SIZE,
    border: str = "reflection",  # mirror the photo past its edge: a grey fill (facexlib) looks like a real object to the restorer
    antialias: bool = True,
) -> tuple[torch.Tensor, FaceSet]:
    """Warp every face to the FFHQ template.

    images [B, H, W, C] float 0..1 (C in 1, 3, 4), faces from detect_faces ->
    (crops [N, size, size, 3] float 0..1 on the images' device, faces with affines set).
    Faces must be sorted by image (detect_faces sorts them)."""
    check_images(images)
    if border not in ("reflection", "zeros", "border"):
        raise ValueError(f"border must be 'reflection', 'zeros' or 'border', got {border!r}")
    if len(faces) and bool((faces.image_index[1:] < faces.image_index[:-1]).any()):
        raise ValueError("faces must be sorted by image index (as detect_faces returns them)")
    affines, inverses = alignment_affines(faces.landmarks.to(images.device), size)
    crops = warp_faces(images, faces, inverses, size, border=border, antialias=antialias)
    return crops, faces.with_affines(affines, inverses, size)
