"""Several processes on one job: `accelerate launch` / `torchrun` / a scheduler start N copies of
`lafr restore`, each takes its share of the items and the device its launcher gave it.

Why no process group: items are independent files, so the split needs only each process's rank
and the world size, which every launcher puts in the environment (RANK, WORLD_SIZE,
LOCAL_RANK; accelerate sets them too). The split is over the item list every process builds
the same way (sorted folder listings, the command line's order) and is round-robin by position:
every item goes to exactly one process, and an item's output path is computed from the whole
list before the split, so the files written are the ones a single process would write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessSlot:
    """This process's place in the job: rank of world_size, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ProcessSlot":
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", env.get("LOCAL_RANK", "0")))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ValueError(
                f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got RANK={env.get('RANK')!r} "
                f"WORLD_SIZE={env.get('WORLD_SIZE')!r} LOCAL_RANK={env.get('LOCAL_RANK')!r}"
            ) from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world} (LOCAL_RANK={local})")
        return cls(rank, world, local)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def take(self, items: Sequence[T]) -> list[T]:
        """This process's items: positions rank, rank + world_size, ... of `items`."""
        return list(items[self.rank :: self.world_size])

    def default_device(self) -> str:
        """cuda:LOCAL_RANK when CUDA is here (one GPU per process), else the CPU."""
        if torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}" if self.distributed else "cuda"
        return "cpu"

    def prefix(self) -> str:
        """'[rank 1/4] ' before each log line when several processes share the terminal."""
        return f"[rank {self.rank}/{self.world_size}] " if self.distributed else ""
