"""Splitting a batch over processes started by torchrun: each image once, one merged report.

Every process plans the same sorted job list (so resuming skips the same done images everywhere),
takes every ``world``-th job from its ``rank``, runs it on its own device (``cuda:LOCAL_RANK`` when
CUDA is there) and hands its results to process 0, which writes the report. An image's output
depends only on the image and the seed, never on the process that ran it, so the files are those
of a single-process run. Several machines join through torchrun's rendezvous (``--nnodes``,
``--rdzv-endpoint``); the results travel over gloo, which needs no GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started (rank 0 of 1 when run alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the merged report and prints the summary."""
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device of this process: ``auto`` or ``cuda`` become this process's own GPU under torchrun."""
        if self.size > 1 and requested in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def share(self, jobs: Sequence[T]) -> list[T]:
        """This process's jobs: every ``size``-th one from ``rank`` (the sorted plan is the same everywhere)."""
        return list(jobs[self.rank::self.size])

    def gather(self, items: list[T]) -> list[T]:
        """Every process's items, on process 0 (in rank order); other processes get an empty list."""
        if self.size == 1:
            return list(items)
        import torch.distributed as dist

        gathered: list[list[T]] | None = [[] for _ in range(self.size)] if self.is_main else None
        dist.gather_object(items, gathered, dst=0)
        return [item for part in gathered or [] for item in part]


def current_world() -> World:
    """The torchrun world from its environment variables, joining its gloo group; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))
