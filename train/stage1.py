"""Stage 1: train the latent alignment adapter (paper §2.3).

loss = L1(aligner(z_lq), z_hq) + vq_loss, on scaled SD VAE latents (posterior mode x 0.18215).
Logged beside it: L1(z_lq, z_hq), the unaligned baseline the adapter has to beat, and the
codebook's perplexity / unused entries since the last re-seed. Every `reseed_every` steps the
codes nobody chose are re-seeded from current extractor features (as VQ trainers do against
codebook collapse), identically on every process, and their Adam moments are reset.
Paper defaults: lr 1e-4, batch 16, 100 epochs, codebook 1024 x 256.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lafr_core.adapter import AlignerOutput, LatentAligner, usage_from_counts
from lafr_core.lafr_file import load_lafr, save_lafr

from .checkpoint import TrainState
from .common import setup_data, start_run, trainer_meta
from .config import TrainConfig
from .loop import LoopResult, Stage, constant_with_warmup, run_loop, total_steps, weight_dtype
from .models import freeze, load_base_models, vae_decode, vae_encode
from .validation import grid, log_grid, write_grid

STAGE1_FILE = "lafr_stage1.safetensors"


class AlignerNet(nn.Module):
    """forward = align(): DDP needs the full output (indices, vq_loss) to come from forward."""

    def __init__(self, aligner: LatentAligner) -> None:
        super().__init__()
        self.aligner = aligner

    def forward(self, z: torch.Tensor) -> AlignerOutput:
        return self.aligner.align(z)


class Stage1(Stage):
    def __init__(self, config: TrainConfig, vae: nn.Module | None = None) -> None:
        self.config = config
        self.accelerator = accelerator = start_run(config)
        s1 = config.stage1
        if vae is None:
            vae = load_base_models(config.run.base_model, need_unet=False).vae
        self.vae = freeze(vae).to(accelerator.device, weight_dtype(accelerator))
        self.data = setup_data(config, accelerator, self.vae, s1.batch_size, ("lq_latent", "hq_latent"), ("lq", "hq"))
        with torch.random.fork_rng(devices=[]):  # init depends on the seed only, not on what ran before
            torch.manual_seed(config.run.seed)
            self.aligner = LatentAligner(config.adapter)
        self.batch_size = s1.batch_size
        optimizer = torch.optim.AdamW(self.aligner.parameters(), lr=s1.lr, weight_decay=s1.weight_decay)
        scheduler = constant_with_warmup(optimizer, config.run.lr_warmup_steps * accelerator.num_processes)
        self.model, self.optimizer, self.dataloader, self.scheduler = accelerator.prepare(AlignerNet(self.aligner), optimizer, self.data.dataloader, scheduler)
        # accelerate steps at every `accumulation` batches and at the end of each epoch's loader
        per_epoch = math.ceil(len(self.dataloader) / config.run.gradient_accumulation_steps)
        self.total_steps = total_steps(s1.epochs, per_epoch, config.run.max_steps)
        self.generators = {"reseed": torch.Generator().manual_seed(config.run.seed + 1)}
        self.counts = torch.zeros(config.adapter.codebook_size, dtype=torch.long, device=accelerator.device)
        self._last_lq: torch.Tensor | None = None
        self._val_latents: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ training
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.aligner.parameters())

    def latents(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "lq_latent" in batch:
            return batch["lq_latent"].float(), batch["hq_latent"].float()
        return vae_encode(self.vae, batch["lq"]), vae_encode(self.vae, batch["hq"])

    def compute_loss(self, batch: dict):
        z_lq, z_hq = self.latents(batch)
        out = self.model(z_lq)
        l1 = F.l1_loss(out.latent.float(), z_hq)
        loss = l1 + out.vq_loss.float()
        self.counts += torch.bincount(out.indices.flatten(), minlength=self.counts.numel())
        self._last_lq = z_lq
        baseline = F.l1_loss(z_lq, z_hq)
        return loss, {"loss": loss, "l1": l1, "vq": out.vq_loss, "baseline_l1": baseline}

    def after_step(self, state: TrainState) -> dict[str, float]:
        every = self.config.stage1.reseed_every
        if not every or state.step % every:
            return {}
        usage = usage_from_counts(self.accelerator.reduce(self.counts, reduction="sum").cpu().clone())  # reduce may alias
        reseeded = self.reseed_dead_codes(usage.counts == 0)
        self.counts.zero_()
        return {"perplexity": usage.perplexity, "unused_codes": float(usage.unused), "reseeded": float(reseeded)}

    @torch.no_grad()
    def reseed_dead_codes(self, dead: torch.Tensor) -> int:
        """Dead codes <- random current features of process 0's last batch (broadcast, so every
        process holds the same codebook); their Adam moments are zeroed."""
        from accelerate.utils import broadcast

        n_dead = int(dead.sum())
        if n_dead == 0 or self._last_lq is None:
            return 0
        features = self.aligner.features(self._last_lq.to(self.accelerator.device))
        pick = torch.randint(features.shape[0], (n_dead,), generator=self.generators["reseed"])
        candidates = broadcast(features[pick.to(features.device)].contiguous(), from_process=0)
        count = self.aligner.reseed_codes_(dead.to(candidates.device), candidates, generator=self.generators["reseed"])
        embed = self.aligner.codebook.embed
        moments = self.optimizer.optimizer.state.get(embed, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in moments:
                moments[name][dead.to(moments[name].device)] = 0
        return count

    def extra_state(self) -> dict:
        return {"code_counts": self.counts.tolist()}

    def restore_extra(self, extra: dict) -> None:
        if "code_counts" in extra:
            self.counts = torch.tensor(extra["code_counts"], dtype=torch.long, device=self.accelerator.device)

    # ------------------------------------------------------------------ weights
    def write_weights(self, path: Path, state: TrainState) -> None:
        save_lafr(path, aligner=self.aligner, meta=trainer_meta(self.config, state.step, len(self.data.images), "1"))

    def load_weights(self, path: Path) -> None:
        weights = load_lafr(path)
        if weights.aligner is None:
            raise ValueError(f"{path} holds no adapter")
        self.aligner.load_state_dict(weights.aligner.state_dict())

    def export(self, state: TrainState) -> Path:
        path = self.config.output_dir / STAGE1_FILE
        self.write_weights(path, state)
        return path

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, state: TrainState) -> dict[str, float]:
        if self._val_latents is None:
            self._val_latents = (vae_encode(self.vae, self.data.val_lq), vae_encode(self.vae, self.data.val_hq))
        z_lq, z_hq = self._val_latents
        aligned = self.aligner(z_lq).float()
        columns = [self.data.val_lq, vae_decode(self.vae, z_lq).float().cpu(), vae_decode(self.vae, aligned).float().cpu(), self.data.val_hq]
        image = grid(columns, ["LQ", "LQ latent", "aligned", "HQ"])
        write_grid(image, self.config.output_dir / "validation", state.step)
        log_grid(self.accelerator, image, state.step)
        return {"l1": float(F.l1_loss(aligned, z_hq)), "baseline_l1": float(F.l1_loss(z_lq, z_hq))}


def train_stage1(config: TrainConfig, *, vae: nn.Module | None = None, on_step: Callable[[int], None] | None = None) -> LoopResult:
    """Run stage 1 (resuming per config.run.resume); writes <output_dir>/lafr_stage1.safetensors.
    `vae` injects the frozen VAE (tests); by default it comes from config.run.base_model."""
    return run_loop(Stage1(config, vae=vae), on_step=on_step)
