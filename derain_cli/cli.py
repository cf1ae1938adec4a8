"""The `derain` command line: parses options, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from derain_cli.errors import DerainError

app = typer.Typer(help="Remove rain from photographs with IR-SDE diffusion and DA-CLIP.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
weights_app = typer.Typer(help="List, download, verify and convert model weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages stay one line, whatever the width

# -- shared options ---------------------------------------------------------------------------

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model from the manifest; auto = universal if cached, else the bundled one.")]
ManifestOpt = Annotated[Optional[Path], typer.Option("--manifest", envvar="DERAIN_MANIFEST", help="Use this weights manifest instead of the bundled one.")]
UnetOpt = Annotated[Optional[Path], typer.Option("--unet", help="U-Net checkpoint file (.pth/.pt/.safetensors); overrides --model.")]
DaclipOpt = Annotated[Optional[Path], typer.Option("--daclip", help="DA-CLIP checkpoint file, for a U-Net given with --unet.")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampler steps (default: the model's).")]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", help="posterior (reference default), sde or ode.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")]
TileOpt = Annotated[str, typer.Option("--tile", help="Tile size in pixels, auto (the model's, else the largest that fits free memory) or 0 (no tiling).")]
PassesOpt = Annotated[str, typer.Option("--passes", help="Runs of the model on its own output: auto (the model's; the bundled one runs again on heavy rain only) or N for every image.")]
OverlapOpt = Annotated[int, typer.Option("--tile-overlap", min=0, help="Overlap of neighbouring tiles in pixels.")]
EnsembleOpt = Annotated[int, typer.Option("--ensemble", help="Average each network call over 1, 2 (+ left-right mirror) or 4 (+ upside-down, both) mirror images; N times slower.")]
MaxSigmaOpt = Annotated[Optional[float], typer.Option("--max-sigma", help="SDE noise level (0-255 scale) for a bare --unet file.")]
ScheduleOpt = Annotated[Optional[str], typer.Option("--schedule", help="SDE schedule for a bare --unet file: cosine, linear, constant.")]
EpsOpt = Annotated[Optional[float], typer.Option("--eps", help="SDE end-point tolerance for a bare --unet file.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Use cached weights only (also HF_HUB_OFFLINE=1).")]
QualityOpt = Annotated[Optional[int], typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")]


def _debug() -> bool:
    """Whether tracebacks are wanted (--debug anywhere, or DERAIN_DEBUG=1)."""
    return "--debug" in sys.argv or os.environ.get("DERAIN_DEBUG", "").lower() in ("1", "true", "yes")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    """derain: remove rain from photographs."""


def _tile(value: str) -> int | str | None:
    """Parse --tile: a size in pixels, ``auto`` or 0/none."""
    if value.lower() == "auto":
        return "auto"
    if value.lower() in ("0", "none", "off"):
        return None
    try:
        size = int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a tile size; use a number of pixels, auto or 0") from None
    if size < 64:
        raise typer.BadParameter(f"tile size {size} is too small; use at least 64 pixels")
    return size


def _load(model: str, manifest: Path | None, unet: Path | None, daclip: Path | None, device: str,
          precision: str, max_sigma: float | None, schedule: str | None, eps: float | None,
          offline: bool, quiet: bool):
    """Build the pipeline for the shared model options and print which model is used."""
    from derain_cli.resolve import ModelSpec, load

    if daclip is not None and unet is None:
        raise typer.BadParameter("--daclip needs --unet (a model from the manifest brings its own)")
    spec = ModelSpec(model=model, manifest=manifest, unet=unet, daclip=daclip, max_sigma=max_sigma,
                     schedule=schedule, eps=eps, offline=offline)
    loaded = load(spec, device=device, precision=precision)
    for note in loaded.notes:
        if "falling back" in note:
            err.print(f"[bold yellow]warning:[/] {note}")
        elif not quiet:
            err.print(f"[dim]{note}[/]")
    if not quiet:
        p = loaded.pipeline
        err.print(f"Using {loaded.description} on {p.device} ({str(p.dtype).removeprefix('torch.')})")
    return loaded


def _options(loaded, steps: int | None, sampler: str | None, seed: int, tile: str, overlap: int,
             passes: str = "auto", ensemble: int = 1):
    """Sampling options from the flags, falling back to the model's defaults."""
    from derain_cli.ensemble import ENSEMBLE_SIZES

    if ensemble not in ENSEMBLE_SIZES:
        raise typer.BadParameter(f"--ensemble {ensemble}: expected one of {', '.join(map(str, ENSEMBLE_SIZES))}")
    changes = {"seed": seed, "tile_overlap": overlap, "ensemble": ensemble}
    if steps:
        changes["steps"] = steps
    if sampler:
        changes["sampler"] = sampler
    size = _tile(tile)
    if size != "auto":
        changes["tile"] = size
    if passes != "auto":
        if not (passes.isdigit() and int(passes) >= 1):
            raise typer.BadParameter(f"--passes {passes!r}: expected auto or a number of at least 1")
        changes.update(passes=int(passes), repeat_above=None)
    return loaded.options(**changes)


@contextmanager
def _progress(quiet: bool) -> Iterator[Progress | None]:
    """A rich progress display on stderr, or nothing with --quiet."""
    if quiet:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        yield progress


def _step_callback(progress: Progress | None, total_steps: int | None):
    """A sampler callback advancing a 'steps' bar."""
    if progress is None:
        return None
    task = progress.add_task("steps", total=total_steps)

    def callback(i: int, n: int) -> None:
        progress.update(task, completed=i, total=n)

    return callback


# -- run / batch ------------------------------------------------------------------------------

@app.command()
def run(
    rainy: Annotated[Path, typer.Argument(help="Rainy input image.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the clean image (format from the extension).")],
    model: ModelOpt = "auto", manifest: ManifestOpt = None, unet: UnetOpt = None, daclip: DaclipOpt = None,
    steps: StepsOpt = None, sampler: SamplerOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto", tile: TileOpt = "auto", tile_overlap: OverlapOpt = 32, passes: PassesOpt = "auto",
    ensemble: EnsembleOpt = 1,
    max_sigma: MaxSigmaOpt = None, schedule: ScheduleOpt = None, eps: EpsOpt = None,
    offline: OfflineOpt = False, quality: QualityOpt = None, quiet: QuietOpt = False,
) -> None:
    """Derain one image."""
    import time

    from derain_cli.jobs import derain_file

    if rainy.is_dir():
        raise DerainError(f"{rainy}: is a folder; `derain batch` derains a folder")
    if not rainy.is_file():
        raise DerainError(f"{rainy}: no such file")
    loaded = _load(model, manifest, unet, daclip, device, precision, max_sigma, schedule, eps, offline, quiet)
    options = _options(loaded, steps, sampler, seed, tile, tile_overlap, passes, ensemble)
    start = time.perf_counter()
    with _progress(quiet) as progress:
        derain_file(loaded.pipeline, rainy, output, options, quality, _step_callback(progress, options.steps))
    if not quiet:
        err.print(f"Wrote {output} in {time.perf_counter() - start:.1f} s")


@app.command()
def batch(
    in_dir: Annotated[Path, typer.Argument(help="Folder of rainy images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Include sub-folders (mirrored in the output).")] = False,
    suffix: Annotated[str, typer.Option("--suffix", help="Appended to each output file name.")] = "",
    ext: Annotated[Optional[str], typer.Option("--ext", help="Output format extension (default: the input's).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images whose output exists.")] = False,
    report: Annotated[Optional[Path], typer.Option("--json", help="Write a JSON report here.")] = None,
    model: ModelOpt = "auto", manifest: ManifestOpt = None, unet: UnetOpt = None, daclip: DaclipOpt = None,
    steps: StepsOpt = None, sampler: SamplerOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto", tile: TileOpt = "auto", tile_overlap: OverlapOpt = 32, passes: PassesOpt = "auto",
    ensemble: EnsembleOpt = 1,
    max_sigma: MaxSigmaOpt = None, schedule: ScheduleOpt = None, eps: EpsOpt = None,
    offline: OfflineOpt = False, quality: QualityOpt = None, quiet: QuietOpt = False,
) -> None:
    """Derain every image in a folder; keeps going past bad files and resumes where it stopped."""
    from derain_cli.jobs import JobResult, plan_batch, run_batch

    jobs, skipped = plan_batch(in_dir, output, recursive, suffix, ext, overwrite)
    if not quiet and skipped:
        err.print(f"{len(skipped)} image(s) already done (use --overwrite to redo them)")
    results = [JobResult(str(j.src), str(j.dst), "skipped") for j in skipped]
    if jobs:
        loaded = _load(model, manifest, unet, daclip, device, precision, max_sigma, schedule, eps, offline, quiet)
        options = _options(loaded, steps, sampler, seed, tile, tile_overlap, passes, ensemble)
        with _progress(quiet) as progress:
            images = progress.add_task("images", total=len(jobs)) if progress else None

            def done(result: JobResult) -> None:
                if progress is not None:
                    progress.advance(images)
                if result.status == "failed" and not quiet:
                    err.print(f"[red]failed:[/] {result.error}")

            results += run_batch(loaded.pipeline, jobs, options, quality, on_done=done,
                                 callback=_step_callback(progress, options.steps))
    failed = [r for r in results if r.status == "failed"]
    if report is not None:
        _write_json(report, {"images": [r.as_dict() for r in results]})
    ok = sum(r.status == "ok" for r in results)
    err.print(f"{ok} restored, {len(skipped)} skipped, {len(failed)} failed")
    for result in failed:
        err.print(f"  {result.error}")
    if failed:
        raise typer.Exit(1)


def _write_json(path: Path, data: dict) -> None:
    """Write a JSON report atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# -- bench / synth ----------------------------------------------------------------------------

@app.command()
def bench(
    in_dir: Annotated[Path, typer.Argument(help="Folder of rainy inputs (or of restored images with --score-only).")],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of clean ground truths, paired by file name.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Save the restored images here (PNG).")] = None,
    score_only: Annotated[bool, typer.Option("--score-only", help="Score the images in IN_DIR as they are.")] = False,
    crop_border: Annotated[int, typer.Option("--crop-border", min=0, help="Pixels cropped from each border before scoring (the reference test.py uses 4).")] = 0,
    per_image: Annotated[bool, typer.Option("--per-image", help="Print a row per image.")] = False,
    report: Annotated[Optional[Path], typer.Option("--json", help="Write the scores as JSON.")] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write the per-image scores as CSV.")] = None,
    grid: Annotated[Optional[Path], typer.Option("--grid", help="Write input | output | ground-truth strips here.")] = None,
    no_lpips: Annotated[bool, typer.Option("--no-lpips", help="Skip LPIPS even when it is available.")] = False,
    model: ModelOpt = "auto", manifest: ManifestOpt = None, unet: UnetOpt = None, daclip: DaclipOpt = None,
    steps: StepsOpt = None, sampler: SamplerOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto", tile: TileOpt = "auto", tile_overlap: OverlapOpt = 32, passes: PassesOpt = "auto",
    ensemble: EnsembleOpt = 1,
    max_sigma: MaxSigmaOpt = None, schedule: ScheduleOpt = None, eps: EpsOpt = None,
    offline: OfflineOpt = False, quiet: QuietOpt = False,
) -> None:
    """Restore paired images and score PSNR / SSIM on RGB and on Y (BT.601), MATLAB-style."""
    from derain_cli.bench import METRICS, run_bench
    from derain_cli.pipeline import SampleOptions

    for folder in (in_dir, gt):
        if not folder.is_dir():
            raise DerainError(f"{folder}: not a folder")
    pipeline, options, device_name = None, SampleOptions(), "n/a (score only)"
    if not score_only:
        loaded = _load(model, manifest, unet, daclip, device, precision, max_sigma, schedule, eps, offline, quiet)
        options = _options(loaded, steps, sampler, seed, tile, tile_overlap, passes, ensemble)
        pipeline, device_name = loaded.pipeline, str(loaded.pipeline.device)
    with _progress(quiet) as progress:
        images = progress.add_task("images", total=None) if progress else None
        result = run_bench(in_dir, gt, pipeline, options, output, crop_border, grid, not no_lpips,
                           on_image=lambda row: progress.advance(images) if progress else None,
                           callback=_step_callback(progress, options.steps))
    columns = [k for k in (*METRICS, "lpips", "seconds") if result.images and k in result.images[0]]
    table = Table(title=f"{len(result.images)} image(s), crop_border={crop_border}, device {device_name}")
    for name in ("image", *columns):
        table.add_column(name, justify="left" if name == "image" else "right")
    rows = result.images if per_image else []
    for row in rows:
        table.add_row(row["name"], *(_fmt(row[k]) for k in columns))
    if result.images:
        table.add_row("[bold]mean[/]", *(_fmt(result.mean[k]) for k in columns))
    out.print(table)
    for note in result.notes:
        err.print(f"note: {note}")
    for label, names in (("inputs without ground truth", result.unpaired_inputs),
                         ("ground truths without input", result.unpaired_gts)):
        if names:
            err.print(f"[yellow]{len(names)} {label}:[/] {', '.join(names)}")
    data = result.as_dict()
    data["device"] = device_name
    if report is not None:
        _write_json(report, _json_safe(data))
    if csv_path is not None:
        _write_csv(csv_path, result.images, ["name", "gt", *columns])
    if not result.images:
        raise DerainError(f"no image in {in_dir} pairs with one in {gt}")


def _fmt(value: float) -> str:
    """A metric for the table: 4 decimals, inf for identical images."""
    return "inf" if value == float("inf") else f"{value:.4f}"


def _json_safe(data):
    """Replace infinite metrics (identical images) by null, which JSON can hold."""
    from derain_cli.metrics import finite_or_none

    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_json_safe(v) for v in data]
    return finite_or_none(data) if isinstance(data, float) else data


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write per-image rows as CSV."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue())


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
        raise typer.BadParameter(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
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
    val_steps: Annotated[int, typer.Option("--val-steps", min=1, help="Sampler steps for validation, kept in unet.json as the weights' default (10 is cheap; a noise model scores higher with --sde-steps, an x0 model may use 1).")] = 10,
    val_sampler: Annotated[str, typer.Option("--val-sampler", help="Sampler for validation (posterior, sde or ode), kept in unet.json as the weights' default.")] = "posterior",
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
        ckpt_every=ckpt_every, keep_checkpoints=keep, val_every=val_every, val_steps=val_steps, val_sampler=val_sampler, val_crop=val_crop, val_limit=val_limit,
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
    """Table of the weights in the manifest: size, source, cached or not."""
    from derain_cli.weights import list_entries, load_manifest

    table = Table("name", "size", "source", "cached", "sha256")
    for row in list_entries(load_manifest(manifest)):
        size = f"{row.size / 1e6:,.1f} MB" if row.size else "?"
        table.add_row(row.name, size, row.source, "yes" if row.cached else "no",
                      "pinned" if row.sha256_pinned else "[yellow]unverified[/]")
    out.print(table)


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
def weights_path(name: Annotated[str, typer.Argument(help="Weights name.")], manifest: ManifestOpt = None) -> None:
    """Print the local path of a downloaded (and verified) weights file."""
    from derain_cli.weights import load_manifest, resolve_weights

    print(resolve_weights(load_manifest(manifest), name, offline=True, progress=False))


@weights_app.command("convert")
def weights_convert(
    src: Annotated[Path, typer.Argument(help="Checkpoint (.pth/.pt pickle or .safetensors).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Store weights in half precision.")] = False,
) -> None:
    """Convert a checkpoint to safetensors (drops optimizer state) and write its config beside it."""
    from derain_cli.checkpoints import convert_checkpoint

    if dst.suffix != ".safetensors":
        raise typer.BadParameter(f"{dst}: the output must end in .safetensors")
    kind, config_path = convert_checkpoint(src, dst, fp16=fp16)
    out.print(f"Wrote {dst} ({kind}) and {config_path}")


# -- entry point ------------------------------------------------------------------------------

def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print library warnings (e.g. unverified weights) as one line, without source locations."""
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


def main() -> None:
    """Run the CLI; known failures become one line on stderr and exit code 1."""
    import logging
    import warnings

    from derain_cli.devices import keep_freed_memory

    warnings.showwarning = _show_warning
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # e.g. alpha dropped for JPEG
    keep_freed_memory()
    try:
        app()
    except DerainError as error:
        if _debug():
            raise
        err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
