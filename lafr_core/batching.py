"""Run a batched function in chunks, halving the chunk on out-of-memory.

All faces of all images go through one forward when they fit (DESIGN §3); when they do not,
the chunk is halved and the failed chunk retried, down to `min_chunk`, and only then is the
error re-raised. Host-free: the caller names its OOM exception types and passes duck-typed
hooks (`before_chunk` for interruption checks, `after_chunk` for progress), as
comfy.utils.tiled_scale takes a pbar.
"""

from __future__ import annotations

from typing import Callable

import torch

# torch.cuda.OutOfMemoryError is torch.OutOfMemoryError on torch >= 2.5 and also exists on the
# torch 2.1 / 2.3 that A1111 and Forge ship (torch.OutOfMemoryError does not). The one default
# for every host that names no OOM exception of its own.
DEFAULT_OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)


def run_in_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    chunk: int | None = None,
    oom_errors: tuple[type[BaseException], ...] = DEFAULT_OOM_ERRORS,
    min_chunk: int = 1,
    before_chunk: Callable[[], None] | None = None,
    after_chunk: Callable[[int], None] | None = None,
    on_oom: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """fn over batch[i:i+chunk] for all i, concatenated. `after_chunk(n_done)` after each chunk,
    `on_oom(new_chunk)` when halving (free caches there). chunk None = the whole batch.

    `on_oom` runs only after the except block has ended: until then the exception's traceback
    holds the failed chunk's frames and every tensor they allocated, so emptying the cache inside
    it would free nothing (ComfyUI's VAE.encode defers its tiled retry for the same reason)."""
    total = batch.shape[0]
    if total == 0:
        raise ValueError("run_in_chunks got an empty batch")
    size = max(min_chunk, min(chunk or total, total))
    outputs, start = [], 0
    while start < total:
        if before_chunk is not None:
            before_chunk()
        out_of_memory = False
        try:
            out = fn(batch[start : start + size])
        except oom_errors:
            if size <= min_chunk:
                raise
            out_of_memory = True  # the retry waits until the traceback (and its tensors) is gone
        if out_of_memory:
            size = max(min_chunk, size // 2)
            if on_oom is not None:
                on_oom(size)
            continue
        outputs.append(out)
        start += out.shape[0]
        if after_chunk is not None:
            after_chunk(start)
    return torch.cat(outputs)
