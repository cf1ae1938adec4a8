"""Seconds per sampler step of the full-size universal-ir U-Net at 320x480 on this machine.

Random weights in the universal-ir architecture (nf=64, ch_mult=[1,2,4,8], DA-CLIP context 512):
the timing does not depend on the weights' values. One step = one U-Net call + one posterior update.

    python benchmarks/step_time.py [--threads 2] [--repeats 5] [--height 320 --width 480]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from derain_cli.devices import keep_freed_memory
from derain_cli.sde import IRSDE
from derain_cli.unet import ConditionalUNet


def main() -> None:
    """Time sampler steps and print the median wall and CPU seconds."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--plain-malloc", action="store_true",
                        help="Do not keep freed memory in the heap (the CLI does keep it).")
    args = parser.parse_args()
    if not args.plain_malloc:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    unet = ConditionalUNet(nf=64, ch_mult=[1, 2, 4, 8], context_dim=512, use_degra_context=True,
                           use_image_context=True).to(device).eval()
    sde = IRSDE(max_sigma=50, T=100)
    mu = torch.rand(1, 3, args.height, args.width, device=device)
    x = sde.noise_state(mu, torch.Generator().manual_seed(0))
    context = {k: torch.randn(1, 512, device=device) for k in ("text_context", "image_context")}
    wall, cpu = [], []
    with torch.no_grad():
        for i in range(args.repeats + 1):
            t = 100 - i
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                noise = unet(x, mu, torch.tensor([t], device=device), **context).float()
            x = sde.step(x, mu, noise, t)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call warms up allocators and kernels
                wall.append(time.perf_counter() - start_wall)
                cpu.append(time.process_time() - start_cpu)
    params = sum(p.numel() for p in unet.parameters())
    print(f"universal-ir U-Net ({params / 1e6:.1f} M parameters), {args.width}x{args.height}, {device}, "
          f"{args.precision}, "
          f"{args.threads} thread(s), {args.repeats} steps, "
          f"{'plain malloc' if args.plain_malloc else 'freed memory kept (as the CLI)'}")
    print(f"seconds per step: median wall {statistics.median(wall):.2f}, median CPU {statistics.median(cpu):.2f}")


if __name__ == "__main__":
    main()
