"""Restoring image files: one file, or a folder with resumable, failure-tolerant batches."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from derain_cli.errors import DerainError
from derain_cli.imageio import list_images, read_image, write_image
from derain_cli.pipeline import DerainPipeline, SampleOptions
from derain_cli.sde import StepCallback

# Failures that end one image of a batch but not the batch: bad files, full disks, device errors.
PER_IMAGE_ERRORS = (DerainError, OSError, RuntimeError)


@dataclass
class Job:
    """One input file and the output file it becomes."""

    src: Path
    dst: Path


@dataclass
class JobResult:
    """What happened to one job: ``ok``, ``skipped`` (output exists) or ``failed``."""

    input: str
    output: str
    status: str
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict:
        """A JSON-ready dict for the batch report."""
        return asdict(self)


def derain_file(pipeline: DerainPipeline, src: Path, dst: Path, options: SampleOptions,
                quality: int | None = None, callback: StepCallback | None = None) -> None:
    """Read ``src``, restore it and write ``dst`` atomically, keeping alpha, colour profile and EXIF."""
    image = read_image(src)
    restored = pipeline.restore(image.rgb, options, callback)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_image(dst, restored.cpu(), like=image, quality=quality)


def output_path(src: Path, in_dir: Path, out_dir: Path, suffix: str = "", ext: str | None = None) -> Path:
    """Where the restored ``src`` goes: same relative folder under ``out_dir``, optional suffix/ext."""
    relative = src.relative_to(in_dir)
    extension = ext if ext is None or ext.startswith(".") else f".{ext}"
    name = f"{relative.stem}{suffix}{extension or relative.suffix}"
    return out_dir / relative.parent / name


def scan_images(in_dir: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Image files (by extension) in ``in_dir``, sorted, leaving out those under ``exclude``."""
    return [path for path in list_images(in_dir, recursive) if exclude is None or exclude not in path.parents]


def plan_batch(in_dir: Path, out_dir: Path, recursive: bool = False, suffix: str = "",
               ext: str | None = None, overwrite: bool = False) -> tuple[list[Job], list[Job]]:
    """Jobs to run and jobs skipped because their output exists (unless ``overwrite``)."""
    if not in_dir.is_dir():
        raise DerainError(f"{in_dir}: not a folder")
    exclude = out_dir.resolve() if out_dir.resolve() != in_dir.resolve() else None
    sources = scan_images(in_dir, recursive, exclude)
    inputs = {src.resolve() for src in sources}
    todo, skipped = [], []
    for src in sources:
        dst = output_path(src, in_dir, out_dir, suffix, ext)
        if dst.resolve() in inputs:
            raise DerainError(f"{dst}: output would overwrite an input file; use another -o folder or --suffix")
        (todo if overwrite or not dst.exists() else skipped).append(Job(src, dst))
    return todo, skipped


def run_batch(pipeline: DerainPipeline, jobs: Iterable[Job], options: SampleOptions,
              quality: int | None = None, on_start: Callable[[Job], None] | None = None,
              on_done: Callable[[JobResult], None] | None = None,
              callback: StepCallback | None = None) -> list[JobResult]:
    """Run every job, continuing past failures; each result says ok or failed with the reason."""
    results = []
    for job in jobs:
        if on_start is not None:
            on_start(job)
        start = time.perf_counter()
        try:
            derain_file(pipeline, job.src, job.dst, options, quality, callback)
            result = JobResult(str(job.src), str(job.dst), "ok", time.perf_counter() - start)
        except PER_IMAGE_ERRORS as err:
            message = str(err) if isinstance(err, DerainError) else f"{job.src}: {type(err).__name__}: {err}"
            result = JobResult(str(job.src), str(job.dst), "failed", time.perf_counter() - start, message)
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results
