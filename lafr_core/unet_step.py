"""The pruned one-step UNet of LAFR: eps(z_t, t=999, prompt) -> x0 with every constant folded.

With the timestep and the prompt fixed (DESIGN §2), three parts of the SD2.1 UNet are constants:
  1. the timestep embedding MLP and each resnet's `time_emb_proj(silu(temb))`: a per-channel
     term added right after conv1, folded into conv1's bias (a LoRA-wrapped conv1 keeps its
     module and gets the term added after it, so LoRA training still works);
  2. every cross-attention's K and V of the prompt: computed once, kept as buffers;
  3. the text encoder: never needed, the prompt embedding ships in the LAFR file.
The folding is exact, so the pruned UNet equals the unpruned one to float32 round-off (tested on
the full SD2.1-base config). The module tree mirrors diffusers' module paths
(`down_blocks.0.resnets.0.conv1`, ...), so the LDM key map and the conv LoRA apply to it as they
do to a `UNet2DConditionModel`; the time and text modules are simply absent.

Only modules are referenced, never copied: building a PrunedUNet costs no weight memory, and
dropping the source UNet frees the time MLP, `time_emb_proj` and `to_k`/`to_v` weights.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .schedule import LAFR_TIMESTEP, x0_coefficients

SUPPORTED_DOWN_BLOCKS = {"CrossAttnDownBlock2D", "DownBlock2D"}
SUPPORTED_UP_BLOCKS = {"CrossAttnUpBlock2D", "UpBlock2D"}


def _unsupported(what: str) -> ValueError:
    return ValueError(
        f"PrunedUNet supports SD2.x-layout UNets (epsilon, layer-norm transformer blocks); {what}"
    )


def _timestep_features(timestep: int, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """The sinusoidal timestep features of diffusers' `Timesteps` (float32, like diffusers)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - shift)
    args = torch.tensor([float(timestep)])[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear evaluated in float32 whatever the module's dtype: constants are folded once, so
    they are computed at the best precision and cast to the run dtype afterwards."""
    bias = layer.bias.float() if layer.bias is not None else None
    return F.linear(x.float(), layer.weight.float(), bias)


def _time_embedding(unet: nn.Module, timestep: int) -> torch.Tensor:
    """temb [1, time_embed_dim] of the UNet at `timestep`, float32."""
    proj, mlp = unet.time_proj, unet.time_embedding
    if getattr(mlp, "cond_proj", None) is not None or getattr(mlp, "post_act", None) is not None:
        raise _unsupported("this UNet's time embedding has a condition projection")
    if getattr(unet, "class_embedding", None) is not None or getattr(unet, "add_embedding", None) is not None:
        raise _unsupported("this UNet has class/added embeddings (SDXL-like or conditioned models)")
    feats = _timestep_features(timestep, proj.num_channels, proj.flip_sin_to_cos, proj.downscale_freq_shift)
    return _linear32(mlp.linear_2, F.silu(_linear32(mlp.linear_1, feats)))


def _fold_bias_into_conv(conv: nn.Module, extra: torch.Tensor) -> tuple[nn.Module, torch.Tensor | None]:
    """Return (conv to use, term still to add). A plain Conv2d becomes a new Conv2d sharing the
    weight tensor with `bias + extra` as its bias; any wrapper (a peft LoRA layer) is kept as is
    and the term is returned to be added after it."""
    if type(conv) is not nn.Conv2d:
        return conv, extra.to(next(conv.parameters()).dtype)
    with torch.device("meta"):
        folded = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
        )
    folded.weight = conv.weight
    base = conv.bias.float() if conv.bias is not None else 0.0
    folded.bias = nn.Parameter((base + extra).to(conv.weight.dtype), requires_grad=False)
    return folded, None


class PrunedResnet(nn.Module):
    """diffusers ResnetBlock2D ('default' time norm) with the time term folded after conv1."""

    def __init__(self, resnet: nn.Module, temb: torch.Tensor) -> None:
        super().__init__()
        if resnet.time_embedding_norm != "default" or resnet.upsample is not None or resnet.downsample is not None:
            raise _unsupported("a resnet uses scale-shift time norm or in-block resampling")
        time_term = _linear32(resnet.time_emb_proj, F.silu(temb))[0]  # [c]
        self.norm1, self.norm2 = resnet.norm1, resnet.norm2
        self.conv1, leftover = _fold_bias_into_conv(resnet.conv1, time_term)
        self.register_buffer("time_bias", leftover, persistent=False)
        self.conv2 = resnet.conv2
        self.conv_shortcut = resnet.conv_shortcut
        self.output_scale_factor = resnet.output_scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_bias is not None:
            h = h + self.time_bias[None, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        out = skip + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class PrunedCrossAttention(nn.Module):
    """Cross-attention whose keys and values of the fixed prompt are precomputed."""

    def __init__(self, attn: nn.Module, prompt_embeds: torch.Tensor) -> None:
        super().__init__()
        for name in ("spatial_norm", "group_norm", "norm_q", "norm_k"):
            if getattr(attn, name, None) is not None:
                raise _unsupported(f"its cross-attention uses {name}")
        if getattr(attn, "norm_cross", None) or getattr(attn, "residual_connection", False):
            raise _unsupported("its cross-attention normalizes the prompt or adds a residual")
        self.heads = attn.heads
        self.rescale_output_factor = attn.rescale_output_factor
        self.to_q, self.to_out = attn.to_q, attn.to_out
        dtype = attn.to_q.weight.dtype
        key, value = _linear32(attn.to_k, prompt_embeds), _linear32(attn.to_v, prompt_embeds)
        self.register_buffer("key", self._split_heads(key).to(dtype))  # [1, heads, tokens, head_dim]
        self.register_buffer("value", self._split_heads(value).to(dtype))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, inner = x.shape
        return x.view(b, n, self.heads, inner // self.heads).transpose(1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = self._split_heads(self.to_q(x))
        k, v = self.key.expand(b, -1, -1, -1), self.value.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3]).to(q.dtype)
        out = self.to_out[1](self.to_out[0](out))
        return out if self.rescale_output_factor == 1.0 else out / self.rescale_output_factor


class PrunedTransformerBlock(nn.Module):
    """BasicTransformerBlock (layer norm, self-attn, cross-attn, feed-forward) with the
    cross-attention pruned; self-attention and feed-forward are the original modules."""

    def __init__(self, block: nn.Module, prompt_embeds: torch.Tensor) -> None:
        super().__init__()
        if block.norm_type != "layer_norm" or block.only_cross_attention or block.pos_embed is not None:
            raise _unsupported(f"a transformer block uses norm_type={block.norm_type!r} or cross-only attention")
        if block.attn2 is None:
            raise _unsupported("a transformer block has no cross-attention")
        self.norm1, self.attn1 = block.norm1, block.attn1
        self.norm2, self.attn2 = block.norm2, PrunedCrossAttention(block.attn2, prompt_embeds)
        self.norm3, self.ff = block.norm3, block.ff
        self.split_geglu = _is_plain_geglu(block.ff)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """GEGLU as two half-width projections instead of one projection chunked in two: the
        same products, without copying the two non-contiguous halves on every call (~6% of a
        batch-4 step on CPU). Any other feed-forward runs as is."""
        if not self.split_geglu:
            return self.ff(x)
        proj = self.ff.net[0].proj
        inner = proj.out_features // 2
        hidden = F.linear(x, proj.weight[:inner], proj.bias[:inner] if proj.bias is not None else None)
        gate = F.linear(x, proj.weight[inner:], proj.bias[inner:] if proj.bias is not None else None)
        x = hidden * F.gelu(gate)
        for module in self.ff.net[1:]:
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x)) + x
        return self.feed_forward(self.norm3(x)) + x


def _is_plain_geglu(ff: nn.Module) -> bool:
    """diffusers FeedForward(activation_fn="geglu"): net = [GEGLU(proj: Linear), Dropout, Linear, ...]."""
    net = getattr(ff, "net", None)
    if net is None or len(net) < 2 or type(net[0]).__name__ != "GEGLU":
        return False
    proj = getattr(net[0], "proj", None)
    return type(proj) is nn.Linear and proj.out_features % 2 == 0


class PrunedTransformer2D(nn.Module):
    """Transformer2DModel on continuous inputs (linear or 1x1-conv projections)."""

    def __init__(self, transformer: nn.Module, prompt_embeds: torch.Tensor) -> None:
        super().__init__()
        if not getattr(transformer, "is_input_continuous", True):
            raise _unsupported("a transformer works on patches or discrete inputs")
        self.use_linear_projection = transformer.use_linear_projection
        self.norm, self.proj_in, self.proj_out = transformer.norm, transformer.proj_in, transformer.proj_out
        self.transformer_blocks = nn.ModuleList(
            PrunedTransformerBlock(block, prompt_embeds) for block in transformer.transformer_blocks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(b, height * width, -1))
        else:
            h = self.proj_in(h)
            h = h.permute(0, 2, 3, 1).reshape(b, height * width, -1)
        for block in self.transformer_blocks:
            h = block(h)
        if self.use_linear_projection:
            # Back to [b, c, h, w] in the memory format the block received: a channels_last view
            # fed to NCHW convolutions makes oneDNN re-layout their weights on every call.
            layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            h = self.proj_out(h).reshape(b, height, width, -1).permute(0, 3, 1, 2).contiguous(memory_format=layout)
        else:
            h = self.proj_out(h.reshape(b, height, width, -1).permute(0, 3, 1, 2).contiguous())
        return h + x


def _prune_list(modules: Iterable[nn.Module] | None, wrap) -> nn.ModuleList | None:
    return None if modules is None else nn.ModuleList(wrap(m) for m in modules)


class PrunedBlock(nn.Module):
    """One down, mid or up block: resnets interleaved with optional transformers, then an
    optional resampler (the original Downsample2D / Upsample2D module)."""

    def __init__(self, block: nn.Module, temb: torch.Tensor, prompt_embeds: torch.Tensor) -> None:
        super().__init__()
        self.resnets = _prune_list(block.resnets, lambda r: PrunedResnet(r, temb))
        self.attentions = _prune_list(getattr(block, "attentions", None), lambda t: PrunedTransformer2D(t, prompt_embeds))
        self.downsamplers = getattr(block, "downsamplers", None)
        self.upsamplers = getattr(block, "upsamplers", None)

    def down(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h)
            if self.attentions is not None:
                h = self.attentions[i](h)
            skips.append(h)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                h = down(h)
            skips.append(h)
        return h, skips

    def mid(self, h: torch.Tensor) -> torch.Tensor:
        h = self.resnets[0](h)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            h = resnet(attn(h))
        return h

    def up(self, h: torch.Tensor, skips: list[torch.Tensor], output_size: tuple[int, int] | None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1))
            if self.attentions is not None:
                h = self.attentions[i](h)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                h = upsampler(h, output_size)
        return h


class PrunedUNet(nn.Module):
    """x0 = PrunedUNet(z_t): the SD2.1 UNet's single step at a fixed timestep and prompt.

    Build with `PrunedUNet.from_diffusers(unet, prompt_embeds, timestep=999)`; `unet` may be a
    plain, LoRA-wrapped (peft) or LoRA-merged diffusers UNet2DConditionModel.
    """

    def __init__(self, unet: nn.Module, prompt_embeds: torch.Tensor, timestep: int = LAFR_TIMESTEP) -> None:
        super().__init__()
        config = unet.config
        self._check(unet, prompt_embeds)
        prompt = prompt_embeds.detach().float().to(unet.conv_in.weight.device)
        with torch.no_grad():
            temb = _time_embedding(unet, timestep).to(prompt.device)
            self.conv_in = unet.conv_in
            self.down_blocks = nn.ModuleList(PrunedBlock(b, temb, prompt) for b in unet.down_blocks)
            self.mid_block = PrunedBlock(unet.mid_block, temb, prompt)
            self.up_blocks = nn.ModuleList(PrunedBlock(b, temb, prompt) for b in unet.up_blocks)
        self.conv_norm_out, self.conv_out = unet.conv_norm_out, unet.conv_out
        self.timestep = timestep
        self.in_channels = config.in_channels
        self.cross_attention_dim = config.cross_attention_dim
        self.c_z, self.c_eps = x0_coefficients(timestep)

    @classmethod
    def from_diffusers(cls, unet: nn.Module, prompt_embeds: torch.Tensor, timestep: int = LAFR_TIMESTEP) -> "PrunedUNet":
        return cls(unet, prompt_embeds, timestep)

    @staticmethod
    def _check(unet: nn.Module, prompt_embeds: torch.Tensor) -> None:
        config = unet.config
        down, up = set(config.down_block_types), set(config.up_block_types)
        if not down <= SUPPORTED_DOWN_BLOCKS or not up <= SUPPORTED_UP_BLOCKS:
            raise _unsupported(f"got down blocks {sorted(down)} and up blocks {sorted(up)}")
        if config.mid_block_type not in (None, "UNetMidBlock2DCrossAttn"):
            raise _unsupported(f"got mid block {config.mid_block_type!r}")
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1 or prompt_embeds.shape[-1] != config.cross_attention_dim:
            raise ValueError(
                f"prompt_embeds must be [1, tokens, {config.cross_attention_dim}] for this UNet "
                f"(cross_attention_dim {config.cross_attention_dim}), got {tuple(prompt_embeds.shape)}"
            )

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def eps(self, z_t: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction at the fixed timestep and prompt; z_t [b, 4, h, w]."""
        if z_t.ndim != 4 or z_t.shape[1] != self.in_channels:
            raise ValueError(f"PrunedUNet expects latents [batch, {self.in_channels}, h, w], got {tuple(z_t.shape)}")
        h = self.conv_in(z_t)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block.down(h)
            skips.extend(block_skips)
        h = self.mid_block.mid(h)
        for i, block in enumerate(self.up_blocks):
            block_skips = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            output_size = tuple(skips[-1].shape[2:]) if skips else None
            h = block.up(h, block_skips, output_size)
        h = F.silu(self.conv_norm_out(h))
        return self.conv_out(h)

    def forward(self, z_t: torch.Tensor) -> torch.Tensor:
        """x0 = (z_t - sqrt(1 - a) eps) / sqrt(a), a = alphas_cumprod[timestep] (float64 constants)."""
        eps = self.eps(z_t)
        return z_t * self.c_z - eps * self.c_eps
