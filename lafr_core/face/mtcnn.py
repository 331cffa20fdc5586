"""MTCNN face detector (Zhang et al. 2016), written here in torch, with bundled weights.

The offline default detector: its weights (2 MB, MIT, from facenet-pytorch; see
weights/README.md) ship inside the package, so detection works on a machine that never saw the
internet. Three cascaded nets: P-Net proposes windows over an image pyramid, R-Net refines them
on 24x24 crops, O-Net gives the final boxes, scores and 5 landmarks on 48x48 crops.

Batched where the algorithm allows: P-Net runs on all images of a batch per pyramid level, and
R-Net / O-Net each run once on every candidate of every image. Candidate crops are cut and
resized for all boxes in one grid_sample (with supersampling standing in for area resampling)
instead of one resize per box.

Input convention of the trained weights: RGB in 0..255, normalised as (x - 127.5) / 128; the
R-Net/O-Net dense layers read their features transposed (the weights come from Caffe), hence the
permute before flattening.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import DetectorWeightsError
from .nms import batched_nms

WEIGHTS = Path(__file__).resolve().parent / "weights" / "mtcnn.safetensors"
# Defaults of the reference implementation (MTCNN paper / facenet-pytorch): smallest face searched
# 20 px, pyramid step 0.709 (about sqrt(0.5)), stage thresholds 0.6 / 0.7 / 0.7.
MIN_FACE = 20
PYRAMID_FACTOR = 0.709
STAGE_THRESHOLDS = (0.6, 0.7, 0.7)
NMS_THRESHOLDS = (0.5, 0.7, 0.7, 0.7)  # within one pyramid level, across levels, after R-Net, after O-Net ("min")
PNET_CELL, PNET_STRIDE = 12, 2  # P-Net looks at 12x12 windows, every 2 pixels of a pyramid level
MAX_CROP_SUPERSAMPLE = 4


class PNet(nn.Module):
    """Proposal net: fully convolutional, a face probability and box offsets per 12x12 window."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement net on 24x24 crops: probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops: probability, box offsets and 5 landmarks (x1..x5, y1..y5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)[:, 1]


class MTCNN(nn.Module):
    """The three nets; state-dict keys pnet.*, rnet.*, onet.* as in the bundled file."""

    def __init__(self) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()


@lru_cache(maxsize=4)
def load_mtcnn(path: str | Path = WEIGHTS, device: str = "cpu") -> MTCNN:
    """The MTCNN nets with weights from `path` (default: the bundled file), cached per device."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DetectorWeightsError(f"MTCNN weights not found: {path} (they ship in lafr_core/face/weights; reinstall the package)")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise DetectorWeightsError(f"MTCNN weights {path} are unreadable or corrupt ({exc}); reinstall the package") from exc
    model = MTCNN()
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k, v in model.state_dict().items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise DetectorWeightsError(
            f"{path} is not an MTCNN weights file: missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}"
        )
    return model.to(device).eval()


# --------------------------------------------------------------------------- helpers


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes [n, 4] -> squares of the longer side around the same centre (the nets' input)."""
    wh = boxes[:, 2:] - boxes[:, :2]
    side = wh.max(dim=1, keepdim=True).values
    top_left = boxes[:, :2] + wh / 2 - side / 2
    return torch.cat([top_left, top_left + side], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor, plus_one: bool = True) -> torch.Tensor:
    """Apply the nets' box offsets (fractions of the box size) to boxes [n, 4]."""
    wh = boxes[:, 2:] - boxes[:, :2] + (1 if plus_one else 0)
    return boxes + offsets * wh.repeat(1, 2)


def _crop_boxes(images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample every box of every image to size x size (zeros outside the image).

    A box covers the pixels x1-1 .. x2-1 after truncation (MTCNN's 1-based convention), i.e.
    the pixel edges [x1 - 1, x2]. A box k times larger than `size` averages k x k samples per
    output pixel (area resampling, as the reference's resize). One grid_sample per image and
    k, for all of that image's boxes: a box's crop never depends on the other boxes."""
    _, _, h, w = images.shape
    box = boxes.trunc()
    left, top = box[:, 0] - 1, box[:, 1] - 1
    span = (box[:, 2:] - box[:, :2] + 1).clamp_min(1)  # [n, 2] width, height in pixels
    factor = (span.max(dim=1).values / size).ceil().clamp(1, MAX_CROP_SUPERSAMPLE).long()
    crops = images.new_zeros(len(boxes), 3, size, size)
    for image, k in torch.stack([image_index, factor], dim=1).unique(dim=0).tolist():
        sel = ((image_index == image) & (factor == k)).nonzero()[:, 0]
        side = size * k
        t = (torch.arange(side, device=images.device, dtype=images.dtype) + 0.5) / side  # 0..1 across the box
        xs = left[sel, None] + t[None] * span[sel, 0:1]  # pixel-edge coordinates
        ys = top[sel, None] + t[None] * span[sel, 1:2]
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :] * (2 / w) - 1, ys[:, :, None] * (2 / h) - 1), dim=-1)
        sampled = F.grid_sample(images[image : image + 1], grid.reshape(1, len(sel) * side, side, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        sampled = sampled.view(3, len(sel), side, side).transpose(0, 1)
        crops[sel] = F.avg_pool2d(sampled, k) if k > 1 else sampled
    return crops


def pyramid_scales(height: int, width: int, min_face: float = MIN_FACE, factor: float = PYRAMID_FACTOR) -> list[float]:
    """Scales at which P-Net's 12-pixel window matches faces from min_face px up to the image."""
    scale = PNET_CELL / min_face
    shortest = min(height, width) * scale
    scales = []
    while shortest >= PNET_CELL:
        scales.append(scale)
        scale *= factor
        shortest *= factor
    return scales


# --------------------------------------------------------------------------- the cascade


@torch.no_grad()
def detect_mtcnn(
    images: torch.Tensor,
    model: MTCNN,
    min_face: float = MIN_FACE,
    thresholds: tuple[float, float, float] = STAGE_THRESHOLDS,
    factor: float = PYRAMID_FACTOR,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Faces in images [B, 3, H, W] (RGB, 0..255, on the model's device).

    Returns (image_index [n], boxes [n, 4], scores [n], landmarks [n, 5, 2]), image pixel
    coordinates with pixel centres at integers."""
    b, _, h, w = images.shape
    images = images.float()
    device = images.device
    empty = (torch.zeros(0, dtype=torch.long, device=device), images.new_zeros(0, 4), images.new_zeros(0), images.new_zeros(0, 5, 2))

    # stage 1: P-Net over the pyramid, every image of the batch per level
    all_index, all_boxes, all_scores, all_offsets = [], [], [], []
    for scale in pyramid_scales(h, w, min_face, factor):
        level = F.interpolate(images, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
        offsets, prob = model.pnet(_normalise(level))
        hits = (prob >= thresholds[0]).nonzero()  # [k, 3] (image, y, x)
        if hits.numel() == 0:
            continue
        image_index, cell = hits[:, 0], hits[:, [2, 1]].to(images.dtype)
        top_left = ((PNET_STRIDE * cell + 1) / scale).floor()
        bottom_right = ((PNET_STRIDE * cell + PNET_CELL) / scale).floor()
        boxes = torch.cat([top_left, bottom_right], dim=1)
        scores = prob[hits[:, 0], hits[:, 1], hits[:, 2]]
        offs = offsets.permute(0, 2, 3, 1)[hits[:, 0], hits[:, 1], hits[:, 2]]
        keep = batched_nms(boxes, scores, image_index, NMS_THRESHOLDS[0])
        all_index.append(image_index[keep]), all_boxes.append(boxes[keep])
        all_scores.append(scores[keep]), all_offsets.append(offs[keep])
    if not all_boxes:
        return empty
    image_index, boxes = torch.cat(all_index), torch.cat(all_boxes)
    scores, offsets = torch.cat(all_scores), torch.cat(all_offsets)
    keep = batched_nms(boxes, scores, image_index, NMS_THRESHOLDS[1])
    image_index, boxes, offsets = image_index[keep], boxes[keep], offsets[keep]
    boxes = _square(_regress(boxes, offsets, plus_one=False))

    # stage 2: R-Net on every candidate of every image at once
    offsets, scores = model.rnet(_normalise(_crop_boxes(images, image_index, boxes, 24)))
    passed = scores > thresholds[1]
    image_index, boxes, offsets, scores = image_index[passed], boxes[passed], offsets[passed], scores[passed]
    if boxes.numel() == 0:
        return empty
    keep = batched_nms(boxes, scores, image_index, NMS_THRESHOLDS[2])
    boxes = _square(_regress(boxes[keep], offsets[keep]))
    image_index = image_index[keep]

    # stage 3: O-Net gives final boxes, scores and landmarks
    offsets, points, scores = model.onet(_normalise(_crop_boxes(images, image_index, boxes, 48)))
    passed = scores > thresholds[2]
    image_index, boxes, offsets, points, scores = (t[passed] for t in (image_index, boxes, offsets, points, scores))
    if boxes.numel() == 0:
        return empty
    landmarks = _landmarks_in_image(points, boxes)
    boxes = _regress(boxes, offsets)
    keep = batched_nms(boxes, scores, image_index, NMS_THRESHOLDS[3], mode="min")
    image_index, boxes, scores, landmarks = image_index[keep], boxes[keep], scores[keep], landmarks[keep]

    # landmark refinement (beyond the reference): O-Net's landmarks jitter with the box it is
    # shown; averaging them with a second look through the final, regressed box halved the worst
    # landmark error on the test photos (5.9 -> 2.9 px) for one more O-Net call on the kept faces
    second_look = _square(boxes)
    _, points, _ = model.onet(_normalise(_crop_boxes(images, image_index, second_look, 48)))
    landmarks = (landmarks + _landmarks_in_image(points, second_look)) / 2
    return image_index, boxes, scores, landmarks


def _landmarks_in_image(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """O-Net's [n, 10] (x1..x5, y1..y5 as box fractions) -> [n, 5, 2] image pixels, in the
    reference's convention (box corner x1 - 1 is pixel index 0 of the crop)."""
    wh = boxes[:, 2:] - boxes[:, :2] + 1
    return torch.stack([points[:, :5], points[:, 5:]], dim=-1) * wh[:, None, :] + boxes[:, None, :2] - 1
