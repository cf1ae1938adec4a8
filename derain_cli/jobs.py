"""Restoring image files: one file, or a folder with resumable, failure-tolerant batches.

A batch is planned in full before any model work: every input, the output it becomes, the
outputs that already exist (skipped unless ``overwrite``), and every problem knowable up front
(two inputs onto one output, an output onto an input, a folder that cannot be written).
Outputs may live inside the input folder, so a rerun must not take them for inputs: with an
output folder inside the input folder (``-o IN/clean``), the images under it are left out; with
the input folder itself (``-o IN``, which needs a ``--suffix``), an image named as another
input's output is taken for that output.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from derain_cli.errors import DerainError, ImageError, UsageError
from derain_cli.imageio import (IMAGE_EXTENSIONS, LoadedImage, check_output_path, check_writable_folder,
                                list_images, read_image, write_image)

if TYPE_CHECKING:  # planning and checking a batch needs no torch: a bad -o is refused in a blink
    from derain_cli.pipeline import DerainPipeline, SampleOptions
    from derain_cli.sde import StepCallback


def per_image_errors() -> tuple[type[BaseException], ...]:
    """Failures that end one image of a batch but not the batch: bad files, full disks, GPU memory.

    Any other error (a RuntimeError from torch, say) is a bug and stops the batch with its traceback.
    """
    import torch

    return (DerainError, OSError, torch.cuda.OutOfMemoryError)


@dataclass
class Job:
    """One input file and the output file it becomes."""

    src: Path
    dst: Path


@dataclass
class BatchPlan:
    """The jobs to run, those skipped (output exists) and the images not taken as inputs."""

    todo: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    left_out: list[Path] = field(default_factory=list)  # earlier outputs found in the input folder


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


def derain_image(pipeline: DerainPipeline, image: LoadedImage, dst: Path, options: SampleOptions,
                 quality: int | None = None, callback: StepCallback | None = None) -> None:
    """Restore a read image and write ``dst`` atomically, keeping alpha, colour profile and EXIF."""
    restored = pipeline.restore(image.rgb, options, callback)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ImageError(f"cannot write {dst}: {err.strerror or err}") from None
    write_image(dst, restored.cpu(), like=image, quality=quality)


def derain_file(pipeline: DerainPipeline, src: Path, dst: Path, options: SampleOptions,
                quality: int | None = None, callback: StepCallback | None = None) -> None:
    """Read ``src``, restore it and write ``dst`` atomically, keeping alpha, colour profile and EXIF."""
    derain_image(pipeline, read_image(src), dst, options, quality, callback)


def output_extension(ext: str | None) -> str | None:
    """``--ext`` as a lower-case suffix with its dot (``png``, ``.PNG`` -> ``.png``); None keeps the input's."""
    if ext is None:
        return None
    suffix = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    if suffix not in IMAGE_EXTENSIONS:
        raise UsageError(f"--ext {ext!r}: not an image extension; choose from "
                         f"{', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))}")
    return suffix


def output_path(src: Path, in_dir: Path, out_dir: Path, suffix: str = "", ext: str | None = None) -> Path:
    """Where the restored ``src`` goes: same relative folder under ``out_dir``, optional suffix/ext."""
    relative = src.relative_to(in_dir)
    extension = ext if ext is None or ext.startswith(".") else f".{ext}"
    name = f"{relative.stem}{suffix}{extension or relative.suffix}"
    return out_dir / relative.parent / name


def scan_images(in_dir: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Image files (by extension) in ``in_dir``, sorted, leaving out those under the folder ``exclude``."""
    images = list_images(in_dir, recursive)
    if exclude is None:
        return images
    excluded = exclude.resolve()
    return [path for path in images if excluded not in path.resolve().parents]


def _no_images(in_dir: Path, recursive: bool, left_out: int) -> DerainError:
    """The error for a batch without inputs, saying where images are if there are any."""
    if left_out:
        return DerainError(f"{in_dir}: no images to restore; the {left_out} found are under the output folder")
    below = [] if recursive else list_images(in_dir, recursive=True)
    if below:
        return DerainError(f"{in_dir}: no images in the folder itself, but {len(below)} in sub-folders; "
                           "add -r (--recursive) to restore them")
    return DerainError(f"{in_dir}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")


def plan_batch(in_dir: Path, out_dir: Path, recursive: bool = False, suffix: str = "",
               ext: str | None = None, overwrite: bool = False) -> BatchPlan:
    """Every job of a batch, those skipped because their output exists (unless ``overwrite``), and why not."""
    extension = output_extension(ext)
    if not in_dir.is_dir():
        raise DerainError(f"{in_dir}: {'not a folder' if in_dir.exists() else 'no such folder'}")
    same_folder = out_dir.resolve() == in_dir.resolve()
    inside = in_dir.resolve() in out_dir.resolve().parents  # e.g. -o IN/clean
    if same_folder and not suffix:
        raise DerainError(f"{out_dir}: is the input folder; without --suffix the outputs would overwrite an input "
                          "file or be taken for inputs on a rerun; add --suffix (e.g. _clean) or use another -o")
    found = list_images(in_dir, recursive)
    sources = scan_images(in_dir, recursive, exclude=out_dir) if inside else found
    kept = set(sources)
    plan = BatchPlan(left_out=[path for path in found if path not in kept])
    if same_folder:  # an image named as another's output is that output, written by an earlier run
        outputs = {output_path(src, in_dir, out_dir, suffix, extension).resolve() for src in sources}
        plan.left_out += [src for src in sources if src.resolve() in outputs]
        sources = [src for src in sources if src.resolve() not in outputs]
    if not sources:
        raise _no_images(in_dir, recursive, len(plan.left_out))
    inputs = {src.resolve() for src in sources}
    claimed: dict[Path, Path] = {}
    for src in sources:
        dst = output_path(src, in_dir, out_dir, suffix, extension)
        key = dst.resolve()
        if key in inputs:
            raise DerainError(f"{dst}: output would overwrite an input file; use another -o folder or --suffix")
        if key in claimed:
            hint = "rename one or leave out --ext" if extension else "rename one"
            raise DerainError(f"{claimed[key]} and {src} would both be written to {dst}; {hint}")
        claimed[key] = src
        (plan.todo if overwrite or not dst.exists() else plan.skipped).append(Job(src, dst))
    return plan


def check_jobs(jobs: Iterable[Job], report: Path | None = None) -> None:
    """Raise unless every output (and the report, if any) can be written; creates nothing."""
    for job in jobs:
        check_output_path(job.dst, job.src)
    if report is not None:
        if report.is_dir():
            raise ImageError(f"cannot write {report}: it is a folder; give the report's file name")
        check_writable_folder(report.parent, report)


def iter_batch(pipeline: DerainPipeline, jobs: Iterable[Job], options: SampleOptions,
               quality: int | None = None, on_start: Callable[[Job], None] | None = None,
               callback: StepCallback | None = None) -> Iterator[JobResult]:
    """Run the jobs one by one, continuing past failures; yields each result (ok or failed with the reason)."""
    for job in jobs:
        if on_start is not None:
            on_start(job)
        start = time.perf_counter()
        try:
            derain_file(pipeline, job.src, job.dst, options, quality, callback)
            result = JobResult(str(job.src), str(job.dst), "ok", time.perf_counter() - start)
        except per_image_errors() as err:
            message = str(err) if isinstance(err, DerainError) else f"{type(err).__name__}: {err}"
            message = message if str(job.src) in message else f"{job.src}: {message}"
            result = JobResult(str(job.src), str(job.dst), "failed", time.perf_counter() - start, message)
        yield result


def run_batch(pipeline: DerainPipeline, jobs: Iterable[Job], options: SampleOptions,
              quality: int | None = None, on_start: Callable[[Job], None] | None = None,
              on_done: Callable[[JobResult], None] | None = None,
              callback: StepCallback | None = None) -> list[JobResult]:
    """Run every job, continuing past failures; each result says ok or failed with the reason."""
    results = []
    for result in iter_batch(pipeline, jobs, options, quality, on_start, callback):
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results
