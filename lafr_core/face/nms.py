"""Non-maximum suppression for the detectors, per image in one call.

torchvision's compiled NMS is used when torchvision is importable (ComfyUI, A1111 and facexlib
all install it); the node path promises only torch, so a small NumPy version stands in. Both
give the same kept set (a test compares them). The "min" overlap (intersection over the smaller
box) is MTCNN's last stage, which torchvision does not offer.
"""

from __future__ import annotations

import numpy as np
import torch

try:  # optional accelerator, not a dependency
    from torchvision.ops import batched_nms as _tv_batched_nms
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _tv_batched_nms = None


def _greedy_nms(boxes: np.ndarray, threshold: float, mode: str) -> list[int]:
    """Indices kept, boxes [n, 4] already sorted by descending score."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    removed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in range(len(boxes)):
        if removed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, None)
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        denom = np.minimum(areas[i], areas[rest]) if mode == "min" else areas[i] + areas[rest] - inter
        removed[rest] |= inter > threshold * np.maximum(denom, 1e-12)
    return keep


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    threshold: float,
    mode: str = "union",
    use_torchvision: bool = True,
) -> torch.Tensor:
    """Indices of the boxes [n, 4] kept, by descending score, NMS applied within each group.

    mode "union": intersection over union; "min": intersection over the smaller box."""
    if mode not in ("union", "min"):
        raise ValueError(f"NMS mode must be 'union' or 'min', got {mode!r}")
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if mode == "union" and use_torchvision and _tv_batched_nms is not None:
        return _tv_batched_nms(boxes.float(), scores.float(), groups, threshold)
    # shift each group far apart so boxes of different images never overlap, then one pass
    span = float((boxes.max() - boxes.min()).abs()) + 1.0
    shifted = boxes.double() + (groups.double() * 2 * span)[:, None]
    order = torch.argsort(scores, descending=True, stable=True)
    keep = _greedy_nms(shifted[order].cpu().numpy(), threshold, mode)
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]
