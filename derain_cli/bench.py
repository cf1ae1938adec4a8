"""Benchmark a model on paired folders: restore, save, and score PSNR/SSIM on RGB and Y."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from derain_cli.errors import DerainError
from derain_cli.imageio import read_image, to_uint8, write_image, write_text_atomic
from derain_cli.jobs import scan_images
from derain_cli.metrics import finite_or_none, score_pair
from derain_cli.pairing import pair_files
from derain_cli.pipeline import Restorer, SampleOptions
from derain_cli.sde import StepCallback

METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")


@dataclass
class BenchReport:
    """Per-image scores, their means, and the files that found no partner."""

    images: list[dict] = field(default_factory=list)
    unpaired_inputs: list[str] = field(default_factory=list)
    unpaired_gts: list[str] = field(default_factory=list)
    crop_border: int = 0
    notes: list[str] = field(default_factory=list)

    settings: dict = field(default_factory=dict)  # model, sampling, device: what the numbers depend on

    @property
    def columns(self) -> list[str]:
        """The score columns present (metrics, then LPIPS and seconds when measured)."""
        return [k for k in (*METRICS, "lpips", "seconds") if self.images and k in self.images[0]]

    @property
    def mean(self) -> dict[str, float]:
        """Mean of each column over the images."""
        return {k: float(np.mean([img[k] for img in self.images])) for k in self.columns}

    def rows(self, per_image: bool = False) -> list[list[str]]:
        """Table rows (image name, then the columns formatted): one per image if asked, then the mean."""
        rows = [[img["name"], *(_fmt(img[k]) for k in self.columns)] for img in self.images] if per_image else []
        if self.images:
            rows.append(["mean", *(_fmt(self.mean[k]) for k in self.columns)])
        return rows

    def as_dict(self) -> dict:
        """The JSON report: settings, images, mean, and the files that found no partner (strict JSON)."""
        return _json_safe({"settings": self.settings, "images": self.images, "mean": self.mean,
                           "crop_border": self.crop_border, "unpaired_inputs": self.unpaired_inputs,
                           "unpaired_gts": self.unpaired_gts, "notes": self.notes})

    def write_json(self, path: Path) -> None:
        """Write the JSON report atomically."""
        write_text_atomic(path, json.dumps(self.as_dict(), indent=2) + "\n")

    def write_csv(self, path: Path) -> None:
        """Write the per-image scores as CSV, atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["name", "gt", *self.columns], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.images)
        write_text_atomic(path, buffer.getvalue())


def _fmt(value: float) -> str:
    """A score for the table: 4 decimals, inf for identical images."""
    return "inf" if value == float("inf") else f"{value:.4f}"


def _json_safe(data):
    """Replace infinite scores (identical images) by null, which JSON can hold."""
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_json_safe(v) for v in data]
    return finite_or_none(data) if isinstance(data, float) else data


def load_lpips() -> tuple[Callable | None, str | None]:
    """LPIPS (AlexNet) if the ``lpips`` package and its weights are available offline."""
    try:
        import lpips  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None, "LPIPS skipped: the lpips package is not installed"
    try:
        model = lpips.LPIPS(net="alex", verbose=False).eval()
    except (OSError, RuntimeError) as error:
        return None, f"LPIPS skipped: its weights are not available offline ({type(error).__name__})"

    def score(a: np.ndarray, b: np.ndarray) -> float:
        ta, tb = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1 for x in (a, b))
        with torch.no_grad():
            return float(model(ta, tb))

    return score, None


def restorer_settings(restorer: Restorer | None, description: str | None, options: SampleOptions | None) -> dict:
    """What a bench's numbers depend on: model, sampling (the model's defaults spelled out), device, version."""
    from derain_cli import __version__

    if restorer is None:
        return {"model": None, "device": "n/a (score only)", "derain_version": __version__}
    options = options or SampleOptions()
    card = restorer.card
    cascade = getattr(restorer, "cascade", None)
    tile = options.tile if options.tile != "auto" else (card.tile if card.tile is not None else "auto (free memory)")
    return {"model": description, "steps": options.steps or card.steps or card.sde.T,
            "sampler": options.sampler or card.sampler, "seed": options.seed,
            "passes": cascade.passes if cascade is not None else 1,
            "repeat_above": list(cascade.repeat_above) if cascade is not None and cascade.repeat_above else None,
            "precision": str(restorer.dtype).removeprefix("torch."), "device": str(restorer.device),
            "tile": tile, "tile_overlap": options.tile_overlap, "ensemble": options.ensemble,
            "derain_version": __version__}


def _grid(strip: list[np.ndarray], labels: list[str], path: Path) -> None:
    """Save input | output | ground truth side by side as one PNG, each under its label (PIL's default font)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line = max(font.getbbox(text)[3] for label in labels for text in label.splitlines()) + 2
    band = line * max(len(label.splitlines()) for label in labels) + 4
    gap = 4
    height, width = strip[0].shape[0], strip[0].shape[1]
    canvas = Image.new("RGB", (3 * width + 2 * gap, band + height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, label) in enumerate(zip(strip, labels)):
        left = i * (width + gap)
        canvas.paste(Image.fromarray(panel), (left, band))
        draw.multiline_text((left + 2, 2), label, fill="black", font=font, spacing=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def check_pair_sizes(pairs: list[tuple[Path, Path]]) -> None:
    """Raise DerainError naming the first input whose ground truth has another size (and how many more)."""
    mismatched = []
    for src, gt_path in pairs:
        (h, w), (gt_h, gt_w) = read_image(src).size, read_image(gt_path).size
        if (h, w) != (gt_h, gt_w):
            mismatched.append(f"{src} is {w}x{h} but its ground truth {gt_path} is {gt_w}x{gt_h}")
    if mismatched:
        more = f" ({len(mismatched) - 1} more pair(s) differ in size)" if len(mismatched) > 1 else ""
        raise DerainError(f"{mismatched[0]}{more}; a score needs images of one size")


def run_bench(in_dir: Path, gt_dir: Path, pipeline: Restorer | None, options: SampleOptions,
              out_dir: Path | None = None, crop_border: int = 0, grid_dir: Path | None = None,
              with_lpips: bool = True, on_image: Callable[[dict], None] | None = None,
              callback: StepCallback | None = None) -> BenchReport:
    """Restore (or, without a pipeline, just score) every input that pairs with a ground truth."""
    try:
        pairs, lone_in, lone_gt = pair_files(scan_images(in_dir), scan_images(gt_dir))
    except ValueError as error:  # ambiguous names
        raise DerainError(str(error)) from None
    report = BenchReport(unpaired_inputs=[p.name for p in lone_in], unpaired_gts=[p.name for p in lone_gt],
                         crop_border=crop_border)
    check_pair_sizes(pairs)  # before restoring anything: a mismatch is knowable up front
    lpips_fn, note = load_lpips() if with_lpips else (None, None)
    if note:
        report.notes.append(note)
    for src, gt_path in pairs:
        image, gt = read_image(src), read_image(gt_path)
        start = time.perf_counter()
        if pipeline is None:
            restored = image.rgb
        else:
            restored = pipeline.restore(image.rgb, options, callback).cpu()
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                write_image(out_dir / f"{src.stem}.png", restored, like=image)
        seconds = time.perf_counter() - start
        output, truth = to_uint8(restored), to_uint8(gt.rgb)
        row = {"name": src.name, "gt": gt_path.name, **score_pair(output, truth, crop_border)}
        if pipeline is not None:
            row["seconds"] = seconds
        if lpips_fn is not None:
            row["lpips"] = lpips_fn(output, truth)
        if grid_dir is not None:
            rainy = to_uint8(image.rgb)
            before = score_pair(rainy, truth, crop_border)["psnr_y"]
            labels = [f"input\nPSNR_Y {before:.2f} dB", f"output\nPSNR_Y {row['psnr_y']:.2f} dB", "ground truth"]
            _grid([rainy, output, truth], labels, grid_dir / f"{src.stem}.png")
        report.images.append(row)
        if on_image is not None:
            on_image(row)
    return report
