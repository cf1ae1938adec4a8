"""Quality against network calls of each sampler: one trained U-Net, held-out pairs, a markdown table.

Every image of every ``--data`` folder (LQ/ + GT/) is restored with each sampler at each number of
network calls (seed 0, no tiling), scored on the 8-bit result as ``derain bench`` scores (PSNR, SSIM,
and both on BT.601 Y, no border crop), and averaged; the rainy input itself is scored as a first
row. Samplers this checkout does not have are skipped with a note. An output with a NaN or an
infinity is not scored: its row says how many images were non-finite.

    python benchmarks/sampler_table.py --unet RUN/best/unet.safetensors --data HELDOUT1 HELDOUT2 \
        [--calls 1,2,5,10,20,50,100] [--samplers posterior,sde,ode,mr] [--limit 6,4] [--crop 256] \
        [--threads 1] [--json table.json]
    python benchmarks/sampler_table.py --merge A.json B.json [--json table.json]

``--merge`` prints one table from the JSON of runs on the same images (say, one process per sampler);
the JSON is rewritten after every row, so a run cut short keeps the rows it finished.
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
from derain_cli.devices import keep_freed_memory
from derain_cli.errors import NonFiniteError
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
    """Restore and score every pair; ``restore(lq)`` returns the output (None: non-finite) and its call count."""
    rows = []
    for pair in pairs:
        start = time.perf_counter()
        out, calls = restore(pair["lq"])
        seconds = time.perf_counter() - start
        row = {"set": pair["set"], "name": pair["name"], "calls": calls, "seconds": seconds,
               "finite": out is not None and bool(torch.isfinite(out).all())}
        if row["finite"]:
            row.update(score_pair(to_uint8(out), to_uint8(pair["gt"])))
        rows.append(row)
    return rows


def sampler_restore(pipeline: DerainPipeline, sampler: str, calls: int):
    """A ``restore(lq)`` for score_rows: the pipeline with this sampler, ``calls`` steps, seed 0, untiled."""
    options = SampleOptions(steps=calls, sampler=sampler, seed=0, tile=None)
    network = DerainPipeline.denoiser.__get__(pipeline)

    def restore(lq: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        counter = CountingDenoiser(network)
        pipeline.denoiser = counter  # the pipeline samples with self.denoiser: count its calls
        try:
            return pipeline.restore(lq, options), counter.calls
        except NonFiniteError:
            return None, counter.calls
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


def write_json(path: Path | None, report: dict) -> None:
    """Write the report as JSON (nothing without a path)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=float) + "\n")


def merged(paths: list[Path]) -> dict:
    """One report from several runs' JSON: the first one's settings, every run's rows (input row once)."""
    reports = [json.loads(path.read_text()) for path in paths]
    for path, report in zip(paths[1:], reports[1:]):
        if report["images"] != reports[0]["images"] or report["unet"] != reports[0]["unet"]:
            raise SystemExit(f"{path}: other images or weights than {paths[0]}")
    table = reports[0]["table"][:1] + [row for report in reports for row in report["table"][1:]]
    notes = [note for report in reports for note in report["notes"]]
    return {**reports[0], "table": table, "notes": notes, "merged_from": [str(p) for p in paths]}


def print_report(report: dict) -> None:
    """The settings line, the markdown table and the notes."""
    print(f"\nU-Net {report['unet']}; sde {report['sde']}; prediction {report['prediction']}; "
          f"{len(report['images'])} images ({', '.join(report['images'])}); crop {report['crop']}; "
          f"{report['threads']} thread(s)\n")
    print(markdown(report["table"]))
    for note in report["notes"]:
        print(f"\nnote: {note}")


def main() -> None:
    """Build the table, print it as markdown and write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", type=Path, help="unet.safetensors with its unet.json beside")
    parser.add_argument("--data", type=Path, nargs="+", help="held-out folders with LQ/ and GT/")
    parser.add_argument("--calls", type=int_list, default=[1, 2, 5, 10, 20, 50, 100])
    parser.add_argument("--samplers", default="posterior,sde,ode,mr")
    parser.add_argument("--limit", type=int_list, default=None,
                        help="first N pairs of each folder (one number, or one per --data folder)")
    parser.add_argument("--crop", type=int, default=None, help="score centre crops of this size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", help="print one table from these runs' JSON")
    args = parser.parse_args()
    if args.merge:
        report = merged(args.merge)
        print_report(report)
        write_json(args.json, report)
        return
    if args.unet is None or not args.data:
        parser.error("--unet and --data are required (or --merge)")
    keep_freed_memory()  # as the CLI runs
    torch.set_num_threads(args.threads)
    pipeline = load(ModelSpec(unet=args.unet), device="cpu", precision="fp32").restorer
    if not isinstance(pipeline, DerainPipeline):
        parser.error(f"{args.unet}: a cascade of U-Nets; give one U-Net")
    pairs = held_out_pairs(args.data, args.limit, args.crop)
    report = {"unet": str(args.unet), "sde": pipeline.sde.config, "prediction": pipeline.prediction,
              "crop": args.crop, "threads": args.threads, "torch": torch.__version__,
              "images": sorted(f"{pair['set']}/{pair['name']}" for pair in pairs), "notes": [],
              "table": [mean_row("rainy input", None, None, score_rows(pairs, lambda lq: (lq, 0)))]}
    for sampler in args.samplers.split(","):
        if sampler not in SAMPLERS:
            report["notes"].append(f"sampler {sampler!r} skipped: this checkout has {list(SAMPLERS)}")
            continue
        for calls in args.calls:
            row = mean_row(sampler, sampler, calls, score_rows(pairs, sampler_restore(pipeline, sampler, calls)))
            report["table"].append(row)
            write_json(args.json, report)
            print(f"{sampler} {calls}: PSNR_Y {fmt(row['psnr_y'], 2)}, {fmt(row['seconds'], 2)} s/image, "
                  f"network calls {sorted({r['calls'] for r in row['rows']})}", flush=True)
    write_json(args.json, report)
    print_report(report)


if __name__ == "__main__":
    main()
