"""The `derain` command line: parses options, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional, get_args

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from derain_cli import __version__
from derain_cli.card import ENSEMBLE_SIZES, FAST_CALLS, MIN_TILE, PRECISIONS, SAMPLERS, SCHEDULES
from derain_cli.errors import DerainError, UsageError

def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A string Enum of ``values``, which Typer shows and checks as choices."""
    return Enum(name, {value: value for value in values}, type=str)


SamplerChoice, ScheduleChoice = _choices("Sampler", SAMPLERS), _choices("Schedule", SCHEDULES)
PrecisionChoice = _choices("Precision", ("auto", *PRECISIONS))

HELP_OPTIONS = ["-h", "--help"]
app = typer.Typer(help="Remove rain from photographs with IR-SDE diffusion and DA-CLIP.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": HELP_OPTIONS, "show_default": True})
weights_app = typer.Typer(help="List, download, verify and convert model weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages stay one line, whatever the width

# -- options shared by run, batch and bench: declared once, spliced into each command ---------

ManifestOpt = Annotated[Optional[Path], typer.Option("--manifest", envvar="DERAIN_MANIFEST", help="Use this weights manifest instead of the bundled one.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Use cached weights only (also HF_HUB_OFFLINE=1).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")]
QualityOpt = Annotated[Optional[int], typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality (default 95).")]


@dataclass
class ModelArgs:
    """Which model to run, where and how precisely."""

    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Model from the manifest; auto = universal if cached, else the bundled one.")] = "auto"
    manifest: ManifestOpt = None
    unet: Annotated[Optional[Path], typer.Option("--unet", help="U-Net checkpoint file (.pth/.pt/.safetensors); overrides --model.")] = None
    daclip: Annotated[Optional[Path], typer.Option("--daclip", help="DA-CLIP checkpoint file, for a U-Net given with --unet.")] = None
    device: DeviceOpt = "auto"
    precision: Annotated[PrecisionChoice, typer.Option("--precision", help="auto: the model's, else fp16 on CUDA and fp32 elsewhere.")] = "auto"
    passes: Annotated[str, typer.Option("--passes", metavar="N|auto", help="Runs of the model on its own output: auto (the model's; the bundled one runs again on heavy rain only) or N for every image.")] = "auto"
    max_sigma: Annotated[Optional[float], typer.Option("--max-sigma", help="SDE noise level (0-255 scale), only for a bare --unet file.")] = None
    schedule: Annotated[Optional[ScheduleChoice], typer.Option("--schedule", help="SDE schedule, only for a bare --unet file.")] = None
    eps: Annotated[Optional[float], typer.Option("--eps", help="SDE end-point tolerance, only for a bare --unet file.")] = None
    offline: OfflineOpt = False
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the U-Net(s): slow first images (compiling each new size), faster after; for long CUDA batches.")] = False
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch (default: torch's, at most the CPUs this process may use); 1 next to a busy process.")] = None

    def pass_count(self) -> int | None:
        """--passes as a number, or None for the model's own."""
        if self.passes == "auto":
            return None
        if not (self.passes.isdigit() and int(self.passes) >= 1):
            raise UsageError(f"--passes {self.passes!r}: expected auto or a number of at least 1")
        return int(self.passes)


@dataclass
class SamplingArgs:
    """How to sample."""

    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampler steps (default: the model's).")] = None
    sampler: Annotated[Optional[SamplerChoice], typer.Option("--sampler", help="Default: the model's (posterior for the published ones).")] = None
    seed: SeedOpt = 0
    tile: Annotated[str, typer.Option("--tile", metavar="PX|auto|0", help="Tile size in pixels, auto (the model's, else the largest that fits free memory) or 0 (no tiling).")] = "auto"
    tile_overlap: Annotated[int, typer.Option("--tile-overlap", min=0, help="Overlap of neighbouring tiles in pixels.")] = 32
    ensemble: Annotated[int, typer.Option("--ensemble", metavar="1|2|4", help="Average each network call over 1, 2 (+ left-right mirror) or 4 (+ upside-down, both) mirror images; N times slower.")] = 1
    fast: Annotated[bool, typer.Option("--fast", help=f"The model's fast path: MaRS at {FAST_CALLS} network calls for the published models (their default is 100 posterior steps).")] = False
    mr: Annotated[Optional[list[str]], typer.Option("--mr", help="A MaRS setting KEY=VALUE (repeatable), for --sampler mr or --fast: solver=ode|sde, parameterization=data|noise, order=1|2, lambda_min=-5, time_schedule=linspace|linear-lambda, thresholding=true, denoise_last=true.")] = None

    def options(self):
        """The library's SampleOptions (None and auto: the model's own choice)."""
        from derain_cli.pipeline import SampleOptions

        if self.ensemble not in ENSEMBLE_SIZES:
            raise UsageError(f"--ensemble {self.ensemble}: expected one of {', '.join(map(str, ENSEMBLE_SIZES))}")
        if self.fast and (self.steps is not None or self.sampler is not None):
            raise UsageError("--fast chooses the sampler and steps: give --fast or --steps/--sampler, not both")
        if self.mr and not (self.fast or self.sampler == "mr"):
            raise UsageError("--mr settings need --sampler mr or --fast")
        return SampleOptions(steps=self.steps, sampler=self.sampler, seed=self.seed, tile=_tile(self.tile),
                             tile_overlap=self.tile_overlap, ensemble=self.ensemble, fast=self.fast,
                             mr=_mars_options(self.mr) if self.mr else None)


def _mars_options(settings: list[str]):
    """Parse --mr KEY=VALUE settings into MarsOptions, checking keys and values."""
    from dataclasses import fields as dataclass_fields

    from derain_cli.mars import MarsOptions

    kinds = {f.name: f.type for f in dataclass_fields(MarsOptions)}
    values: dict[str, Any] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or key not in kinds:
            raise UsageError(f"--mr {setting!r}: expected KEY=VALUE with KEY one of {', '.join(kinds)}")
        kind = kinds[key] if isinstance(kinds[key], str) else kinds[key].__name__
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(f"expected true or false, got {text!r}")
                values[key] = text.lower() in ("true", "1", "yes")
            else:
                values[key] = int(text) if kind == "int" else float(text) if kind == "float" else text
        except ValueError as error:
            raise UsageError(f"--mr {setting}: {error}") from None
    try:
        return MarsOptions(**values)
    except ValueError as error:
        raise UsageError(f"--mr: {error}") from None


def _tile(value: str) -> int | str | None:
    """Parse --tile: a size in pixels, ``auto`` or 0/none."""
    if value.lower() == "auto":
        return "auto"
    if value.lower() in ("0", "none", "off"):
        return None
    if not value.isdigit():
        raise UsageError(f"--tile {value!r}: not a tile size; use a number of pixels, auto or 0")
    if int(value) < MIN_TILE:
        raise UsageError(f"--tile {value}: too small; use at least {MIN_TILE} pixels")
    return int(value)


def with_options(func: Callable) -> Callable:
    """Add the fields of the dataclass-typed parameters (ModelArgs, SamplingArgs) as options of ``func``."""
    signature = inspect.signature(func, eval_str=True)
    groups = {name: p.annotation for name, p in signature.parameters.items() if p.annotation in (ModelArgs, SamplingArgs)}
    own = [p for name, p in signature.parameters.items() if name not in groups]
    spliced = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                 annotation=typing.get_type_hints(group, include_extras=True)[f.name])
               for group in groups.values() for f in fields(group)]

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: _plain(kwargs.pop(f.name)) for f in fields(group)})
        return func(**kwargs)

    command.__signature__ = signature.replace(parameters=own + spliced)  # type: ignore[attr-defined]
    return command


def _plain(value: Any) -> Any:
    """A choice's string (Typer hands choices over as Enum members)."""
    return value.value if isinstance(value, Enum) else value


def _refuse_unsupported_sampling(args: ModelArgs, sampling: SamplingArgs) -> None:
    """Check --steps/--sampler/--fast against a manifest model's card before torch is even imported."""
    if args.unet is not None or not (sampling.steps or sampling.sampler or sampling.fast):
        return  # a checkpoint's card is checked when it is read, still before its weights
    from derain_cli.weights import load_manifest, pick_auto_model, resolve_model

    manifest = load_manifest(args.manifest)
    name = pick_auto_model(manifest)[0] if args.model == "auto" else args.model
    resolve_model(manifest, name).card.check_sampling(sampling.sampler, sampling.steps, sampling.fast)


def _load(args: ModelArgs, sampling: SamplingArgs, quiet: bool):
    """Check the sampling options against the model's card, build the restorer, say which model runs."""
    if args.daclip is not None and args.unet is None:
        raise UsageError("--daclip needs --unet (a model from the manifest brings its own)")
    _refuse_unsupported_sampling(args, sampling)  # before torch is imported
    from derain_cli.devices import set_threads
    from derain_cli.resolve import ModelSpec, load

    set_threads(args.threads)  # before any model work: torch fixes its thread pools on first use
    spec = ModelSpec(model=args.model, manifest=args.manifest, unet=args.unet, daclip=args.daclip,
                     max_sigma=args.max_sigma, schedule=args.schedule, eps=args.eps, offline=args.offline)
    options = sampling.options()
    loaded = load(spec, device=args.device, precision=args.precision, passes=args.pass_count(),
                  steps=options.steps, sampler=options.sampler, fast=options.fast)
    if args.compile:
        loaded.restorer.compile()
    for note in loaded.notes:
        if note.kind == "warning":
            err.print(f"[bold yellow]warning:[/] {note.text}", highlight=False)
        elif not quiet:
            err.print(f"[dim]{note.text}[/]", highlight=False)
    if not quiet:
        r = loaded.restorer
        err.print(f"Using {loaded.description} on {r.device} ({str(r.dtype).removeprefix('torch.')})", highlight=False)
    return loaded, options


@contextmanager
def _progress(quiet: bool) -> Iterator[Progress | None]:
    """A rich progress display on stderr, or nothing with --quiet."""
    if quiet:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        yield progress


def _step_callback(progress: Progress | None):
    """A sampler callback advancing a 'steps' bar."""
    if progress is None:
        return None
    task = progress.add_task("steps", total=None)
    return lambda i, n: progress.update(task, completed=i, total=n)


def _version(value: bool) -> None:
    """--version: print the version and stop."""
    if value:
        out.print(f"derain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors (also after the command).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """derain: remove rain from photographs."""


# -- run / batch ------------------------------------------------------------------------------

@app.command()
@with_options
def run(
    rainy: Annotated[Path, typer.Argument(help="Rainy input image.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the clean image (format from the extension).")],
    model: ModelArgs, sampling: SamplingArgs,
    quality: QualityOpt = None, quiet: QuietOpt = False,
) -> None:
    """Derain one image."""
    from derain_cli.imageio import check_output_path, read_image
    from derain_cli.jobs import derain_image

    if rainy.is_dir():
        raise DerainError(f"{rainy}: is a folder; `derain batch` derains a folder")
    if not rainy.is_file():
        raise DerainError(f"{rainy}: no such file")
    check_output_path(output, source=rainy)  # before any model work: the model may take minutes
    _refuse_unsupported_sampling(model, sampling)  # before torch is imported (reading the image imports it)
    image = read_image(rainy)
    loaded, options = _load(model, sampling, quiet)
    start = time.perf_counter()
    with _progress(quiet) as progress:
        derain_image(loaded.restorer, image, output, options, quality, _step_callback(progress))
    if not quiet:
        err.print(f"Wrote {output} in {time.perf_counter() - start:.1f} s")


@app.command()
@with_options
def batch(
    in_dir: Annotated[Path, typer.Argument(help="Folder of rainy images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    model: ModelArgs, sampling: SamplingArgs,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Include sub-folders (mirrored in the output).")] = False,
    suffix: Annotated[str, typer.Option("--suffix", help="Appended to each output file name.")] = "",
    ext: Annotated[Optional[str], typer.Option("--ext", help="Output format extension (default: the input's).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images whose output exists.")] = False,
    report: Annotated[Optional[Path], typer.Option("--json", help="Write a JSON report here.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Restore up to N consecutive images of one size in one call (each gets the noise of a single run); for GPUs.")] = 1,
    quality: QualityOpt = None, quiet: QuietOpt = False,
) -> None:
    """Derain every image in a folder; keeps going past bad files and resumes where it stopped.

    Ctrl-C stops after the current image (group of --batch-size images), writes the --json report of the images done and exits 130;
    the same command continues.
    """
    from derain_cli.distributed import current_world
    from derain_cli.jobs import JobResult, check_jobs, iter_batch, plan_batch

    world = current_world()  # under torchrun: this process's share of the images, on its own device
    plan = plan_batch(in_dir, output, recursive, suffix, ext, overwrite)
    check_jobs(plan.todo, report)  # every output problem is found before any model work
    quiet = quiet or not world.is_main
    if not quiet and plan.left_out:
        err.print(f"{len(plan.left_out)} image(s) in {in_dir} are outputs of this batch, not inputs", highlight=False)
    if not quiet and plan.skipped:
        err.print(f"{len(plan.skipped)} image(s) already done (use --overwrite to redo them)")
    todo = world.share(plan.todo)
    results = [JobResult(str(j.src), str(j.dst), "skipped") for j in plan.skipped] if world.is_main else []
    if todo:
        model.device = world.device(model.device)
        loaded, options = _load(model, sampling, quiet)
        with _progress(quiet) as progress:
            images = progress.add_task("images", total=len(todo)) if progress else None

            def start(job) -> None:
                if progress is not None:
                    progress.update(images, description=str(job.src.relative_to(in_dir)), refresh=True)

            try:
                for result in iter_batch(loaded.restorer, todo, options, quality, on_start=start,
                                         callback=_step_callback(progress), batch_size=batch_size):
                    results.append(result)
                    if progress is not None:
                        progress.advance(images)
                    if result.status == "failed" and not quiet:
                        err.print(f"[red]failed:[/] {result.error}", highlight=False)
            except KeyboardInterrupt:
                if world.is_main:  # each process keeps the images it finished; only the first reports
                    _write_batch_report(report, results, interrupted=True)
                done = sum(r.status != "skipped" for r in results)
                err.print(f"interrupted after {done} of {len(todo)} image(s)"
                          + (f"; report in {report}" if report else "") + "; the same command continues",
                          highlight=False)
                raise typer.Exit(130) from None
    results = world.gather(results)
    if not world.is_main:
        return
    if world.size > 1:
        results.sort(key=lambda r: r.input)
    _write_batch_report(report, results, interrupted=False)
    failed = [r for r in results if r.status == "failed"]
    ok = sum(r.status == "ok" for r in results)
    err.print(f"{ok} restored, {len(plan.skipped)} skipped, {len(failed)} failed")
    for result in failed:
        err.print(f"  {result.error}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _write_batch_report(path: Path | None, results: list, interrupted: bool) -> None:
    """Write the batch's JSON report (each image's result; whether Ctrl-C stopped it) if asked for."""
    import json

    from derain_cli.imageio import write_text_atomic

    if path is not None:
        data = {"interrupted": interrupted, "images": [r.as_dict() for r in results]}
        write_text_atomic(path, json.dumps(data, indent=2) + "\n")


# -- bench / synth ----------------------------------------------------------------------------

@app.command()
@with_options
def bench(
    in_dir: Annotated[Path, typer.Argument(help="Folder of rainy inputs (or of restored images with --score-only).")],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of clean ground truths, paired by file name.")],
    model: ModelArgs, sampling: SamplingArgs,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Save the restored images here (PNG).")] = None,
    score_only: Annotated[bool, typer.Option("--score-only", help="Score the images in IN_DIR as they are.")] = False,
    crop_border: Annotated[int, typer.Option("--crop-border", min=0, help="Pixels cropped from each border before scoring (the reference test.py uses 4).")] = 0,
    per_image: Annotated[bool, typer.Option("--per-image", help="Print a row per image.")] = False,
    report: Annotated[Optional[Path], typer.Option("--json", help="Write the scores as JSON.")] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write the per-image scores as CSV.")] = None,
    grid: Annotated[Optional[Path], typer.Option("--grid", help="Write input | output | ground-truth strips here.")] = None,
    no_lpips: Annotated[bool, typer.Option("--no-lpips", help="Skip LPIPS even when it is available.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Restore paired images and score PSNR / SSIM on RGB and on Y (BT.601), MATLAB-style."""
    from derain_cli.bench import restorer_settings, run_bench

    for folder in (in_dir, gt):
        if not folder.is_dir():
            raise DerainError(f"{folder}: not a folder")
    restorer, options, description = None, None, None
    if not score_only:
        loaded, options = _load(model, sampling, quiet)
        restorer, description = loaded.restorer, loaded.description
    settings = restorer_settings(restorer, description, options)
    device_name = settings["device"]
    with _progress(quiet) as progress:
        images = progress.add_task("images", total=None) if progress else None
        result = run_bench(in_dir, gt, restorer, options, output, crop_border, grid, not no_lpips,
                           on_image=lambda row: progress.advance(images) if progress else None,
                           callback=_step_callback(progress))
    result.settings.update(settings)
    table = Table(title=f"{len(result.images)} image(s), crop_border={crop_border}, device {device_name}")
    for name in ("image", *result.columns):
        table.add_column(name, justify="left" if name == "image" else "right")
    for row in result.rows(per_image):
        table.add_row(*row)
    out.print(table)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False)
    for label, names in (("inputs without ground truth", result.unpaired_inputs),
                         ("ground truths without input", result.unpaired_gts)):
        if names:
            err.print(f"[yellow]{len(names)} {label}:[/] {', '.join(names)}", highlight=False)
    if report is not None:
        result.write_json(report)
    if csv_path is not None:
        result.write_csv(csv_path)
    if not result.images:
        raise DerainError(f"no image in {in_dir} pairs with one in {gt}")


@app.command()
def synth(
    clean_dir: Annotated[Path, typer.Argument(help="Folder of clean photographs.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder; gets LQ/ and GT/.")],
    preset: Annotated[str, typer.Option("--preset", help="Rain: light, medium; heavy, downpour or torrent (three looks of Rain100H); storm (denser than heavy).")] = "heavy",
    seed: SeedOpt = 0,
    copies: Annotated[int, typer.Option("--copies", min=1, help="Rainy versions per clean image.")] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Render synthetic rain on clean photos to make LQ/GT training pairs."""
    from derain_cli.synth import PRESETS, synth_folder

    if preset not in PRESETS:
        raise UsageError(f"--preset {preset!r}: unknown preset; choose from {sorted(PRESETS)}")
    with _progress(quiet) as progress:
        task = progress.add_task("pairs", total=None) if progress else None
        pairs = synth_folder(clean_dir, output, preset, seed, copies,
                             on_pair=lambda lq, gt: progress.advance(task) if progress else None)
    err.print(f"Wrote {len(pairs)} pairs to {output}/LQ and {output}/GT")


# -- train ------------------------------------------------------------------------------------

@app.command()
def train(
    out_dir: Annotated[Path, typer.Option("--output", "-o", "--out", help="Run folder: checkpoints, log.csv, loss.png (--out: old name).")],
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Folder with LQ/ and GT/ (repeatable).")] = None,
    lq: Annotated[Optional[list[Path]], typer.Option("--lq", help="Folder of degraded images (repeatable, with --gt).")] = None,
    gt: Annotated[Optional[list[Path]], typer.Option("--gt", help="Folder of clean images matching --lq.")] = None,
    synth: Annotated[Optional[list[Path]], typer.Option("--synth", help="Folder of clean photos to render rain on, new rain for every sample (repeatable).")] = None,
    synth_preset: Annotated[Optional[list[str]], typer.Option("--synth-preset", help="Rain preset for --synth, as NAME or NAME:COPIES (copies of each photo per epoch; repeatable; default heavy).")] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation folder with LQ/ and GT/ (PSNR_Y, keeps best/).")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="Fine-tune these U-Net weights (file or manifest name).")] = None,
    daclip: Annotated[Optional[str], typer.Option("--daclip", help="Condition on frozen DA-CLIP (file or manifest name).")] = None,
    no_daclip: Annotated[bool, typer.Option("--no-daclip", help="Train the plain IR-SDE U-Net (the default).")] = False,
    nf: Annotated[int, typer.Option("--nf", min=4, help="Base channel count of a new U-Net.")] = 64,
    ch_mult: Annotated[str, typer.Option("--ch-mult", help="Channel multipliers of a new U-Net, e.g. 1,2,4,8.")] = "1,2,4,8",
    max_sigma: Annotated[float, typer.Option("--max-sigma", help="SDE stationary noise (0-255 scale).")] = 50.0,
    sde_steps: Annotated[int, typer.Option("--sde-steps", "--T", min=1, help="SDE time steps T (--T: old name).")] = 100,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, linear or constant.")] = "cosine",
    eps: Annotated[float, typer.Option("--eps", help="SDE end-point tolerance.")] = 0.005,
    prediction: Annotated[str, typer.Option("--prediction", help="What the U-Net learns to output: noise (the reference's objective) or x0 (the clean image, L1; trains much faster).")] = "noise",
    t_min: Annotated[int, typer.Option("--t-min", min=1, help="Train on times t_min..T only (1: all, the reference).")] = 1,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 100_000,
    stop_after: Annotated[Optional[int], typer.Option("--stop-after", min=1, help="Stop (saved) after this step; --resume continues to --steps.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Global batch size.")] = 4,
    patch_size: Annotated[int, typer.Option("--patch-size", min=16, help="Training crop size.")] = 128,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, cosine schedule).")] = 2e-4,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Linear warm-up steps.")] = 500,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Max gradient norm (0: off).")] = 1.0,
    ema_decay: Annotated[float, typer.Option("--ema-decay", help="EMA decay of the exported weights.")] = 0.995,
    ckpt_every: Annotated[int, typer.Option("--ckpt-every", min=1, help="Checkpoint every N steps.")] = 1000,
    keep: Annotated[int, typer.Option("--keep", min=0, help="Step-numbered checkpoints kept, the newest (last/ and best/ are always kept).")] = 3,
    val_every: Annotated[int, typer.Option("--val-every", min=1, help="Validate every N steps.")] = 1000,
    val_steps: Annotated[Optional[int], typer.Option("--val-steps", min=1, help="Sampler steps for validation (default 10: cheap; a noise model scores higher with --sde-steps, an x0 model may use 1); when given, kept in unet.json as the weights' default.")] = None,
    val_sampler: Annotated[Optional[SamplerChoice], typer.Option("--val-sampler", help="Sampler for validation (default posterior); when given, kept in unet.json as the weights' default.")] = None,
    val_crop: Annotated[Optional[int], typer.Option("--val-crop", min=16, help="Score centre crops of this size.")] = None,
    val_limit: Annotated[Optional[int], typer.Option("--val-limit", min=1, help="Score only the first N pairs.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Data loader processes.")] = 2,
    seed: SeedOpt = 0, device: DeviceOpt = "auto", manifest: ManifestOpt = None, offline: OfflineOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output bit-for-bit (same settings).")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train or fine-tune the IR-SDE U-Net on paired images (the reference's maximum-likelihood loss, or x0).

    SIGINT (Ctrl-C) or SIGTERM stops after the current step or sampler step of validation, saves
    last/ and exits 130 (143 for SIGTERM); --resume continues.
    """
    from derain_cli.train import TrainConfig, TrainingStopped, train as run_training

    if daclip and no_daclip:
        raise typer.BadParameter("--daclip and --no-daclip exclude each other")
    if len(lq or []) != len(gt or []):
        raise typer.BadParameter("give as many --gt folders as --lq folders")
    try:
        mults = tuple(int(m) for m in ch_mult.split(","))
    except ValueError:
        raise typer.BadParameter(f"--ch-mult {ch_mult!r}: expected integers separated by commas") from None
    presets = [_preset_copies(text) for text in synth_preset or ["heavy"]]
    config = TrainConfig(
        out=out_dir, data=list(data or []), pairs=list(zip(lq or [], gt or [])), synth=list(synth or []),
        synth_presets=presets, val=val, nf=nf, ch_mult=mults,
        from_weights=_weights_file(from_, manifest, offline), daclip=_weights_file(daclip, manifest, offline),
        max_sigma=max_sigma, T=sde_steps, schedule=schedule, eps=eps, prediction=prediction, t_min=t_min, steps=steps, stop_after=stop_after,
        batch_size=batch_size, patch_size=patch_size, lr=lr, warmup_steps=warmup, grad_clip=grad_clip or None, ema_decay=ema_decay,
        ckpt_every=ckpt_every, keep_checkpoints=keep, val_every=val_every, val_steps=val_steps, val_sampler=_plain(val_sampler), val_crop=val_crop, val_limit=val_limit,
        seed=seed, device=device, num_workers=workers, resume=resume,
    )
    with _progress(quiet) as progress:
        task = progress.add_task("training", total=steps) if progress else None

        def show(info) -> None:
            if progress is None:
                return
            text = f"loss {info.loss:.4f} lr {info.lr:.2e} {info.its:.2f} it/s"
            if info.best_psnr_y is not None:
                text += f" best PSNR_Y {info.best_psnr_y:.2f}"
            progress.update(task, completed=info.step, description=text)

        try:
            result = run_training(config, progress=show, notify=None if quiet else err.print)
        except TrainingStopped as stopped:
            err.print(f"stopped at step {stopped.step} (saved in {stopped.folder}); --resume continues",
                      highlight=False)
            raise typer.Exit(stopped.exit_code) from None
    err.print(f"Weights: {result}")


def _preset_copies(text: str) -> tuple[str, int]:
    """Parse --synth-preset NAME or NAME:COPIES."""
    from derain_cli.synth import PRESETS

    name, _, copies = text.partition(":")
    if name not in PRESETS or not (copies or "1").isdigit() or int(copies or "1") < 1:
        raise typer.BadParameter(f"--synth-preset {text!r}: expected NAME or NAME:COPIES with NAME one of "
                                 f"{', '.join(sorted(PRESETS))} and COPIES at least 1")
    return name, int(copies or "1")


def _weights_file(name_or_path: str | None, manifest: Path | None, offline: bool) -> Path | None:
    """A checkpoint path, or the file of a manifest weights name (downloaded if needed)."""
    if name_or_path is None:
        return None
    if Path(name_or_path).exists():
        return Path(name_or_path)
    from derain_cli.weights import load_manifest, resolve_weights

    return resolve_weights(load_manifest(manifest), name_or_path, offline=offline)


# -- weights ----------------------------------------------------------------------------------

@weights_app.command("list")
def weights_list(manifest: ManifestOpt = None) -> None:
    """Tables of the models (the names --model takes) and of their weights files: size, source, downloaded or not."""
    from derain_cli.errors import WeightsError
    from derain_cli.weights import list_entries, list_models, load_manifest, pick_auto_model

    m = load_manifest(manifest)
    try:
        auto = pick_auto_model(m)[0]
    except WeightsError:  # a manifest with neither the universal nor the bundled model: no default
        auto = None
    models = Table("model", "weights", "downloaded", "description", title="models (--model NAME)")
    for row in list_models(m):
        name = f"{row.name} [dim](auto)[/]" if row.name == auto else row.name
        models.add_row(name, ", ".join(row.weights), "yes" if row.cached else "no", row.description)
    files = Table("weights", "size", "source", "downloaded", "sha256", title="weights files")
    for row in list_entries(m):
        size = f"{row.size / 1e6:,.1f} MB" if row.size else "?"
        files.add_row(row.name, size, row.source, "yes" if row.cached else "no",
                      "pinned" if row.sha256_pinned else "[yellow]unverified[/]")
    out.print(models)
    out.print(files)


@weights_app.command("download")
def weights_download(names: Annotated[list[str], typer.Argument(help="Weights or model names.")],
                     manifest: ManifestOpt = None, offline: OfflineOpt = False) -> None:
    """Download weights (or all weights of a model) at their pinned revision and check sha256."""
    from derain_cli.weights import load_manifest, resolve_weights, weights_names

    m = load_manifest(manifest)
    for name in weights_names(m, names):
        path = resolve_weights(m, name, offline=offline)
        out.print(f"{name}: {path}")


@weights_app.command("verify")
def weights_verify(names: Annotated[Optional[list[str]], typer.Argument(help="Weights or model names (default: all cached).")] = None,
                   manifest: ManifestOpt = None) -> None:
    """Check the sha256 of cached weights files."""
    from derain_cli.weights import get_weights, is_cached, load_manifest, verify, weights_names

    m = load_manifest(manifest)
    selected = weights_names(m, names) if names else [n for n, e in m.weights.items() if is_cached(e)]
    if not selected:
        out.print("no weights are downloaded yet: nothing to verify (see `derain weights list`)")
    bad = 0
    for name in selected:
        ok, message = verify(get_weights(m, name))
        bad += not ok
        out.print(f"{'[green]ok[/]' if ok else '[red]FAIL[/]'} {name}: {message}")
    if bad:
        raise typer.Exit(1)


@weights_app.command("path")
def weights_path(names: Annotated[list[str], typer.Argument(help="Weights or model names (a model: its U-Net, DA-CLIP and further passes' U-Net files, one a line).")],
                 manifest: ManifestOpt = None) -> None:
    """Print the local path of downloaded (and verified) weights files, one a line; never downloads."""
    from derain_cli.weights import load_manifest, local_weights, weights_names

    m = load_manifest(manifest)
    asked: dict[str, str] = {}  # each weights name, once, and the name given for it
    for name in names:
        for weights in weights_names(m, [name]):
            asked.setdefault(weights, name)
    paths = [local_weights(m, weights, wanted=name) for weights, name in asked.items()]  # all found, then printed
    for path in paths:
        print(path)


@weights_app.command("convert")
def weights_convert(
    src: Annotated[Path, typer.Argument(help="Checkpoint (.pth/.pt pickle or .safetensors).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Store weights in half precision.")] = False,
) -> None:
    """Convert a checkpoint to safetensors (drops optimizer state) keeping its card: JSON beside it and inside it.

    The card of SRC (the JSON beside it) comes along, so DST runs as SRC does; a further passes'
    U-Net it names is converted too, as DST_repeat.safetensors.
    """
    from derain_cli.checkpoints import convert_checkpoint

    if dst.suffix != ".safetensors":
        raise UsageError(f"{dst}: the output must end in .safetensors")
    converted = convert_checkpoint(src, dst, fp16=fp16)
    for path, what in zip(converted.files, (f"{converted.kind} weights", "their config", "further passes' U-Net")):
        out.print(f"Wrote {path} ({what})", soft_wrap=True, highlight=False)


# -- help: plain placeholders (PATH, N, TEXT, a|b), none for flags, arguments in capitals --------

_TYPE_LABELS = {Path: "PATH", int: "N", float: "X", str: "TEXT"}


def _type_label(param: Any) -> str:
    """The placeholder help shows for a parameter's value ("" for a flag, which takes none)."""
    if getattr(param, "is_flag", False):
        return ""
    described = param.type_descriptor
    if described.is_choice:
        return "|".join(str(_plain(choice)) for choice in described.choices)
    kind = get_args(described.annotation)[0] if described.is_list else described.annotation
    return _TYPE_LABELS.get(kind, getattr(kind, "__name__", "VALUE").upper())


def _argument_usage(param: Any) -> Callable[[], str]:
    """An argument's name on the usage line: IN_DIR (required), [NAMES]... (optional, repeatable)."""
    name = param.name.upper()
    name = name if param.required else f"[{name}]"
    return lambda: name + ("..." if param.nargs != 1 else "")


def readable_help(command: Any) -> Any:
    """Give every parameter of ``command`` and its sub-commands a plain placeholder in --help.

    Typer labels values with Python types (``<bool>`` for a flag, ``<list[Path]>``) and required
    arguments with braces (``{rainy}``); options with their own ``metavar`` keep it.
    """
    help_option = command.get_help_option(command.context_class(command, help_option_names=HELP_OPTIONS))
    for param in [*command.params, *filter(None, [help_option])]:
        label = _type_label(param)
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx, label=label: label
            param._usage_display_name = _argument_usage(param)
        elif param.metavar is None:
            param.metavar = label
    for sub in getattr(command, "commands", {}).values():
        readable_help(sub)
    return command


# -- entry point: one table turns every expected error into one line and an exit code ---------

def _kinds(error: BaseException) -> set[str]:
    """Names of the classes of ``error`` (Typer's click errors are matched by name: it may vendor click)."""
    return {kind.__name__ for kind in type(error).__mro__}


EXIT_CODES: tuple[tuple[type[BaseException] | str, int], ...] = (
    (UsageError, 2), ("UsageError", 2), (DerainError, 1), ("ClickException", 1), (OSError, 1),
)


def exit_code(error: BaseException) -> int | None:
    """The exit code of an expected error (2: usage, 1: a failed job), None for a bug."""
    for kind, code in EXIT_CODES:
        if isinstance(error, kind) if isinstance(kind, type) else kind in _kinds(error):
            return code
    return None


def _message(error: BaseException) -> str:
    """The one-line message of an expected error."""
    if "ClickException" in _kinds(error):
        return error.format_message()  # type: ignore[attr-defined]
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print library warnings (e.g. unverified weights) as one line, without source locations."""
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


def main() -> None:
    """Run the CLI; expected failures become one line on stderr and their exit code (see EXIT_CODES)."""
    import logging
    import warnings

    debug = "--debug" in sys.argv[1:] or os.environ.get("DERAIN_DEBUG", "").lower() in ("1", "true", "yes")
    args = [a for a in sys.argv[1:] if a != "--debug"]  # --debug is welcome anywhere on the line
    from derain_cli.allocator import keep_freed_memory  # not derain_cli.devices: --help must not import torch

    warnings.showwarning = _show_warning
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # e.g. alpha dropped for JPEG
    keep_freed_memory()
    try:
        command = readable_help(typer.main.get_command(app))
        code = command(args=args, prog_name="derain", standalone_mode=False)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - re-raised unless it is an expected error
        if "Abort" in _kinds(error):  # Ctrl-C, as click reports it
            err.print("interrupted")
            sys.exit(130)
        code = exit_code(error)
        if code is None or debug:
            raise
        err.print(f"[bold red]error:[/] {_message(error)}", highlight=False, soft_wrap=True)
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else 0)
