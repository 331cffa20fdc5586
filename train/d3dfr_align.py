"""Deep3DFaceRecon's own face alignment, differentiable, for the facial-structure loss.

Why: D3DFR's regressor was trained on faces aligned by its `align_img`
(sicxu/Deep3DFaceRecon_pytorch util/preprocess.py), not on FFHQ-aligned crops. Feeding it our
512 crop resized to 224 puts its coefficients out of distribution. Its alignment, as facts:
  1. `POS`: a least-squares fit of an orthographic projection of the 5 standard 3D landmarks
     (BFM/similarity_Lm3D_all.mat, reduced to eyes / nose / mouth corners by `load_lm3d`) to the
     image's 5 landmarks, with image y flipped (y_up = H - 1 - y). Rows R1, R2 and translation t
     are free; the scale is s = (|R1| + |R2|) / 2. No rotation is removed: the 3DMM's pose
     coefficients carry it.
  2. s' = 102 / s (rescale_factor 102); the image is resized with PIL bicubic to
     (int(W s'), int(H s')) and a 224 box is cut at left = int(w/2 - 112 + (t_x - W/2) s'),
     up = int(h/2 - 112 + (H/2 - t_y) s'), zeros outside the image.
So the warp is a scale and a translation. We reproduce it with torch's antialiased bicubic
resize (PIL's kernel, a = -0.5, widened when shrinking) and an integer crop: differentiable in
the image, and within a few 8-bit levels of PIL. An affine_grid/grid_sample warp would alias
here: the FFHQ 512 crop shrinks by about 2x on its way to 224.

The landmarks are the ones we have: for FFHQ-aligned training crops, the FFHQ 5-point template
(lafr_core.face.align) scaled to the crop, moved with the crop's augmentation; for photos, the
detector's.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

# The 5 standard 3D landmarks (x, y, z) of BFM/similarity_Lm3D_all.mat after load_lm3d's
# reduction: left eye, right eye, nose tip, left mouth corner, right mouth corner (image order).
D3DFR_LM3D = torch.tensor(
    [
        [-0.31148657, 0.29036078, 0.13377953],
        [0.30979887, 0.28972036, 0.13179526],
        [0.0032535, -0.04617932, 0.55244243],
        [-0.25216928, -0.38133916, 0.22405732],
        [0.2484662, -0.38128236, 0.22235769],
    ],
    dtype=torch.float64,
)
D3DFR_SIZE = 224
D3DFR_RESCALE = 102.0


def pos_fit(landmarks: torch.Tensor, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """D3DFR's POS for a batch: landmarks [N, 5, 2] (x right, y down, pixel centres at integers)
    -> (t [N, 2] in y-up coordinates, s [N]) of the orthographic fit of D3DFR_LM3D, float64."""
    lm = landmarks.detach().to("cpu", torch.float64).clone()
    bad = (~torch.isfinite(lm).flatten(1).all(1)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"cannot fit D3DFR's landmarks to face {bad[0]}: its landmarks are not finite ({lm[bad[0]].tolist()})")
    lm[..., 1] = height - 1 - lm[..., 1]
    n = lm.shape[0]
    design = torch.zeros(n, 10, 8, dtype=torch.float64)
    design[:, 0::2, 0:3] = D3DFR_LM3D
    design[:, 0::2, 3] = 1
    design[:, 1::2, 4:7] = D3DFR_LM3D
    design[:, 1::2, 7] = 1
    k = torch.linalg.lstsq(design, lm.reshape(n, 10, 1)).solution[..., 0]
    scale = (k[:, 0:3].norm(dim=1) + k[:, 4:7].norm(dim=1)) / 2
    return torch.stack([k[:, 3], k[:, 7]], dim=1), scale


def crop_boxes(landmarks: torch.Tensor, height: int, width: int, size: int = D3DFR_SIZE) -> list[tuple[int, int, int, int]]:
    """Per face (resized width, resized height, left, up) of D3DFR's crop, as its
    resize_n_crop_img computes them (integer truncations included). `size` other than 224
    scales the rescale factor with it (the same framing at another resolution)."""
    t, s = pos_fit(landmarks, height)
    rescale = D3DFR_RESCALE * size / D3DFR_SIZE
    boxes = []
    for i, ((tx, ty), si) in enumerate(zip(t.tolist(), s.tolist())):
        if not si > 1.0:  # pixels per unit of the 3D template (its eyes are 0.62 apart): a face under a pixel
            raise ValueError(f"cannot fit D3DFR's landmarks to face {i}: {landmarks[i].tolist()} span no face")
        f = rescale / si
        w, h = int(width * f), int(height * f)
        left = int(w / 2 - size / 2 + (tx - width / 2) * f)
        up = int(h / 2 - size / 2 + (height / 2 - ty) * f)
        boxes.append((w, h, left, up))
    return boxes


def _crop(image: torch.Tensor, left: int, up: int, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size] box at (left, up); zeros outside (PIL's crop)."""
    h, w = image.shape[-2:]
    pad = (max(0, -left), max(0, left + size - w), max(0, -up), max(0, up + size - h))
    if any(pad):
        image = F.pad(image, pad)
        left, up = left + pad[0], up + pad[2]
    return image[..., up : up + size, left : left + size]


def align_d3dfr(images: torch.Tensor, landmarks: torch.Tensor, size: int = D3DFR_SIZE) -> torch.Tensor:
    """images [N, C, H, W] (any value range), landmarks [N, 5, 2] or [5, 2] for all ->
    D3DFR-aligned crops [N, C, size, size]; differentiable in `images`. Faces sharing a box
    (training crops: one template) are resized in one call."""
    n, _, height, width = images.shape
    if landmarks.ndim == 2:
        landmarks = landmarks.expand(n, -1, -1)
    if landmarks.shape != (n, 5, 2):
        raise ValueError(f"align_d3dfr needs 5 landmarks per image, got {tuple(landmarks.shape)} for {n} images")
    boxes = crop_boxes(landmarks, height, width, size)
    out = [None] * n
    for box in dict.fromkeys(boxes):
        index = [i for i, b in enumerate(boxes) if b == box]
        w, h, left, up = box
        if w < 1 or h < 1:
            raise ValueError(f"degenerate D3DFR crop {box} from landmarks {landmarks[index[0]].tolist()}")
        resized = F.interpolate(images[index], size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        crops = _crop(resized, left, up, size)
        for j, i in enumerate(index):
            out[i] = crops[j]
    return torch.stack(out)
