"""The training loop both stages share: Accelerate, accumulation, checkpoints, exact resume,
graceful Ctrl-C, progress bar, logging and validation scheduling.

A stage (stage1.py, stage2.py) subclasses `Stage` and supplies the model, optimizer, data and
`compute_loss`; this module owns everything about *when* things happen, so both stages resume,
stop and log the same way.

Exact resume: the data order is a pure function of (seed, epoch) (train/data.py), a checkpoint
records how many batches of the current epoch are consumed, and resuming skips exactly those
(accelerate's `skip_first_batches`, which never loads them). Together with the optimizer,
scheduler and every RNG state, a resumed run computes what the uninterrupted run would have.

Ctrl-C / SIGTERM: the first signal sets a flag; the loop finishes the optimizer step it is in,
writes a checkpoint and returns. A second Ctrl-C aborts at once. Data-loader workers ignore both
signals (the terminal sends Ctrl-C to the whole process group; a worker dying on it would take
the main process's next batch down with it before the checkpoint is written).
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from .checkpoint import TrainState, clean_incomplete, load_checkpoint, resolve_resume, save_checkpoint
from .config import TrainConfig

EXIT_INTERRUPTED = 130


def build_accelerator(config: TrainConfig):
    """Accelerator with the run's precision, accumulation and (optional) TensorBoard tracker."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

    run = config.run
    # torch >= 2.14 renames DDP's broadcast_buffers; accelerate still passes the old name.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    if run.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    if run.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise RuntimeError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    accelerator = Accelerator(
        mixed_precision=run.mixed_precision,
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        log_with="tensorboard" if run.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(config.output_dir), logging_dir=str(config.output_dir / "logs")),
        # The pruned UNet's buffers (prompt K/V, time biases) are constants: no per-step broadcast.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    set_seed(run.seed, device_specific=False)
    return accelerator


def weight_dtype(accelerator) -> torch.dtype:
    """Frozen models run in the mixed-precision dtype; trainables stay float32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def ignore_signals_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: leave SIGINT/SIGTERM to the main process (see module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def constant_with_warmup(optimizer, warmup_steps: int):
    """Linear warm-up then constant (the paper gives no schedule). Accelerate steps a prepared
    scheduler once per process per optimizer step, hence warm-up counted in those ticks."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda tick: min(1.0, (tick + 1) / warmup_steps) if warmup_steps > 0 else 1.0)


class StopRequest:
    """First SIGINT/SIGTERM: remember it (the loop checkpoints and stops). Second SIGINT: abort."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint "
            "(press Ctrl-C again to abort without one)",
            file=sys.stderr,
            flush=True,
        )

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._handler)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class Stage(ABC):
    """What a stage supplies to `run_loop`. Attributes are set by the subclass's setup."""

    name: str
    accelerator: object
    config: TrainConfig
    model: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    optimizer: object
    scheduler: object
    dataloader: object  # prepared
    total_steps: int
    batch_size: int
    generators: dict[str, torch.Generator]

    @abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer trains (and gradient clipping clips)."""

    @abstractmethod
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to backpropagate, values to log) for one micro-batch."""

    def after_step(self, state: TrainState) -> dict[str, float]:
        """Called on every process after each optimizer step; returns extra log values."""
        return {}

    def extra_state(self) -> dict:
        """JSON-able stage state that a checkpoint must carry (stored in state.json)."""
        return {}

    def restore_extra(self, extra: dict) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Inverse of `extra_state`, called after a checkpoint is loaded."""

    @abstractmethod
    def write_weights(self, path: Path, state: TrainState) -> None:
        """Write the current weights as a LAFR file (the checkpoint's weights.safetensors)."""

    @abstractmethod
    def load_weights(self, path: Path) -> None:
        """Inverse of `write_weights`, bit-exact (resume)."""

    def validate(self, state: TrainState) -> dict[str, float]:
        """Main process only: write the validation grid, return metrics."""
        return {}

    @abstractmethod
    def export(self, state: TrainState) -> Path:
        """Main process only: write the stage's LAFR file; returns its path."""


@dataclass
class LoopResult:
    state: TrainState
    interrupted: bool
    checkpoint: Path | None
    export: Path | None
    history: list[tuple[int, dict[str, float]]]  # (step, logged means) at every log step


class _Window:
    """Running means of log values and throughput between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count, self.images, self.start = 0, 0, time.perf_counter()

    def add(self, logs: dict[str, torch.Tensor | float], images: int) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        self.images += images

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.count) for k, v in self.sums.items()}

    def throughput(self) -> float:
        return self.images / max(1e-9, time.perf_counter() - self.start)


def _reduce_mean(accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], device=accelerator.device)
    tensor = accelerator.reduce(tensor, reduction="mean")
    return dict(zip(keys, tensor.tolist()))


def _stop_agreed(accelerator, stop: StopRequest) -> bool:
    """All processes stop at the same step if any of them got the signal."""
    if accelerator.num_processes == 1:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item() > 0)


def run_loop(stage: Stage, on_step: Callable[[int], None] | None = None) -> LoopResult:
    """Train `stage` to `stage.total_steps`, resuming per config.run.resume. See module doc."""
    from accelerate import skip_first_batches
    from tqdm.auto import tqdm

    accelerator, config, run = stage.accelerator, stage.config, stage.config.run
    state = TrainState(stage=config.stage)
    if accelerator.is_main_process:
        clean_incomplete(config.output_dir)
    accelerator.wait_for_everyone()
    resume_from = resolve_resume(config.output_dir, run.resume)
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from, stage.load_weights, stage.optimizer, stage.scheduler, stage.generators)
        if state.stage != config.stage:
            raise ValueError(f"{resume_from} is a {state.stage} checkpoint, not {config.stage}")
        stage.restore_extra(state.extra)
        accelerator.print(f"resumed from {resume_from} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    elif run.resume:
        accelerator.print(f"--resume {run.resume}: no checkpoint in {config.output_dir}, starting from scratch")

    images_per_batch = stage.batch_size * accelerator.num_processes
    progress = tqdm(total=stage.total_steps, initial=state.step, desc=config.stage, disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window = _Window()
    stop = StopRequest()
    last_checkpoint: Path | None = None
    history: list[tuple[int, dict[str, float]]] = []
    stopped = False  # agreed by all processes (a signal may reach only some of them)
    stage.model.train()

    def save() -> Path:
        state.extra = stage.extra_state()
        return save_checkpoint(
            accelerator, config.output_dir, state, lambda p: stage.write_weights(p, state),
            stage.optimizer, stage.scheduler, stage.generators, run.keep_checkpoints,
        )  # fmt: skip

    with stop.installed():
        try:
            while state.step < stage.total_steps and not stopped:
                stage.dataloader.set_epoch(state.epoch)
                loader = skip_first_batches(stage.dataloader, state.batch_in_epoch) if state.batch_in_epoch else stage.dataloader
                batch_index = state.batch_in_epoch
                finished_epoch = True
                for batch in loader:
                    with accelerator.accumulate(stage.model):
                        loss, logs = stage.compute_loss(batch)
                        if not torch.isfinite(loss.detach()):
                            raise FloatingPointError(f"{config.stage}: loss is {loss.item()} at step {state.step + 1}; lower the learning rate or check the data")
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and run.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(stage.trainable_parameters(), run.max_grad_norm)
                        stage.optimizer.step()
                        stage.scheduler.step()
                        stage.optimizer.zero_grad(set_to_none=True)
                    batch_index += 1
                    window.add({k: v.detach() for k, v in logs.items()}, images_per_batch)
                    if not accelerator.sync_gradients:
                        continue
                    state.step += 1
                    state.batch_in_epoch = batch_index
                    state.images_seen += images_per_batch * run.gradient_accumulation_steps
                    extra_logs = stage.after_step(state)
                    progress.update(1)
                    if state.step % run.log_every == 0 or state.step == stage.total_steps:
                        means = _reduce_mean(accelerator, {**window.means(), **extra_logs})
                        means["images_per_s"] = window.throughput()  # all processes' images
                        means["lr"] = stage.scheduler.get_last_lr()[0]
                        progress.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k in ("loss", "baseline_l1", "images_per_s", "perplexity")})
                        accelerator.log(means, step=state.step)
                        history.append((state.step, means))
                        window = _Window()
                    if on_step is not None:
                        on_step(state.step)
                    stopped = _stop_agreed(accelerator, stop)
                    done = state.step >= stage.total_steps
                    if stopped or done or state.step % run.checkpoint_every == 0:
                        last_checkpoint = save()
                    if run.validate_every and state.step % run.validate_every == 0 and not (done or stopped):
                        _validate(stage, state)
                    if stopped or done:
                        finished_epoch = False
                        break
                if finished_epoch:
                    state.epoch += 1
                    state.batch_in_epoch = 0
        finally:
            progress.close()

    interrupted = stopped and state.step < stage.total_steps
    exported = None
    if interrupted:
        accelerator.print(f"stopped at step {state.step}: checkpoint {last_checkpoint}; continue with --resume latest")
    else:
        _validate(stage, state)
        if accelerator.is_main_process:
            exported = stage.export(state)
            accelerator.print(f"{config.stage} finished at step {state.step}: wrote {exported}")
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return LoopResult(state=state, interrupted=interrupted, checkpoint=last_checkpoint, export=exported, history=history)


def _validate(stage: Stage, state: TrainState) -> None:
    """Main process only. Stages validate with their unwrapped modules: a DDP forward on one
    process alone would wait forever for the others."""
    accelerator = stage.accelerator
    if accelerator.is_main_process and stage.config.data.val_images > 0:
        stage.model.eval()
        metrics = stage.validate(state)
        stage.model.train()
        if metrics:
            accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.step)
    accelerator.wait_for_everyone()


def total_steps(epochs_or_steps: int, steps_per_epoch: int | None, max_steps: int | None) -> int:
    """Optimizer steps of a run: epochs x steps per epoch (stage 1) or steps (stage 2), capped."""
    total = epochs_or_steps * steps_per_epoch if steps_per_epoch is not None else epochs_or_steps
    return min(total, max_steps) if max_steps else total


def flat_config(config: TrainConfig) -> dict:
    """Config for TensorBoard's hparams: section/name -> number or string."""
    out = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            for k, v in values.items():
                out[f"{section}/{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
        else:
            out[section] = values
    return out
