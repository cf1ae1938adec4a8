"""Choosing the compute device and the numeric precision."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from derain_cli.allocator import keep_freed_memory  # noqa: F401 - torch-free, so that `derain --help` stays fast
from derain_cli.card import PRECISIONS
from derain_cli.errors import DerainError, UsageError

DTYPES: dict[str, torch.dtype] = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))


def _mps_available() -> bool:
    """Whether Apple's Metal backend can be used."""
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str = "auto") -> tuple[torch.device, str | None]:
    """The torch device for ``auto|cpu|cuda[:N]|mps``, and a warning when it falls back to the CPU."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), None
        if _mps_available():
            return torch.device("mps"), None
        return torch.device("cpu"), None
    if name == "cpu":
        return torch.device("cpu"), None
    if name == "cuda" or name.startswith("cuda:"):
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise DerainError(f"bad device {name!r}: {err}") from None
        if not torch.cuda.is_available():
            return torch.device("cpu"), "CUDA is not available here: falling back to the CPU (slow)"
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DerainError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
        return device, None
    if name == "mps":
        if not _mps_available():
            return torch.device("cpu"), "MPS is not available here: falling back to the CPU (slow)"
        return torch.device("mps"), None
    raise UsageError(f"unknown device {name!r}; choose from auto, cpu, cuda, cuda:N, mps")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype: ``auto`` is fp16 on CUDA (mixed precision) and fp32 elsewhere."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in DTYPES:
        raise UsageError(f"unknown precision {precision!r}; choose from auto, {', '.join(PRECISIONS)}")
    return DTYPES[precision]


def usable_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota))) if quota else max(1, count)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs a cgroup quota allows (``cpu.max`` of cgroup v2, else v1's cfs quota), None if unlimited."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def set_threads(count: int | None = None) -> int:
    """Set torch's CPU threads (intra- and inter-op) to ``count``; None caps torch's default at ``usable_cpus()``.

    Returns the thread count now in use. The default never raises torch's own count (which follows
    OMP_NUM_THREADS), it only lowers it where a quota or affinity leaves fewer CPUs.
    """
    if count is not None and count < 1:
        raise UsageError(f"--threads {count}: expected a number of at least 1")
    count = count or min(torch.get_num_threads(), usable_cpus())
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
    try:
        if count != torch.get_num_interop_threads():
            torch.set_num_interop_threads(count)
    except RuntimeError:  # only settable before the first inter-op parallel work of the process
        pass
    return count


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for tensors on ``device``: CUDA's free memory, else the system's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
