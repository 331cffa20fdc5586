"""Metrics that need pretrained networks: LPIPS and FID, used only when their weights are here.

An evaluation never downloads: each loader checks that the weight file is already in the torch
hub cache (where torchvision and pytorch-fid keep them) and otherwise returns None with a note
that names the file and where to put it, so the run goes on without that column.

- LPIPS (Zhang et al. 2018): the `lpips` package's calibrated linear layers on the torchvision
  VGG-16 trunk (VQFR's calculate_lpips.py uses net='vgg', RGB in -1..1; "alex" on request).
- FID (Heusel et al. 2017): pytorch-fid's FID Inception (pool3, 2048-d, the TF-ported weights
  every face paper's FID uses) on the restored set against the HQ set ("FID" of LAFR Table 1)
  or reference statistics in its place (`--fid-stats`), and beside it against FFHQ's statistics
  (`--fid-ffhq`: "FID-F"; EvalOptions.fid_ffhq, result.fid["fid_ffhq"]). With fewer faces than
  feature dimensions the covariance is rank-deficient and FID is biased upwards: compare FIDs of
  equal-sized sets only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .metrics import frechet_distance

LPIPS_TRUNKS = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}  # torchvision's file names
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's FID Inception


def hub_checkpoint(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


@dataclass
class Lpips:
    """LPIPS distance of [B, H, W, 3] 0..1 batches -> [B] (lower is closer)."""

    model: torch.nn.Module
    net: str = "vgg"

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters())
        x = a.permute(0, 3, 1, 2).to(param) * 2 - 1
        y = b.permute(0, 3, 1, 2).to(param) * 2 - 1
        return self.model(x, y).flatten(1).mean(1).double().cpu()


def load_lpips(net: str = "vgg", device: str | torch.device = "cpu") -> tuple[Lpips | None, str | None]:
    """(LPIPS, None) when the lpips package and the trunk's weights are here, else (None, why)."""
    if net not in LPIPS_TRUNKS:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_TRUNKS)}, got {net!r}")
    if importlib.util.find_spec("lpips") is None:
        return None, "LPIPS skipped: pip install lpips"
    trunk = hub_checkpoint(LPIPS_TRUNKS[net])
    if not trunk.is_file():
        return None, f"LPIPS skipped: torchvision's {net} weights {trunk} are not here (download them once to that path)"
    import warnings

    import lpips

    with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)  # trunk from the cache file above
    return Lpips(model.eval().to(device), net), None


def load_fid_features(device: str | torch.device = "cpu") -> tuple[Callable[[torch.Tensor], np.ndarray] | None, str | None]:
    """(images [B, H, W, 3] 0..1 -> [B, 2048] pool3 features, None) when pytorch-fid and its FID
    Inception weights are here, else (None, why)."""
    if importlib.util.find_spec("pytorch_fid") is None:
        return None, "FID skipped: pip install pytorch-fid (and its Inception weights)"
    weights = hub_checkpoint(FID_WEIGHTS)
    if not weights.is_file():
        return None, f"FID skipped: pytorch-fid's Inception weights {weights} are not here (download them once to that path)"
    from pytorch_fid.inception import InceptionV3

    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True).eval().to(device)

    @torch.no_grad()
    def features(images: torch.Tensor) -> np.ndarray:
        return model(images.permute(0, 3, 1, 2).float().to(device))[0].flatten(1).double().cpu().numpy()

    return features, None


@dataclass
class FidAccumulator:
    """Collects features batch by batch; `fid()` at the end (the restored set vs the reference)."""

    features: Callable[[torch.Tensor], np.ndarray]
    restored: list[np.ndarray] = field(default_factory=list)
    reference: list[np.ndarray] = field(default_factory=list)

    def add(self, restored: torch.Tensor, hq: torch.Tensor | None) -> None:
        self.restored.append(self.features(restored))
        if hq is not None:
            self.reference.append(self.features(hq))

    def fid(self, stats: tuple[np.ndarray, np.ndarray] | None = None) -> float:
        """FID of the restored set vs `stats` (mu, sigma) if given, else vs the HQ faces seen."""
        x = np.concatenate(self.restored)
        if len(x) < 2:
            raise ValueError("FID needs at least 2 faces")
        if stats is None:
            y = np.concatenate(self.reference)
            stats = (y.mean(0), np.cov(y, rowvar=False))
        return frechet_distance(x.mean(0), np.cov(x, rowvar=False), *stats)


def load_fid_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from a pytorch-fid style .npz (keys mu, sigma)."""
    with np.load(Path(path)) as data:
        if "mu" not in data or "sigma" not in data:
            raise ValueError(f"{path}: FID statistics need arrays 'mu' and 'sigma' (pytorch-fid's --save-stats format)")
        return data["mu"], data["sigma"]
