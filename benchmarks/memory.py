"""Peak memory of restoring a 1 MP and a 16 MP image with tiling.

Each measurement runs in its own process. On the CPU it reports the growth of the peak resident
set size (ru_maxrss) during sampling; on CUDA the peak of torch's allocator. Next to it stands
the size of one full-image float buffer: with tiling only such buffers (state, input, noise,
blended prediction) should grow with the image. Usage:

    python benchmarks/memory.py                       # tiny U-Net (nf=8) on the CPU
    python benchmarks/memory.py --device cuda --full  # universal-ir architecture on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

TINY = {"nf": 8, "ch_mult": [1, 2], "context_dim": None, "use_degra_context": False}
FULL = {"nf": 64, "ch_mult": [1, 2, 4, 8], "context_dim": 512, "use_degra_context": True,
        "use_image_context": True}


def measure(megapixels: float, tile: int | None, steps: int, device: str, full: bool) -> dict:
    """Sample ``steps`` steps on a random image of ``megapixels`` and report peak memory growth."""
    from derain_cli.devices import keep_freed_memory
    from derain_cli.sde import IRSDE
    from derain_cli.tiling import TiledDenoiser
    from derain_cli.unet import ConditionalUNet

    keep_freed_memory()
    torch.set_num_threads(1)  # OpenMP threads spin badly on a shared 2-core machine
    torch.manual_seed(0)
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)  # a 4:3 frame
    height = int(megapixels * 1e6 / width)
    unet = ConditionalUNet(**(FULL if full else TINY)).to(device).eval()
    context = {}
    if full:
        context = {k: torch.randn(1, 512, device=device) for k in ("text_context", "image_context")}
    cuda = device.startswith("cuda")

    def denoiser(x, mu, t, **ctx):
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            return unet(x, mu, t, **ctx).float()

    lq = torch.rand(1, 3, height, width, device=device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run = denoiser if tile is None else TiledDenoiser(denoiser, tile, 32)
    with torch.no_grad():
        IRSDE(max_sigma=10).sample(run, lq, steps=steps, generator=torch.Generator().manual_seed(0), **context)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    image_bytes = lq.numel() * 4
    return {"size": f"{width}x{height}", "tile": tile, "peak_growth_mb": round((peak - before) / 2**20, 1),
            "image_buffer_mb": round(image_bytes / 2**20, 1),
            "growth_in_image_buffers": round((peak - before) / image_bytes, 2)}


def main() -> None:
    """Run each case in a fresh process and print a table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="universal-ir architecture instead of a tiny U-Net")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--one", nargs=2, metavar=("MP", "TILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mp, tile = float(args.one[0]), None if args.one[1] == "none" else int(args.one[1])
        print(json.dumps(measure(mp, tile, args.steps, args.device, args.full)))
        return
    rows = []
    for mp, tile in ((1, "none"), (1, "512"), (16, "512")):
        command = [sys.executable, __file__, "--one", str(mp), tile, "--device", args.device,
                   "--steps", str(args.steps)] + (["--full"] if args.full else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'image':>14} {'tile':>5} {'peak growth MB':>15} {'image buffer MB':>16} {'growth / buffer':>16}")
    for r in rows:
        print(f"{r['size']:>14} {str(r['tile']):>5} {r['peak_growth_mb']:>15} {r['image_buffer_mb']:>16} "
              f"{r['growth_in_image_buffers']:>16}")


if __name__ == "__main__":
    main()
