"""Stage 2: train the rank-4 conv LoRA of the pruned SD2.1 UNet (paper §2.4).

z_lq -> frozen stage-1 adapter -> z_aligned (x_t at t=999) -> PrunedUNet with LoRA -> x0
-> frozen VAE decoder -> restored face; loss = MSE + 2 LPIPS + lambda_id (1 - cos CLIP)
+ lambda_fs (1 - cos 3DMM) against the HQ face. Only the LoRA trains: the base UNet, the VAE, the
adapter and the loss encoders are frozen (and run in the mixed-precision dtype). The prompt
embedding is computed once and the text encoder freed before the UNet is loaded.
Paper defaults: lr 5e-5, batch 2, 17k steps. The output file carries the stage-1 adapter, the
LoRA (kohya keys) and the prompt embedding: stages "1+2".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lafr_core.lafr_file import load_lafr, save_lafr
from lafr_core.ldm_keys import layout_from_diffusers_config
from lafr_core.lora import add_conv_lora, kohya_to_peft_state, lora_state_to_kohya
from lafr_core.unet_step import PrunedUNet

from .checkpoint import TrainState
from .common import setup_data, start_run, trainer_meta
from .config import TrainConfig
from .loop import LoopResult, Stage, constant_with_warmup, run_loop, total_steps, weight_dtype
from .losses import LossEncoders, Stage2Loss, load_loss_encoders
from .models import BaseModels, checkpoint_pruned_unet, freeze, load_base_models, vae_decode, vae_encode
from .prompt import resolve_prompt_embeds
from .validation import append_metrics, face_metrics, grid, load_val_identity, log_grid, write_grid

STAGE2_FILE = "lafr.safetensors"
LORA_ADAPTER = "default"


class LoraUNetStep(nn.Module):
    """The trained module: aligned latent -> x0 through the pruned UNet (LoRA inside)."""

    def __init__(self, unet: PrunedUNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, z_aligned: torch.Tensor) -> torch.Tensor:
        return self.unet(z_aligned)


def load_stage1_adapter(path: str) -> nn.Module:
    weights = load_lafr(path)
    if weights.aligner is None:
        raise ValueError(f"{path} has no stage-1 adapter (stages {weights.stages!r}); pass the file `python -m train stage1` wrote")
    return freeze(weights.aligner)


class Stage2(Stage):
    def __init__(
        self,
        config: TrainConfig,
        base: BaseModels | None = None,
        prompt_embeds: torch.Tensor | None = None,
        encoder_factory: Callable[[object], LossEncoders] = load_loss_encoders,
    ) -> None:
        self.config = config
        self.accelerator = accelerator = start_run(config)
        s2, device = config.stage2, accelerator.device
        dtype = weight_dtype(accelerator)
        # 1. everything that can fail on a missing file, before the big models are loaded
        self.aligner = load_stage1_adapter(s2.adapter).to(device)
        self.loss_fn = Stage2Loss(encoder_factory(s2), s2.lambda_mse, s2.lambda_lpips, s2.lambda_id, s2.lambda_fs).to(device, dtype)
        with accelerator.main_process_first():
            expected = base.unet.config.cross_attention_dim if base is not None and base.unet is not None else None
            self.prompt_embeds = resolve_prompt_embeds(config, prompt_embeds, expected_dim=expected)
        # 2. base models: frozen, LoRA injected, pruned
        if base is None:
            base = load_base_models(config.run.base_model, need_unet=True)
        if base.unet is None:
            raise ValueError("stage 2 needs the UNet of the base model")
        self.vae = freeze(base.vae).to(device, dtype)
        if config.run.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        with torch.random.fork_rng(devices=[]):  # LoRA init depends on the seed only
            torch.manual_seed(config.run.seed)
            self.unet = add_conv_lora(freeze(base.unet), rank=s2.lora_rank, alpha=s2.lora_alpha, adapter_name=LORA_ADAPTER)
        self.unet.to(device, dtype)
        self.lora_params = [p for p in self.unet.parameters() if p.requires_grad]
        for p in self.lora_params:  # trainables in fp32 (diffusers' cast_training_params)
            p.data = p.data.float()
        pruned = PrunedUNet.from_diffusers(self.unet, self.prompt_embeds.to(device))
        if config.run.gradient_checkpointing:
            checkpoint_pruned_unet(pruned)
        # 3. data, optimizer, accelerate
        self.data = setup_data(config, accelerator, self.vae, s2.batch_size, ("lq_latent", "hq", "landmarks"), ("lq", "hq", "landmarks"))
        self.batch_size = s2.batch_size
        optimizer = torch.optim.AdamW(self.lora_params, lr=s2.lr, weight_decay=s2.weight_decay)
        scheduler = constant_with_warmup(optimizer, config.run.lr_warmup_steps * accelerator.num_processes)
        self.step_module = LoraUNetStep(pruned)  # unwrapped: validation must not enter DDP's forward
        self.model, self.optimizer, self.dataloader, self.scheduler = accelerator.prepare(self.step_module, optimizer, self.data.dataloader, scheduler)
        self.total_steps = total_steps(s2.steps, None, config.run.max_steps)
        self.generators = {}
        self._val_aligned: torch.Tensor | None = None
        self._val_identity: object = None  # loaded at the first validation (main process only)

    # ------------------------------------------------------------------ training
    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.lora_params

    def aligned_latent(self, batch: dict) -> torch.Tensor:
        z_lq = batch["lq_latent"].float() if "lq_latent" in batch else vae_encode(self.vae, batch["lq"])
        with torch.no_grad():
            return self.aligner(z_lq.to(self.accelerator.device))

    def compute_loss(self, batch: dict):
        z = self.aligned_latent(batch)
        with self.accelerator.autocast():
            x0 = self.model(z)
            restored = vae_decode(self.vae, x0)
            loss, parts = self.loss_fn(restored, batch["hq"].to(restored.device), batch.get("landmarks"))
        return loss, {"loss": loss, **parts}

    # ------------------------------------------------------------------ weights
    def kohya_lora(self) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in lora_state_to_kohya(self.unet, adapter_name=LORA_ADAPTER).items()}

    def write_weights(self, path: Path, state: TrainState) -> None:
        save_lafr(
            path, aligner=self.aligner, kohya_lora=self.kohya_lora(), prompt_embeds=self.prompt_embeds,
            meta={"lafr.prompt": self.config.stage2.prompt, **trainer_meta(self.config, state.step, len(self.data.images), "1+2")},
        )  # fmt: skip

    def load_weights(self, path: Path) -> None:
        weights = load_lafr(path)
        if not weights.kohya_lora:
            raise ValueError(f"{path} holds no LoRA")
        state = kohya_to_peft_state(weights.kohya_lora, adapter_name=LORA_ADAPTER, **layout_from_diffusers_config(dict(self.unet.config)))
        own = {name for name, p in self.unet.named_parameters() if p.requires_grad}
        if set(state) != own:
            raise ValueError(f"{path}: its LoRA layers do not match this UNet's ({len(set(state) ^ own)} names differ)")
        params = dict(self.unet.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].dtype))

    def export(self, state: TrainState) -> Path:
        path = self.config.output_dir / STAGE2_FILE
        self.write_weights(path, state)
        return path

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, state: TrainState) -> dict[str, float]:
        if self._val_aligned is None:
            self._val_aligned = self.aligner(vae_encode(self.vae, self.data.val_lq))
        with self.accelerator.autocast():
            restored = vae_decode(self.vae, self.step_module(self._val_aligned)).float().cpu()
            aligned = vae_decode(self.vae, self._val_aligned).float().cpu()
        image = grid([self.data.val_lq, aligned, restored, self.data.val_hq], ["LQ", "aligned", "restored", "HQ"])
        folder = self.config.output_dir / "validation"
        write_grid(image, folder, state.step)
        log_grid(self.accelerator, image, state.step)
        if self._val_identity is None:
            self._val_identity = load_val_identity(self.config.data.val_identity, _say) or False
        metrics = face_metrics(restored, self.data.val_hq, identity=self._val_identity or None, lpips=self.loss_fn.lpips)
        metrics["psnr_aligned"] = face_metrics(aligned, self.data.val_hq, landmarks=False)["psnr"]  # the adapter alone
        append_metrics(folder, state.step, metrics)
        _say(f"validation step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
        return metrics


def _say(text: str) -> None:
    """A line above the progress bar (validate runs on the main process only)."""
    from tqdm.auto import tqdm

    tqdm.write(text)


def train_stage2(
    config: TrainConfig,
    *,
    base: BaseModels | None = None,
    prompt_embeds: torch.Tensor | None = None,
    encoder_factory: Callable[[object], LossEncoders] = load_loss_encoders,
    on_step: Callable[[int], None] | None = None,
) -> LoopResult:
    """Run stage 2 (resuming per config.run.resume); writes <output_dir>/lafr.safetensors.
    `base`, `prompt_embeds` and `encoder_factory` inject models (tests; custom encoders)."""
    return run_loop(Stage2(config, base=base, prompt_embeds=prompt_embeds, encoder_factory=encoder_factory), on_step=on_step)
