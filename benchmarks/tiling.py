"""Tiled versus untiled restoration of the same image with the same seed.

    python benchmarks/tiling.py --unet WEIGHTS.safetensors IMAGE [--tile 128 --overlap 32 --steps 10]

Prints the PSNR between the two outputs, their mean and max absolute difference (0-255 scale),
and each output's PSNR against a ground truth when --gt is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from derain_cli.imageio import read_image, to_uint8
from derain_cli.metrics import psnr, score_pair
from derain_cli.pipeline import SampleOptions
from derain_cli.resolve import ModelSpec, load


def main() -> None:
    """Restore once whole and once tiled, then compare."""
    parser = argparse.ArgumentParser()
    parser.add_argument("image", type=Path)
    parser.add_argument("--unet", type=Path, required=True)
    parser.add_argument("--gt", type=Path)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline = load(ModelSpec(unet=args.unet), device="cpu", passes=1).restorer
    lq = read_image(args.image).rgb
    steps = args.steps or pipeline.options().steps
    whole = to_uint8(pipeline.restore(lq, SampleOptions(steps=steps, tile=None)))
    tiled = to_uint8(pipeline.restore(lq, SampleOptions(steps=steps, tile=args.tile, tile_overlap=args.overlap)))
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    print(f"{args.image.name} {lq.shape[-1]}x{lq.shape[-2]}, tile {args.tile}, overlap {args.overlap}, {steps} steps")
    print(f"tiled vs untiled: PSNR {psnr(whole, tiled):.2f} dB, mean |diff| {diff.mean():.3f}, max |diff| {diff.max()}")
    if args.gt:
        truth = to_uint8(read_image(args.gt).rgb)
        for name, out in (("untiled", whole), ("tiled", tiled)):
            scores = score_pair(out, truth)
            print(f"{name:>8} vs GT: PSNR_Y {scores['psnr_y']:.2f} dB, SSIM_Y {scores['ssim_y']:.4f}")


if __name__ == "__main__":
    main()
