"""InterLCM's visual module: CLIP image tokens [b, 197, 768] -> prompt tokens [b, 77, 768].

InterLCM (github.com/sen-mao/InterLCM, ICLR 2025) replaces the LCM's text prompt with tokens
computed from the low-quality face: the 197 CLIP ViT-B/16 tokens (class token + 14x14 patches,
after ln_post, no projection) pass through a small 1-D conv network whose output has exactly
the shape of SD1.5's text embedding, 77 x 768, and is used as `encoder_hidden_states` by the
UNet and the spatial encoder.

The network treats the 197 tokens as CHANNELS and the 768 features as the 1-D LENGTH. Its
architecture, read from the published code (basicsr/archs/visual_encoder.py, built there with
nf=64, emb_dim=197, ch_mult=[2, 4, 8], res_blocks=2) and reimplemented here:

    conv 197->512 | resample 768->256 | res 512, attn 512, res 512
    | res 512, attn, res 512, attn | resample 256->512
    | res 512->256, res 256 | resample 512->768
    | res 256->128, res 128 | group norm | conv 128->77            (no activation at the end)

"resample" is nearest interpolation to the next length followed by a 3-tap conv; every norm is
GroupNorm(32 groups, eps 1e-6) and the activation is SiLU ("swish"). The parameter names are
the published ones (`blocks.<i>.<layer>`), so the official state dicts load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_GROUPS = 32
NORM_EPS = 1e-6  # GroupNorm eps of the published code (taken from its VQGAN blocks)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NUM_GROUPS, channels, eps=NORM_EPS, affine=True)


def conv1d(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv1d:
    return nn.Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2)


@dataclass(frozen=True)
class VisualEncoderConfig:
    """The published constructor arguments (the only configuration their weights come in)."""

    nf: int = 64
    in_tokens: int = 197  # CLIP ViT-B/16 at 224 px: 1 class token + 14 x 14 patches ("emb_dim")
    ch_mult: tuple[int, ...] = (2, 4, 8)
    res_blocks: int = 2
    out_tokens: int = 77  # SD1.5's text embedding length
    feature_dim: int = 768  # CLIP ViT-B/16 width = SD1.5's cross-attention width
    # the 1-D lengths after each resampling, in order (the code maps 768 -> 256 -> 512 -> 768)
    lengths: tuple[int, ...] = (256, 512, 768)


class Resample1D(nn.Module):
    """Nearest interpolation to a fixed length, then a 3-tap conv (the code's "Upsample")."""

    def __init__(self, channels: int, length: int):
        super().__init__()
        self.length = length
        self.conv = conv1d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=self.length, mode="nearest"))


class ResBlock1D(nn.Module):
    """norm-SiLU-conv twice plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv1d(in_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.conv2 = conv1d(out_channels, out_channels)
        self.conv_out = conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_out(x) if self.conv_out is not None else x
        return h + skip


class AttnBlock1D(nn.Module):
    """Single-head self-attention over the length axis, 1x1-conv projections, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv1d(channels, channels, 1)
        self.k = conv1d(channels, channels, 1)
        self.v = conv1d(channels, channels, 1)
        self.proj_out = conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [b, c, s]: softmax(q^T k / sqrt(c)) over the s positions, applied to v."""
        h = self.norm(x)
        q, k, v = (layer(h).transpose(1, 2) for layer in (self.q, self.k, self.v))  # [b, s, c]
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [b, s, c]
        return x + self.proj_out(out.transpose(1, 2))


class VisualEncoder(nn.Module):
    """[b, 197, 768] CLIP tokens -> [b, 77, 768] prompt tokens (module doc)."""

    def __init__(self, config: VisualEncoderConfig = VisualEncoderConfig()):
        super().__init__()
        self.config = config
        lengths = iter(config.lengths)
        width = config.nf * config.ch_mult[-1]
        blocks: list[nn.Module] = [
            conv1d(config.in_tokens, width),
            Resample1D(width, next(lengths)),
            ResBlock1D(width, width),
            AttnBlock1D(width),
            ResBlock1D(width, width),
        ]
        for level in reversed(range(len(config.ch_mult))):
            out_width = config.nf * config.ch_mult[level]
            for _ in range(config.res_blocks):
                blocks.append(ResBlock1D(width, out_width))
                width = out_width
                if out_width == 512:  # the published code attends only at width 512
                    blocks.append(AttnBlock1D(width))
            if level != 0:
                blocks.append(Resample1D(width, next(lengths)))
        blocks += [group_norm(width), conv1d(width, config.out_tokens)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        expected = (self.config.in_tokens, self.config.feature_dim)
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected:
            raise ValueError(f"the visual encoder takes CLIP tokens [batch, {expected[0]}, {expected[1]}], got {list(tokens.shape)}")
        x = tokens
        for block in self.blocks:
            x = block(x)
        return x
