"""The latent alignment adapter of LAFR (paper §2.2, DESIGN §1).

z_lq (scaled SD VAE latent) -> shallow conv feature extractor -> one 256-d feature per latent
position -> nearest entry of a learned 1024x256 codebook -> conv mapping net -> z_aligned.

Gradients. The argmin is not differentiable (the paper's appendix STArgmin cannot route a
gradient through an integer lookup either), so we follow VQ-VAE:
  * the quantized vectors are passed straight through to the extractor: forward returns the
    codebook entries bit-exactly, backward hands the mapping net's gradient to the features;
  * the codebook learns through the codebook loss ||sg[f] - c||^2 (and the extractor is pulled
    towards its codes by the commitment loss beta * ||f - sg[c]||^2). Both are returned by
    `align()` as `vq_loss`; a trainer adds it to its reconstruction loss.
Dead codes are re-seeded by the trainer with `reseed_codes_` from current features.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def exists(value) -> bool:
    return value is not None


@dataclass(frozen=True)
class AlignerConfig:
    """The whole adapter configuration; stored as JSON in the LAFR file (`lafr.adapter_config`).

    Defaults are the paper's: codebook of 1024 entries of dimension 256, hidden width 256.
    """

    latent_channels: int = 4
    hidden_channels: int = 256
    codebook_size: int = 1024
    codebook_dim: int = 256
    extractor_blocks: int = 2
    mapping_blocks: int = 2
    norm_groups: int = 32
    commitment_weight: float = 0.25

    def __post_init__(self) -> None:
        for name in ("latent_channels", "hidden_channels", "codebook_size", "codebook_dim", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"AlignerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("extractor_blocks", "mapping_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"AlignerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.hidden_channels % self.norm_groups:
            raise ValueError(
                f"AlignerConfig.hidden_channels ({self.hidden_channels}) must be divisible by "
                f"norm_groups ({self.norm_groups})"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AlignerConfig":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"adapter config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"adapter config has unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


class AlignerOutput(NamedTuple):
    latent: torch.Tensor  # [b, c, h, w] aligned latent (scaled, like the input)
    indices: torch.Tensor  # [b, h, w] codebook entry chosen at each position
    vq_loss: torch.Tensor  # scalar: codebook loss + commitment_weight * commitment loss


class CodebookUsage(NamedTuple):
    perplexity: float  # exp(entropy) of the code histogram; codebook_size when all are used evenly
    unused: int  # entries chosen zero times
    counts: torch.Tensor  # [codebook_size] how often each entry was chosen


class _StraightThrough(torch.autograd.Function):
    """Forward: the codes, bit-exactly. Backward: the codes' gradient goes to the features."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return codes.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice with an identity skip (the SD VAE's resnet shape)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class Codebook(nn.Module):
    """Nearest-neighbour lookup in a learned table of `size` vectors of dimension `dim`."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(size, dim) / math.sqrt(dim))

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """Index of the nearest entry (L2) for each row of `vectors` [n, d]; distances in fp32."""
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            v = vectors.float()
            e = self.embed.float()
            dist = v.pow(2).sum(1, keepdim=True) - 2 * v @ e.t() + e.pow(2).sum(1)[None]
            return dist.argmin(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.embed)


class LatentAligner(nn.Module):
    """Maps a scaled LQ latent to a scaled latent near the HQ one; shape in == shape out."""

    def __init__(self, config: AlignerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AlignerConfig()
        width, groups = config.hidden_channels, config.norm_groups
        self.extractor = nn.Sequential(
            nn.Conv2d(config.latent_channels, width, 3, padding=1),
            *[ResBlock(width, groups) for _ in range(config.extractor_blocks)],
            nn.GroupNorm(groups, width),
            nn.SiLU(),
            nn.Conv2d(width, config.codebook_dim, 1),
        )
        self.codebook = Codebook(config.codebook_size, config.codebook_dim)
        self.mapping = nn.Sequential(
            nn.Conv2d(config.codebook_dim, width, 1),
            *[ResBlock(width, groups) for _ in range(config.mapping_blocks)],
            nn.GroupNorm(groups, width),
            nn.SiLU(),
            nn.Conv2d(width, config.latent_channels, 3, padding=1),
        )

    def align(self, z: torch.Tensor) -> AlignerOutput:
        """z: [b, c, h, w] scaled latent. Letters: b batch, c latent channels, d codebook dim,
        h, w latent height and width, n = b*h*w positions."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"LatentAligner expects a [batch, {self.config.latent_channels}, h, w] latent, "
                f"got shape {tuple(z.shape)}"
            )
        b, _, h, w = z.shape
        features = self.extractor(z)  # [b, d, h, w]
        flat = rearrange(features, "b d h w -> (b h w) d")
        indices = self.codebook.nearest(flat)  # [n]
        codes = self.codebook.lookup(indices).to(flat.dtype)  # [n, d]
        codebook_loss = F.mse_loss(codes.float(), flat.detach().float())
        commitment_loss = F.mse_loss(flat.float(), codes.detach().float())
        quantized = _StraightThrough.apply(flat, codes)
        quantized = rearrange(quantized, "(b h w) d -> b d h w", b=b, h=h, w=w)
        latent = self.mapping(quantized)
        return AlignerOutput(
            latent=latent,
            indices=rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w),
            vq_loss=codebook_loss + self.config.commitment_weight * commitment_loss,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.align(z).latent

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Extractor output as rows [n, d]: what the trainer samples dead codes from."""
        return rearrange(self.extractor(z), "b d h w -> (b h w) d")

    @torch.no_grad()
    def reseed_codes_(self, dead: torch.Tensor, features: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Replace the entries flagged in `dead` [codebook_size] bool with random rows of
        `features` [n, d] (as VQ trainers do against codebook collapse). Returns how many."""
        dead_idx = dead.nonzero().flatten()
        if dead_idx.numel() == 0 or features.shape[0] == 0:
            return 0
        picks = torch.randint(
            features.shape[0], (dead_idx.numel(),), generator=generator, device=generator.device if exists(generator) else "cpu"
        )
        self.codebook.embed[dead_idx] = features[picks.to(features.device)].to(self.codebook.embed.dtype)
        return int(dead_idx.numel())


def codebook_usage(indices: torch.Tensor, codebook_size: int) -> CodebookUsage:
    """Histogram statistics of chosen codes, for training logs and dead-code re-seeding."""
    return usage_from_counts(torch.bincount(indices.flatten().long().cpu(), minlength=codebook_size))


def usage_from_counts(counts: torch.Tensor) -> CodebookUsage:
    """CodebookUsage of a code histogram [codebook_size] (e.g. counts summed over steps and
    processes): perplexity = exp(entropy), the number of codes in effective use."""
    probs = counts.double() / counts.sum().clamp(min=1)
    probs = probs[probs > 0]
    entropy = -(probs * probs.log()).sum()
    return CodebookUsage(perplexity=float(entropy.exp()), unused=int((counts == 0).sum()), counts=counts)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
