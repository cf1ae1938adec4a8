"""Quality against network calls of each sampler: one trained U-Net, held-out pairs, a markdown table.

Every image of every ``--data`` folder (LQ/ + GT/) is restored with each sampler at each number of
network calls (seed 0, no tiling), scored on the 8-bit result as ``derain bench`` scores (PSNR, SSIM,
and both on BT.601 Y, no border crop), and averaged; the rainy input itself is scored as a first
row. Samplers this checkout does not have are skipped with a note. An output with a NaN or an
infinity is not scored: its row says how many images were non-finite.

    python benchmarks/sampler_table.py --unet RUN/best/unet.safetensors --data HELDOUT1 HELDOUT2 \
        [--calls 1,2,5,10,20,50,100] [--samplers posterior,sde,ode,mr] [--limit 6,4] [--crop 256] \
        [--threads 1] [--json table.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from derain_cli.data import PairedFolder
from derain_cli.imageio import read_image, to_uint8
from derain_cli.metrics import score_pair
from derain_cli.pipeline import DerainPipeline, SampleOptions
from derain_cli.resolve import ModelSpec, load
from derain_cli.sde import SAMPLERS

METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")


def int_list(text: str) -> list[int]:
    """'1,2,5' as [1, 2, 5]."""
    return [int(part) for part in text.split(",") if part]


def centre_crop(rgb: torch.Tensor, size: int | None) -> torch.Tensor:
    """The centre size x size crop of a [1, 3, H, W] tensor (the whole image when smaller or None)."""
    if size is None:
        return rgb
    height, width = rgb.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return rgb[..., top:top + size, left:left + size]


def held_out_pairs(folders: list[Path], limits: list[int] | None, crop: int | None) -> list[dict]:
    """The first ``limits[i]`` pairs of each folder as {'set', 'name', 'lq', 'gt'} (tensors in 0..1)."""
    pairs = []
    for i, folder in enumerate(folders):
        found = PairedFolder(folder / "LQ", folder / "GT").pairs
        limit = None if not limits else limits[min(i, len(limits) - 1)]
        for lq_path, gt_path in found[:limit]:
            pairs.append({"set": folder.name, "name": lq_path.name,
                          "lq": centre_crop(read_image(lq_path).rgb, crop),
                          "gt": centre_crop(read_image(gt_path).rgb, crop)})
    return pairs


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (one call = one U-Net evaluation of the batch)."""

    def __init__(self, denoiser) -> None:
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(*args, **kwargs)


def mean_row(label: str, sampler: str | None, calls: int | None, rows: list[dict]) -> dict:
    """Means of the scored images' metrics and the median seconds, with the non-finite count."""
    finite = [row for row in rows if row["finite"]]
    summary = {"label": label, "sampler": sampler, "calls": calls, "images": len(rows),
               "non_finite": len(rows) - len(finite)}
    for key in METRICS:
        summary[key] = statistics.fmean(row[key] for row in finite) if finite else None
    summary["seconds"] = statistics.median(row["seconds"] for row in rows) if rows else None
    summary["per_set_psnr_y"] = {
        name: statistics.fmean(row["psnr_y"] for row in finite if row["set"] == name)
        for name in sorted({row["set"] for row in finite})}
    summary["rows"] = rows
    return summary


def score_rows(pairs: list[dict], restore) -> list[dict]:
    """Restore and score every pair; ``restore(lq)`` returns the output tensor and its call count."""
    rows = []
    for pair in pairs:
        start = time.perf_counter()
        out, calls = restore(pair["lq"])
        seconds = time.perf_counter() - start
        row = {"set": pair["set"], "name": pair["name"], "calls": calls, "seconds": seconds,
               "finite": bool(torch.isfinite(out).all())}
        if row["finite"]:
            row.update(score_pair(to_uint8(out), to_uint8(pair["gt"])))
        rows.append(row)
    return rows


def sampler_restore(pipeline: DerainPipeline, sampler: str, calls: int):
    """A ``restore(lq)`` for score_rows: the pipeline with this sampler, ``calls`` steps, seed 0, untiled."""
    options = SampleOptions(steps=calls, sampler=sampler, seed=0, tile=None)
    network = DerainPipeline.denoiser.__get__(pipeline)

    def restore(lq: torch.Tensor) -> tuple[torch.Tensor, int]:
        counter = CountingDenoiser(network)
        pipeline.denoiser = counter  # the pipeline samples with self.denoiser: count its calls
        try:
            return pipeline.restore(lq, options), counter.calls
        finally:
            del pipeline.denoiser

    return restore


def fmt(value: float | None, digits: int) -> str:
    """A table cell: the value rounded, or a dash."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(table: list[dict]) -> str:
    """The summary rows as a markdown table."""
    sets = sorted({name for row in table for name in row["per_set_psnr_y"]})
    head = ["sampler", "calls", "PSNR", "SSIM", "PSNR_Y", "SSIM_Y", *[f"PSNR_Y {s}" for s in sets], "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        if row["non_finite"] == row["images"]:
            cells = [row["label"], str(row["calls"]), f"non-finite ({row['non_finite']}/{row['images']})"]
            cells += [""] * (len(head) - 4) + [fmt(row["seconds"], 2)]
        else:
            label = row["label"] + (f" ({row['non_finite']}/{row['images']} non-finite)" if row["non_finite"] else "")
            cells = [label, "-" if row["calls"] is None else str(row["calls"]),
                     fmt(row["psnr"], 2), fmt(row["ssim"], 4), fmt(row["psnr_y"], 2), fmt(row["ssim_y"], 4),
                     *[fmt(row["per_set_psnr_y"].get(s), 2) for s in sets], fmt(row["seconds"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Build the table, print it as markdown and write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", type=Path, required=True, help="unet.safetensors with its unet.json beside")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="held-out folders with LQ/ and GT/")
    parser.add_argument("--calls", type=int_list, default=[1, 2, 5, 10, 20, 50, 100])
    parser.add_argument("--samplers", default="posterior,sde,ode,mr")
    parser.add_argument("--limit", type=int_list, default=None,
                        help="first N pairs of each folder (one number, or one per --data folder)")
    parser.add_argument("--crop", type=int, default=None, help="score centre crops of this size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load(ModelSpec(unet=args.unet), device="cpu", precision="fp32")
    pipeline = loaded.pipeline
    pairs = held_out_pairs(args.data, args.limit, args.crop)
    notes = []
    table = [mean_row("rainy input", None, None, score_rows(pairs, lambda lq: (lq, 0)))]
    for sampler in args.samplers.split(","):
        if sampler not in SAMPLERS:
            notes.append(f"sampler {sampler!r} skipped: this checkout has {list(SAMPLERS)}")
            continue
        for calls in args.calls:
            row = mean_row(sampler, sampler, calls, score_rows(pairs, sampler_restore(pipeline, sampler, calls)))
            table.append(row)
            print(f"{sampler} {calls}: PSNR_Y {fmt(row['psnr_y'], 2)}, {fmt(row['seconds'], 2)} s/image, "
                  f"network calls {sorted({r['calls'] for r in row['rows']})}", flush=True)
    images = sorted({(pair["set"], pair["name"]) for pair in pairs})
    print(f"\n{loaded.description}; sde {pipeline.sde.config}; prediction {pipeline.prediction}; "
          f"{len(images)} images ({', '.join(f'{s}/{n}' for s, n in images)}); crop {args.crop}; "
          f"{args.threads} thread(s)\n")
    print(markdown(table))
    for note in notes:
        print(f"\nnote: {note}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"unet": str(args.unet), "sde": pipeline.sde.config, "prediction": pipeline.prediction,
                  "crop": args.crop, "threads": args.threads, "torch": torch.__version__,
                  "images": [f"{s}/{n}" for s, n in images], "notes": notes, "table": table}
        args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
