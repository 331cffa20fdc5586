"""The soft face mask used for paste-back and colour statistics: a feathered ellipse from the
landmarks, evaluated analytically wherever it is needed (crop pixels or image pixels).

Why an ellipse from the landmarks rather than the whole square crop (facexlib without ParseNet):
the square's corners hold background and hair the restorer may repaint, and its eroded, blurred
edge is sized by face area with hard-coded constants. An ellipse placed from the eyes and mouth
covers forehead to chin on every face, needs no blur pass (the falloff is a formula, so there is
no kernel size to tune and nothing to compute per image pixel beyond a few multiply-adds), and
is the same shape in crop space and, through the affine, in image space.
"""

from __future__ import annotations

import torch

from .align import apply_affine

# Ellipse fitted on the FFHQ template (eye distance 126 px, eye-to-mouth 131 px at 512): centred
# 0.37 eye-to-mouth below the eye midpoint, half-axes 1.2 eye distances across and 1.45
# eye-to-mouth distances down, so r = 1 runs just outside jaw, cheeks and hairline.
CENTRE_BELOW_EYES = 0.37
HALF_WIDTH_PER_EYE_DISTANCE = 1.2
HALF_HEIGHT_PER_EYE_MOUTH = 1.45
DEFAULT_FEATHER = 0.3  # fraction of the ellipse radius that fades out: wide enough to hide the seam on cheeks
BORDER_FEATHER = 0.02  # fraction of the crop side that fades to zero at the crop's edge (never paste past it)


def ellipse_params(crop_landmarks: torch.Tensor) -> torch.Tensor:
    """[N, 5, 2] landmarks in crop pixels -> [N, 6]: centre x, y; unit axis u (x, y) along the eyes;
    half-axes a (along u) and b (along v = u turned +90 degrees, down the face)."""
    lm = crop_landmarks.float()
    eye_mid = (lm[:, 0] + lm[:, 1]) / 2
    mouth_mid = (lm[:, 3] + lm[:, 4]) / 2
    eye_vec = lm[:, 1] - lm[:, 0]
    eye_dist = eye_vec.norm(dim=-1).clamp_min(1e-3)
    u = eye_vec / eye_dist[:, None]
    v = torch.stack([-u[:, 1], u[:, 0]], dim=-1)  # image y points down: +90 degrees is "down the face"
    eye_mouth = ((mouth_mid - eye_mid) * v).sum(-1).clamp_min(1e-3)
    centre = eye_mid + CENTRE_BELOW_EYES * eye_mouth[:, None] * v
    a = HALF_WIDTH_PER_EYE_DISTANCE * eye_dist
    b = HALF_HEIGHT_PER_EYE_MOUTH * eye_mouth
    return torch.stack([centre[:, 0], centre[:, 1], u[:, 0], u[:, 1], a, b], dim=-1)


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    """0 -> 0, 1 -> 1, flat at both ends: a falloff without a visible edge."""
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def mask_at(qx: torch.Tensor, qy: torch.Tensor, params: torch.Tensor, crop_size: int, feather: float = DEFAULT_FEATHER) -> torch.Tensor:
    """Mask value 0..1 at crop-pixel coordinates qx, qy (any shape), with `params` [..., 6] of
    ellipse_params broadcastable to them (e.g. [N, 1, 1, 6] against [N, H, W] points)."""
    if not 0 <= feather <= 1:
        raise ValueError(f"feather must be in [0, 1] (a fraction of the face radius), got {feather}")
    p = params.unbind(-1)
    dx, dy = qx - p[0], qy - p[1]
    du = (dx * p[2] + dy * p[3]) / p[4]
    dv = (dy * p[2] - dx * p[3]) / p[5]
    r = (du * du + dv * dv).sqrt()
    face = smoothstep((1 - r) / feather) if feather > 0 else (r < 1).float()  # 0: a hard edge, on request
    return face * border_at(qx, qy, crop_size)


def border_at(qx: torch.Tensor, qy: torch.Tensor, crop_size: int) -> torch.Tensor:
    """1 inside the crop, fading to 0 over BORDER_FEATHER of its side at the edges (-0.5, S - 0.5)."""
    edge = torch.minimum(torch.minimum(qx, qy) + 0.5, crop_size - 0.5 - torch.maximum(qx, qy))
    return smoothstep(edge / (BORDER_FEATHER * crop_size))


def ellipse_extent(params: torch.Tensor) -> torch.Tensor:
    """[N, 6] -> [N, 2] half-width and half-height of each ellipse's axis-aligned bounding box
    (outside it the mask is exactly 0)."""
    ux, uy, a, b = params[:, 2], params[:, 3], params[:, 4], params[:, 5]
    return torch.stack([(a * ux).hypot(b * uy), (a * uy).hypot(b * ux)], dim=-1)


def crop_masks(crop_landmarks: torch.Tensor, crop_size: int, feather: float = DEFAULT_FEATHER) -> torch.Tensor:
    """[N, size, size] mask of each aligned crop (for colour statistics or a host's MASK output)."""
    coords = torch.arange(crop_size, device=crop_landmarks.device, dtype=torch.float32)
    params = ellipse_params(crop_landmarks)[:, None, None, :]
    return mask_at(coords[None, None, :], coords[None, :, None], params, crop_size, feather)


def face_crop_landmarks(affines: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Image-pixel landmarks [N, 5, 2] -> crop-pixel landmarks through each face's affine."""
    return apply_affine(affines, landmarks.to(affines.device)).float()
