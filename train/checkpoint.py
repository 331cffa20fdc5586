"""Checkpoints that survive crashes and resume exactly.

Layout: <output_dir>/checkpoints/checkpoint-00001000/
    weights.safetensors   the trainable weights as a LAFR file (the export format: a checkpoint
                          is usable as a model as it is, and `export` just re-labels it)
    optimizer.pt          optimizer state dict     } torch.save, loaded with weights_only=True:
    scheduler.pt          LR scheduler state dict  } tensors, numbers and lists only, never
    scaler.pt             fp16 GradScaler (if any) } arbitrary pickled objects
    rng-<rank>.pt         python/numpy/torch/CUDA RNG states and the trainer's own generators
    state.json            step, epoch, position in the epoch: written LAST
Atomic: everything is written into `.tmp-checkpoint-...`, each file fsynced, the folder renamed
to its final name and the parent fsynced. A folder without state.json is never a checkpoint, so
a crash mid-save leaves the previous checkpoint as the latest. Keep-last-N prunes after a save.

Why our own format rather than `Accelerator.save_state`: its RNG file is a pickle that needs
weights_only=False to load, and it does not record the position inside the epoch (the trap in
STYLE.md: reference trainers re-run a partial epoch from its first batch).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
PREFIX = "checkpoint-"
WEIGHTS = "weights.safetensors"
STATE = "state.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass
class TrainState:
    """Where training stands: `batch_in_epoch` batches of `epoch` are consumed by `step` steps."""

    stage: str
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    images_seen: int = 0
    extra: dict = field(default_factory=dict)  # JSON-able stage state (e.g. codebook counters)


# --------------------------------------------------------------------------- finding checkpoints


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (state.json present), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """None/'' -> None; 'latest' -> highest complete checkpoint or None; a path -> that one."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_dir():
        path = checkpoint_root(output_dir) / resume
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"--resume {resume!r}: {path} is not a complete checkpoint folder (no {STATE})")
    return path


def clean_incomplete(output_dir: str | Path) -> None:
    """Remove leftovers of saves that were cut off (temp folders)."""
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".tmp-") or path.name.startswith(".old-"):
                shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- file helpers


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        _fsync_file(path)


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- RNG state


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """All RNG states of this process as tensors / numbers / lists (weights_only-loadable)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    missing = sorted(set(generators) - set(state["generators"]))
    if missing:
        raise ValueError(f"checkpoint has no state for generator(s) {missing}")
    for name, g in generators.items():
        g.set_state(state["generators"][name])


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    state: TrainState,
    write_weights: Callable[[Path], None],
    optimizer,
    scheduler,
    generators: dict[str, torch.Generator],
    keep: int,
) -> Path:
    """Write checkpoint-<step> atomically on every process's behalf; returns its path.

    `write_weights(path)` writes the LAFR file (called on the main process only). Collective:
    every process must call it at the same step.
    """
    root = checkpoint_root(output_dir)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng_file = tmp / f"rng-{accelerator.process_index}.pt"
    torch.save(rng_state(generators), rng_file)
    _fsync_file(rng_file)
    if accelerator.is_main_process:
        write_weights(tmp / WEIGHTS)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        for name in ("optimizer.pt", "scheduler.pt", "scaler.pt", WEIGHTS):
            if (tmp / name).exists():
                _fsync_file(tmp / name)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {**asdict(state), "num_processes": accelerator.num_processes}
        (tmp / STATE).write_text(json.dumps(info, indent=1))
        _fsync_file(tmp / STATE)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. Ctrl-C right after a periodic save)
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints; returns what was deleted."""
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[:-keep]] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def load_checkpoint(
    accelerator,
    path: str | Path,
    load_weights: Callable[[Path], None],
    optimizer,
    scheduler,
    generators: dict[str, torch.Generator],
) -> TrainState:
    """Restore weights, optimizer, scheduler, scaler and this process's RNG; returns the state."""
    path = Path(path)
    info = json.loads((path / STATE).read_text())
    saved_procs = info.pop("num_processes", 1)
    if saved_procs != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {saved_procs} process(es); resuming with {accelerator.num_processes} "
            "would change the data order and batch size, so it would not be the same run"
        )
    state = TrainState(**info)
    load_weights(path / WEIGHTS)
    optimizer.load_state_dict(_load(path / "optimizer.pt"))
    scheduler.load_state_dict(_load(path / "scheduler.pt"))
    if accelerator.scaler is not None:
        if not (path / "scaler.pt").is_file():
            raise ValueError(f"{path} has no fp16 scaler state; it was not saved with mixed_precision=fp16")
        accelerator.scaler.load_state_dict(_load(path / "scaler.pt"))
    set_rng_state(_load(path / f"rng-{accelerator.process_index}.pt"), generators)
    return state
