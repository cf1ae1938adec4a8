"""Seconds per image of the full-size universal-ir U-Net through a sampler, at a given number of calls.

Random weights in the universal-ir architecture (nf=64, ch_mult=[1,2,4,8], DA-CLIP context 512,
both embeddings; the timing does not depend on the weights' values), one untiled image, random
DA-CLIP embeddings (the DA-CLIP encoder, run once per image, is not timed). Samplers this checkout
does not have are skipped with a note.

    python benchmarks/image_time.py [--calls 10,20,100] [--samplers posterior,mr] [--threads 2] \
        [--height 321 --width 481] [--repeats 1] [--json times.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from derain_cli.devices import keep_freed_memory
from derain_cli.sde import IRSDE, SAMPLERS
from derain_cli.unet import ConditionalUNet


def time_image(unet: ConditionalUNet, sde: IRSDE, mu: torch.Tensor, context: dict, sampler: str,
               calls: int) -> tuple[float, float]:
    """Wall and CPU seconds of one seeded restoration of ``mu`` with ``calls`` sampler steps."""
    denoiser = lambda x, lq, t, **c: unet(x, lq, t, **c)  # noqa: E731 - the sampler's calling convention
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    sde.sample(denoiser, mu, steps=calls, sampler=sampler, generator=torch.Generator().manual_seed(0), **context)
    return time.perf_counter() - start_wall, time.process_time() - start_cpu


def main() -> None:
    """Time whole restorations and print the median wall and CPU seconds per image."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="10,20,100")
    parser.add_argument("--samplers", default="posterior,mr")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--height", type=int, default=321)
    parser.add_argument("--width", type=int, default=481)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = ConditionalUNet(nf=64, ch_mult=[1, 2, 4, 8], context_dim=512, use_degra_context=True,
                           use_image_context=True).eval()
    sde = IRSDE(max_sigma=50, T=100)
    mu = torch.rand(1, 3, args.height, args.width)
    context = {k: torch.randn(1, 512) for k in ("text_context", "image_context")}
    print(f"universal-ir U-Net, random weights, {args.width}x{args.height}, cpu fp32, {args.threads} thread(s), "
          f"median of {args.repeats} image(s) after one warm-up call", flush=True)
    with torch.no_grad():
        unet(mu, mu, torch.tensor([100]), **context)  # warm up allocators
        results = []
        for sampler in args.samplers.split(","):
            if sampler not in SAMPLERS:
                print(f"note: sampler {sampler!r} skipped: this checkout has {list(SAMPLERS)}", flush=True)
                continue
            for calls in (int(c) for c in args.calls.split(",")):
                times = [time_image(unet, sde, mu, context, sampler, calls) for _ in range(args.repeats)]
                wall, cpu = statistics.median(w for w, _ in times), statistics.median(c for _, c in times)
                results.append({"sampler": sampler, "calls": calls, "wall_s": wall, "cpu_s": cpu,
                                "repeats": args.repeats})
                print(f"{sampler} {calls} calls: {wall:.1f} s wall, {cpu:.1f} s CPU per image", flush=True)
                if args.json is not None:  # after every row: a run cut short keeps what it measured
                    args.json.write_text(json.dumps({"height": args.height, "width": args.width,
                                                     "threads": args.threads, "torch": torch.__version__,
                                                     "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
