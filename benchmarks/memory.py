"""Peak memory of restoring a 1 MP and a 16 MP image with tiling (tiny random U-Net, CPU).

Each measurement runs in its own process and reports the peak resident set size (ru_maxrss)
above the process's size just before sampling, next to the bytes of the full-image buffers the
sampler must hold (state, input, noise, blended prediction and weights). Usage:

    python benchmarks/memory.py            # 1 MP and 16 MP, tile 512, one sampler step
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch


def measure(megapixels: float, tile: int | None, steps: int) -> dict:
    """Restore a random image of ``megapixels`` and report peak memory growth."""
    from derain_cli.pipeline import DerainPipeline, SampleOptions
    from derain_cli.sde import IRSDE
    from derain_cli.unet import ConditionalUNet

    torch.set_num_threads(1)  # OpenMP threads spin badly on a shared 2-core machine
    torch.manual_seed(0)
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)  # a 4:3 frame
    height = int(megapixels * 1e6 / width)
    unet = ConditionalUNet(nf=8, ch_mult=[1, 2], context_dim=None, use_degra_context=False)
    pipeline = DerainPipeline(unet, IRSDE(max_sigma=10))
    lq = torch.rand(1, 3, height, width)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pipeline.restore(lq, SampleOptions(steps=steps, tile=tile, tile_overlap=32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    image_bytes = lq.numel() * 4
    return {"megapixels": round(height * width / 1e6, 2), "size": f"{width}x{height}", "tile": tile,
            "peak_growth_mb": round((peak - before) / 2**20, 1),
            "image_buffer_mb": round(image_bytes / 2**20, 1),
            "growth_in_image_buffers": round((peak - before) / image_bytes, 2)}


def main() -> None:
    """Run each case in a fresh process and print a table."""
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        mp, tile, steps = float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        print(json.dumps(measure(mp, None if tile == "none" else int(tile), steps)))
        return
    cases = [(1, "none"), (1, "512"), (16, "512")]
    rows = []
    for mp, tile in cases:
        done = subprocess.run([sys.executable, __file__, "--one", str(mp), tile, "1"],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'image':>14} {'tile':>5} {'peak growth MB':>15} {'image buffer MB':>16} {'growth / buffer':>16}")
    for r in rows:
        print(f"{r['size']:>14} {str(r['tile']):>5} {r['peak_growth_mb']:>15} {r['image_buffer_mb']:>16} "
              f"{r['growth_in_image_buffers']:>16}")


if __name__ == "__main__":
    main()
