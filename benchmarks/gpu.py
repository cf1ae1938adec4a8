"""Seconds per image on one device: the reference daclip-uir sampler beside derain's, same weights.

Prepared for a lent GPU (docs/BENCHMARKS.md, "GPU (prepared, not yet run)"); ``--device cpu
--quick`` is its smoke test. One run times, side by side on the same device:

- ``reference``: Algolzw/daclip-uir's ``ConditionalUNet`` and ``IRSDE.reverse_posterior``, imported
  at run time from a checkout given by ``--reference`` (outside this repository; none of its code
  is here). Without ``--reference`` only derain's rows are measured.
- ``derain``: ``DerainPipeline.restore`` with the same random weights (the reference's state dict
  loaded into ours), the posterior sampler and, above ``--tile``, derain's tiling.
- ``derain-mr``: the same with ``sampler="mr"`` at ``--mr-steps`` calls, when derain_cli.sde has it.

Both models are the universal-ir architecture (nf=64, ch_mult=[1,2,4,8], both DA-CLIP contexts;
``--nf`` narrows it, 32 under ``--quick``), randomly initialised: timings do not depend on weights.
DA-CLIP itself is not run: both get the same fixed random content and degradation embeddings
([1, 512]); derain's pipeline gets them by overriding ``pipe.conditioning``, so everything else
timed is ``restore`` as published (its seeded generator on the CPU, tiling, clamping). Half
precisions are autocast around the U-Net with the SDE state in fp32, for both.

Per configuration (implementation x size x precision x torch.compile): two short warm-ups (the
first includes compilation), then the median of ``--repeats`` full images, CUDA synchronised. Each
configuration runs in try/except and prints one line on failure; none starts after ``--budget-s``.
The table and the JSON (rewritten after every row) are described in docs/BENCHMARKS.md.

    python benchmarks/gpu.py --device cuda --reference ../ref-daclip --json gpu.json
    python benchmarks/gpu.py --device cpu --quick [--reference ../ref-daclip] --json /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from derain_cli import sde as derain_sde
from derain_cli.pipeline import DerainPipeline, SampleOptions
from derain_cli.sde import IRSDE
from derain_cli.tiling import tile_spans
from derain_cli.unet import ConditionalUNet

UNIVERSAL_IR = {"in_nc": 3, "out_nc": 3, "nf": 64, "ch_mult": [1, 2, 4, 8], "context_dim": 512,
                "use_degra_context": True, "use_image_context": True}
SDE_SETTINGS = {"max_sigma": 50, "T": 100, "schedule": "cosine", "eps": 0.005}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SEED = 0
COMPILE_RESERVE_S = 150  # a compiled configuration does not start with less budget than this
# Modules the reference's sde_utils.py imports for what we do not call (progress bars, saving
# intermediate states as PNGs, scipy's ODE solver): stubbed only while importing it, if missing.
OPTIONAL_REFERENCE_IMPORTS = ("tqdm", "torchvision", "torchvision.utils", "scipy", "scipy.integrate")
FULL = {"sizes": "481x321,1024x1024,4096x3072", "tile": "1024", "steps": 100, "mr_steps": 20,
        "repeats": 3, "precisions": "fp32,bf16,fp16", "compile": "both", "budget_s": 390.0, "nf": 64}
QUICK = {"sizes": "24x16,32x32,40x32", "tile": "32", "steps": 2, "mr_steps": 2,
         "repeats": 1, "precisions": "fp32,bf16,fp16", "compile": "off", "budget_s": 150.0, "nf": 32}


@dataclass
class Config:
    """One measured configuration."""

    impl: str  # reference | derain | derain-mr
    width: int
    height: int
    tile: int | None  # derain's tile size where it tiles the image, else None (always for the reference)
    precision: str
    compile: bool
    sampler: str
    steps: int
    compile_backend: str = "inductor"

    @property
    def size(self) -> str:
        """The image size as WIDTHxHEIGHT."""
        return f"{self.width}x{self.height}"


@dataclass
class Row:
    """What one configuration measured (None where not applicable or not reached)."""

    config: Config
    status: str = "ok"
    s_per_image: float | None = None
    repeats: int = 0
    first_warmup_s: float | None = None
    compile_s: float | None = None
    cpu_noise_s: float | None = None
    tflop_per_image: float | None = None
    unet_calls: int | None = None
    floor_s: float | None = None
    x_floor: float | None = None
    peak_mem_gb: float | None = None
    psnr_vs_fp32: float | None = None
    max_abs_vs_fp32: float | None = None
    speedup_vs_reference: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- arguments ----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; those not given take the --quick or full-run defaults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--reference", type=Path, help="checkout of Algolzw/daclip-uir (outside this repo)")
    p.add_argument("--sizes", help=f"WIDTHxHEIGHT,... (default {FULL['sizes']})")
    p.add_argument("--tile", help="derain's tile size for images larger than it; 0: never tile "
                                  f"(default {FULL['tile']})")
    p.add_argument("--precisions", help=f"comma-separated from {list(DTYPES)} (default all)")
    p.add_argument("--compile", choices=["on", "off", "both"], help="torch.compile of the U-Nets (default both)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (default inductor; aot_eager checks the path quickly on a CPU)")
    p.add_argument("--repeats", type=int, help=f"timed images per configuration (default {FULL['repeats']})")
    p.add_argument("--steps", type=int, help=f"posterior sampler steps (default {FULL['steps']})")
    p.add_argument("--mr-steps", type=int, help=f"network calls of the MaRS rows (default {FULL['mr_steps']})")
    p.add_argument("--budget-s", type=float, help="start no configuration after this many seconds "
                                                  f"(default {FULL['budget_s']:.0f})")
    p.add_argument("--nf", type=int, help="U-Net base width (default 64, the universal-ir model; "
                                          "--quick: 32, a smaller U-Net of the same design)")
    p.add_argument("--peak-tflops", type=float, default=790.0,
                   help="peak TFLOP/s for the floor (default 790: H200 dense bf16)")
    p.add_argument("--try-untiled", action="store_true",
                   help="also run the reference on the sizes derain tiles (expect out-of-memory)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and steps: a CPU smoke test")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    args.precision_list = [s.strip() for s in args.precisions.split(",") if s.strip()]
    unknown = [s for s in args.precision_list if s not in DTYPES]
    if unknown:
        p.error(f"--precisions: unknown {unknown}; choose from {list(DTYPES)}")
    args.tile_size = int(args.tile)
    args.compile_list = {"on": [True], "off": [False], "both": [False, True]}[args.compile]
    return args


def parse_size(text: str) -> tuple[int, int]:
    """(width, height) from 'WIDTHxHEIGHT'."""
    try:
        width, height = (int(v) for v in text.lower().strip().split("x"))
    except ValueError:
        raise SystemExit(f"--sizes: expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


# -- environment and models ---------------------------------------------------------------------

def environment(device: torch.device, reference: Path | None) -> dict[str, Any]:
    """Versions and device facts printed above the table and kept in the JSON."""
    env: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "device": str(device), "device_name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "derain_commit": git_commit(Path(__file__).resolve().parents[1]),
        "reference_commit": git_commit(reference) if reference else None,
        "mr_sampler": "mr" in derain_sde.SAMPLERS,
    }
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    return env


def git_commit(path: Path) -> str | None:
    """The checked-out commit of the git checkout whose root is ``path``, if it is one."""
    if not (path / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def import_from_file(name: str, path: Path, package: bool = False) -> types.ModuleType:
    """Import ``path`` (a module file or a package's __init__.py) under the unique name ``name``."""
    search = [str(path.parent)] if package else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_reference(path: Path) -> tuple[type, type]:
    """The reference's ConditionalUNet and IRSDE classes, imported from its checkout at ``path``.

    The U-Net's package (config/daclip-sde/models/modules) and utils/sde_utils.py are imported
    by file under private names, which skips utils/__init__.py and its image-I/O imports (cv2...).
    Missing optional modules of sde_utils are stubbed during the import only, and its tqdm
    progress bar is replaced by the plain iterator so nothing is printed per step.
    """
    root = path / "universal-image-restoration" if (path / "universal-image-restoration").is_dir() else path
    modules = root / "config" / "daclip-sde" / "models" / "modules" / "__init__.py"
    sde_file = root / "utils" / "sde_utils.py"
    for needed in (modules, sde_file):
        if not needed.is_file():
            raise FileNotFoundError(f"--reference: {needed} not found (give a daclip-uir checkout)")
    try:
        importlib.import_module("einops")
    except ImportError:
        raise ImportError("--reference: the reference U-Net needs einops (pip install einops)") from None
    unet_module = import_from_file("daclip_reference_modules", modules, package=True)
    stubs = []
    for name in OPTIONAL_REFERENCE_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
            stubs.append(name)
    try:
        if "tqdm" in stubs:
            sys.modules["tqdm"].tqdm = lambda iterable, *a, **k: iterable
        sde_module = import_from_file("daclip_reference_sde_utils", sde_file)
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    sde_module.tqdm = lambda iterable, *a, **k: iterable
    return unet_module.ConditionalUNet, sde_module.IRSDE


def build_unets(reference_unet: type | None, device: torch.device,
                nf: int = 64) -> tuple[nn.Module | None, ConditionalUNet]:
    """The reference U-Net (random init, seed 0) and derain's with the same weights, on ``device``."""
    torch.manual_seed(SEED)
    config = {**UNIVERSAL_IR, "nf": nf}
    ours = ConditionalUNet(**config)
    theirs = None
    if reference_unet is not None:
        theirs = reference_unet(**config)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        theirs = theirs.to(device).eval()
    return theirs, ours.to(device).eval()


def fixed_context(device: torch.device) -> dict[str, Tensor]:
    """Random but fixed DA-CLIP embeddings [1, 512]: degradation (text) and content (image)."""
    g = torch.Generator().manual_seed(SEED + 1)
    return {k: torch.randn(1, 512, generator=g).to(device) for k in ("text_context", "image_context")}


def test_image(width: int, height: int) -> Tensor:
    """A fixed random [1, 3, H, W] image in 0..1 (the weights are random, so content is moot)."""
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(SEED + 2))


class _StandInDaclip(nn.Module):
    """Lets the pipeline accept a DA-CLIP-conditioned U-Net; never called (conditioning is overridden)."""


# -- runners: steps -> restored image -------------------------------------------------------------

Runner = Callable[[int], Tensor]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to the half precision named, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def maybe_compile(unet: nn.Module, on: bool, backend: str = "inductor") -> nn.Module:
    """``torch.compile(unet)`` (after resetting dynamo's caches) or the U-Net itself."""
    if not on:
        return unet
    torch._dynamo.reset()
    return torch.compile(unet, backend=backend)


def derain_runner(unet: ConditionalUNet, cfg: Config, context: dict[str, Tensor], device: torch.device,
                  lq: Tensor) -> Runner:
    """``DerainPipeline.restore`` of ``lq`` with ``cfg``'s precision, compile, sampler and tile."""
    pipe = DerainPipeline(unet, IRSDE(**SDE_SETTINGS), daclip=_StandInDaclip(), device=device,
                          dtype=DTYPES[cfg.precision])
    pipe.unet = maybe_compile(pipe.unet, cfg.compile, cfg.compile_backend)
    pipe.conditioning = lambda _lq: context  # DA-CLIP's embeddings, fixed
    lq = lq.to(device)

    def run(steps: int) -> Tensor:
        options = SampleOptions(steps=steps, sampler=cfg.sampler, seed=SEED, tile=cfg.tile)
        return pipe.restore(lq, options)

    return run


def reference_runner(unet: nn.Module, sde_class: type, cfg: Config, context: dict[str, Tensor],
                     device: torch.device, lq: Tensor) -> Runner:
    """The reference's ``noise_state`` + ``reverse_posterior`` of ``lq``, clamped to 0..1 as ours.

    Its sampler passes the time as a Python float, which torch.compile specialises on (one
    recompilation per step); it is handed to the U-Net as a [B] tensor instead, as ours gets it.
    """
    net = maybe_compile(unet, cfg.compile, cfg.compile_backend)
    lq = lq.to(device)

    def model(x: Tensor, mu: Tensor, t: Any, **ctx: Tensor) -> Tensor:
        if not torch.is_tensor(t):
            t = torch.full((x.shape[0],), float(t), device=x.device)
        with autocast(device, cfg.precision):
            return net(x, mu, t, **ctx).float()

    def run(steps: int) -> Tensor:
        sde = reference_sde(sde_class, model, lq, steps, device)
        with torch.no_grad():
            return sde.reverse_posterior(sde.noise_state(lq), **context).clamp(0, 1)

    return run


# -- measuring ----------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Runner, steps: int, device: torch.device) -> tuple[float, Tensor]:
    """Wall seconds of one synchronised ``run(steps)`` and its output."""
    synchronize(device)
    start = time.perf_counter()
    out = run(steps)
    synchronize(device)
    return time.perf_counter() - start, out


def warmup_steps(cfg: Config) -> int:
    """Warm-up steps: one posterior step where that keeps the network times' dtype, else all of them."""
    return 1 if cfg.sampler == "posterior" and SDE_SETTINGS["T"] % cfg.steps == 0 else cfg.steps


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled so far (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def measure(row: Row, run: Runner, device: torch.device, repeats: int, seconds_left: float) -> Tensor | None:
    """Fill ``row`` with warm-up, compile and median seconds per image; returns the last output."""
    cfg = row.config
    warm = warmup_steps(cfg)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    first, _ = timed(run, warm, device)
    second, _ = timed(run, warm, device)
    row.first_warmup_s = first
    row.compile_s = max(first - second, 0.0) if cfg.compile else None
    estimate = second / warm * cfg.steps
    fits = int((seconds_left - first - second) // max(estimate, 1e-9))
    if fits < 1:
        left = max(seconds_left - first - second, 0)
        row.status = f"skipped after warm-up: one image needs ~{estimate:.0f} s, {left:.0f} s of budget left"
        return None
    times, out = [], None
    graphs = compiled_graphs()
    for _ in range(min(repeats, fits)):
        seconds, out = timed(run, cfg.steps, device)
        times.append(seconds)
        if sum(times) + estimate > seconds_left - first - second:
            break
    if cfg.compile:
        row.extra["graphs_compiled_while_timed"] = compiled_graphs() - graphs
    row.repeats = len(times)
    row.s_per_image = statistics.median(times)
    if device.type == "cuda":
        row.peak_mem_gb = torch.cuda.max_memory_allocated(device) / 2**30
    return out.detach().float().cpu()


def unet_call_flops(net: nn.Module, width: int, height: int, context: dict[str, Tensor],
                    device: torch.device) -> float:
    """Matmul, convolution and attention FLOPs of one U-Net call on a ``width`` x ``height`` input.

    Elementwise work (normalisations, activations, the SDE update) is not counted.
    """
    x = test_image(width, height).to(device)
    t = torch.full((1,), SDE_SETTINGS["T"], device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, x, t, **context)
    return float(counter.get_total_flops())


def sampler_calls(cfg: Config, reference_sde: type | None) -> int:
    """Whole-image network calls the configuration's sampler makes per image (counted on 8x8 zeros)."""
    calls = [0]

    def stand_in(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        calls[0] += 1
        return torch.zeros_like(x)

    lq = torch.zeros(1, 3, 8, 8)
    if cfg.impl == "reference":
        sample_t = -1 if cfg.steps == SDE_SETTINGS["T"] else cfg.steps
        sde = reference_sde(max_sigma=SDE_SETTINGS["max_sigma"], T=SDE_SETTINGS["T"], sample_T=sample_t,
                            schedule=SDE_SETTINGS["schedule"], eps=SDE_SETTINGS["eps"], device="cpu")
        sde.set_model(stand_in)
        sde.set_mu(lq)
        sde.reverse_posterior(sde.noise_state(lq))
    else:
        IRSDE(**SDE_SETTINGS).sample(stand_in, lq, steps=cfg.steps, sampler=cfg.sampler)
    return calls[0]


def tile_windows(cfg: Config) -> tuple[int, int, int]:
    """Number of tiles per network call and their width and height (1 and the image when untiled)."""
    if cfg.tile is None:
        return 1, cfg.width, cfg.height
    overlap = min(SampleOptions.tile_overlap, cfg.tile // 2)
    rows, cols = tile_spans(cfg.height, cfg.tile, overlap), tile_spans(cfg.width, cfg.tile, overlap)
    return len(rows) * len(cols), cols[0][1] - cols[0][0], rows[0][1] - rows[0][0]


def image_flops(cfg: Config, state: dict[str, Any]) -> tuple[float, int]:
    """FLOPs per image (per tile call x tiles x sampler calls) and U-Net (tile) calls per image."""
    reference = state["reference"]
    net = reference[0] if cfg.impl == "reference" else state["unet"]
    tiles, width, height = tile_windows(cfg)
    key = (cfg.impl == "reference", width, height)
    if key not in state["call_flops"]:
        state["call_flops"][key] = unet_call_flops(net, width, height, state["context"], state["device"])
    calls = sampler_calls(cfg, reference[1] if reference else None) * tiles
    return state["call_flops"][key] * calls, calls


def noise_seconds(width: int, height: int, steps: int, device: torch.device) -> float:
    """Seconds per image that derain's seeded generator (on the GPU itself under CUDA) spends drawing step noise."""
    from derain_cli.pipeline import generator_device, image_generators

    g = image_generators(SEED, [0], device)[0]
    synchronize(device)
    start = time.perf_counter()
    for _ in range(3):
        torch.randn((1, 3, height, width), generator=g, device=generator_device(device)).to(device)
    synchronize(device)
    return (time.perf_counter() - start) / 3 * (steps + 1)


def compare(out: Tensor, base: Tensor) -> tuple[float | None, float]:
    """PSNR in dB (None if identical) and max abs difference of two 0..1 images."""
    mse = float(torch.mean((out - base) ** 2))
    psnr = None if mse == 0 else 10 * math.log10(1.0 / mse)
    return psnr, float((out - base).abs().max())


def reference_sde(sde_class: Any, model: Callable, lq: Tensor, steps: int, device: torch.device) -> Any:
    """The reference's IRSDE with ``model`` and ``lq`` set, its global RNG seeded (its ``sample_T`` for fewer steps)."""
    sample_t = -1 if steps == SDE_SETTINGS["T"] else steps
    sde = sde_class(max_sigma=SDE_SETTINGS["max_sigma"], T=SDE_SETTINGS["T"], sample_T=sample_t,
                    schedule=SDE_SETTINGS["schedule"], eps=SDE_SETTINGS["eps"], device=device)
    sde.set_model(model)
    sde.set_mu(lq)
    torch.manual_seed(SEED)
    return sde


def fairness_check(reference: tuple, unet: ConditionalUNet, context: dict[str, Tensor], device: torch.device,
                   width: int, height: int, steps: int) -> dict[str, float]:
    """Max abs differences, reference vs derain in fp32, of one U-Net call and of a whole loop.

    The loop gets the same x_T and the same noise: the reference draws it from the global RNG
    seeded with SEED, derain from a generator on the same device seeded alike.
    """
    lq = test_image(width, height).to(device)
    t = torch.full((1,), SDE_SETTINGS["T"], device=device)
    g = torch.Generator(device=device).manual_seed(SEED + 3)
    x_t = lq + torch.randn(lq.shape, generator=g, device=device) * SDE_SETTINGS["max_sigma"] / 255
    ref_unet, ref_sde = reference
    with torch.no_grad():
        call = float((ref_unet(x_t, lq, t, **context) - unet(x_t, lq, t, **context)).abs().max())
        sde = reference_sde(ref_sde, ref_unet, lq, steps, device)
        theirs = sde.reverse_posterior(x_t, **context)
        ours = IRSDE(**SDE_SETTINGS).sample(unet, lq, steps=steps, x_T=x_t,
                                            generator=torch.Generator(device=device).manual_seed(SEED),
                                            **context)
    return {"size": f"{width}x{height}", "steps": steps, "unet_call_max_abs_diff": call,
            "loop_max_abs_diff": float((theirs - ours).abs().max())}


# -- the run ------------------------------------------------------------------------------------

def configs(args: argparse.Namespace, has_reference: bool) -> list[Config]:
    """Every configuration in run order, so that a spent budget cuts the least informative ones.

    First everything eager, small sizes first, fp32 first (the baseline of the half precisions);
    then everything compiled, small sizes first, fp32 last. Within a setting the reference comes
    just before derain (and derain's MaRS row after it).
    """
    impls = (["reference"] if has_reference else []) + ["derain"]
    mr = "mr" in derain_sde.SAMPLERS
    out = []
    for compiled in args.compile_list:
        precisions = sorted(args.precision_list, key=lambda p: (p == "fp32") == compiled)
        for width, height in args.size_list:
            tile = args.tile_size if args.tile_size and max(width, height) > args.tile_size else None
            for precision in precisions:
                for impl in impls:
                    out.append(Config(impl, width, height, None if impl == "reference" else tile, precision,
                                      compiled, "posterior", args.steps, args.compile_backend))
                if mr:
                    out.append(Config("derain-mr", width, height, tile, precision, compiled, "mr", args.mr_steps,
                                      args.compile_backend))
    return out


def run_config(cfg: Config, args: argparse.Namespace, state: dict[str, Any], seconds_left: float) -> Row:
    """Measure one configuration; any failure becomes the row's one-line status."""
    row = Row(cfg)
    device, context, unet, reference = state["device"], state["context"], state["unet"], state["reference"]
    derain_tiles = args.tile_size and max(cfg.width, cfg.height) > args.tile_size
    if cfg.impl == "reference" and derain_tiles and not args.try_untiled:
        row.status = "n/a (no tiling)"
        return row
    if cfg.compile and seconds_left < COMPILE_RESERVE_S:
        row.status = f"skipped: under {COMPILE_RESERVE_S} s of budget left for a compile"
        return row
    lq = test_image(cfg.width, cfg.height)
    try:
        if cfg.impl == "reference":
            run = reference_runner(reference[0], reference[1], cfg, context, device, lq)
        else:
            run = derain_runner(unet, cfg, context, device, lq)
        out = measure(row, run, device, args.repeats, seconds_left)
    except Exception as err:  # noqa: BLE001 - a benchmark row records any failure and goes on
        row.status = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return row
    finally:
        if cfg.compile:
            torch._dynamo.reset()
    if out is None:
        return row
    fill_derived(row, out, args, state)
    return row


def fill_derived(row: Row, out: Tensor, args: argparse.Namespace, state: dict[str, Any]) -> None:
    """FLOPs and floor, difference from fp32, noise share and speed-up over the reference."""
    cfg = row.config
    key = (cfg.impl, cfg.size, cfg.sampler, cfg.steps)
    try:
        flops, calls = image_flops(cfg, state)
        row.tflop_per_image, row.unet_calls = flops / 1e12, calls
        row.floor_s = flops / (args.peak_tflops * 1e12)
        row.x_floor = row.s_per_image / row.floor_s if row.floor_s else None
    except Exception as err:  # noqa: BLE001
        row.extra["flops_error"] = f"{type(err).__name__}: {err}"[:160]
    baselines = state["fp32_outputs"]
    if cfg.precision == "fp32":
        baselines.setdefault(key + (cfg.compile,), out)
        baselines.setdefault(key + (None,), out)
    base = baselines.get(key + (cfg.compile,), baselines.get(key + (None,)))
    if base is not None and cfg.precision != "fp32":
        row.psnr_vs_fp32, row.max_abs_vs_fp32 = compare(out, base)
    if cfg.impl.startswith("derain"):
        size_key = (cfg.size, cfg.steps)
        if size_key not in state["noise_s"]:
            state["noise_s"][size_key] = noise_seconds(cfg.width, cfg.height, cfg.steps, state["device"])
        row.cpu_noise_s = state["noise_s"][size_key]
    if cfg.impl != "reference":
        ref = state["seconds"].get(("reference", cfg.size, cfg.precision, cfg.compile))
        row.speedup_vs_reference = ref / row.s_per_image if ref else None
    state["seconds"][(cfg.impl, cfg.size, cfg.precision, cfg.compile)] = row.s_per_image


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every configuration within the budget, print the table and return (and write) the JSON."""
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    env = environment(device, args.reference)
    notes = ["DA-CLIP is not run: both models get the same fixed random embeddings [1, 512]",
             "derain rows time DerainPipeline.restore (its seeded generators, tiling, clamp); "
             "reference rows time IRSDE.noise_state + reverse_posterior (global RNG on the device)",
             f"floor = FLOPs per image (matmul, conv, attention of one U-Net call, x tiles x calls) / "
             f"{args.peak_tflops:g} TFLOP/s, for every precision"]
    reference = None
    if args.reference is not None:
        try:
            reference_classes = load_reference(args.reference)
        except (ImportError, OSError) as err:
            notes.append(f"reference not loaded: {err}")
            print(f"reference not loaded: {err}", flush=True)
        else:
            reference = reference_classes
    if not env["mr_sampler"]:
        notes.append("MaRS rows skipped: derain_cli.sde.SAMPLERS has no 'mr' in this checkout")
    try:
        ref_unet, unet = build_unets(reference[0] if reference else None, device, args.nf)
    except Exception as err:  # noqa: BLE001 - the reference's constructor can fail; derain's rows still run
        notes.append(f"reference not built: {type(err).__name__}: {err}"[:200])
        reference = None
        ref_unet, unet = build_unets(None, device, args.nf)
    state: dict[str, Any] = {
        "device": device, "context": fixed_context(device), "unet": unet,
        "reference": (ref_unet, reference[1]) if reference else None,
        "call_flops": {}, "fp32_outputs": {}, "noise_s": {}, "seconds": {},
    }
    env["nf"] = args.nf
    env["unet_parameters_m"] = round(sum(p.numel() for p in unet.parameters()) / 1e6, 2)
    print_environment(env, notes)
    result: dict[str, Any] = {"environment": env, "notes": notes, "options": _options(args),
                              "fairness": None, "rows": []}
    if state["reference"] is not None and args.size_list:
        width, height = args.size_list[0]
        try:
            result["fairness"] = fairness_check(state["reference"], unet, state["context"], device,
                                                width, height, args.steps)
        except Exception as err:  # noqa: BLE001
            result["fairness"] = {"error": f"{type(err).__name__}: {err}"[:200]}
        print(f"fairness (fp32, same weights, x_T and noise): {result['fairness']}", flush=True)
    print(table_header(), flush=True)
    rows = []
    for cfg in configs(args, state["reference"] is not None):
        seconds_left = args.budget_s - (time.perf_counter() - started)
        if seconds_left <= 0:
            row = Row(cfg, status="skipped: budget spent")
        else:
            row = run_config(cfg, args, state, seconds_left)
        rows.append(row)
        print(table_line(row), flush=True)
        result["rows"] = [row_json(r) for r in rows]
        result["elapsed_s"] = time.perf_counter() - started
        if args.json:
            args.json.write_text(json.dumps(result, indent=1, allow_nan=False))
    print(f"\n{len(rows)} configurations in {time.perf_counter() - started:.0f} s", flush=True)
    return result


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of this run, as JSON."""
    keys = ("device", "nf", "sizes", "tile", "precisions", "compile", "compile_backend", "repeats", "steps", "mr_steps", "budget_s",
            "peak_tflops", "try_untiled", "quick")
    out = {k: getattr(args, k) for k in keys}
    out["reference"] = str(args.reference) if args.reference else None
    return out


# -- output -------------------------------------------------------------------------------------

COLUMNS = ["impl", "size", "tile", "prec", "compile", "sampler", "steps", "s/img", "derain/ref img/s",
           "compile s", "noise s", "TFLOP/img", "floor s", "x floor", "peak GB", "PSNR vs fp32",
           "max|diff| vs fp32", "status"]


def print_environment(env: dict[str, Any], notes: list[str]) -> None:
    """Print versions, the device and the notes."""
    print(f"torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}, device {env['device']} "
          f"({env['device_name']}), {env['threads']} CPU thread(s), derain {env['derain_commit']}, "
          f"reference {env['reference_commit']}, U-Net nf={env['nf']} ({env['unet_parameters_m']} M parameters)", flush=True)
    for key in ("cudnn", "cudnn_allow_tf32", "matmul_allow_tf32", "memory_gb"):
        if key in env:
            print(f"  {key}: {env[key]}")
    for note in notes:
        print(f"  note: {note}")


def table_header() -> str:
    """The markdown table's header and rule."""
    return "\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def _fmt(value: Any, digits: int = 3) -> str:
    """A table cell: '-' for None, a number to ``digits`` significant figures."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table_line(row: Row) -> str:
    """One markdown table line."""
    c = row.config
    cells = [c.impl, c.size, c.tile or "-", c.precision, "on" if c.compile else "off", c.sampler, c.steps,
             _fmt(row.s_per_image), _fmt(row.speedup_vs_reference), _fmt(row.compile_s), _fmt(row.cpu_noise_s),
             _fmt(row.tflop_per_image), _fmt(row.floor_s), _fmt(row.x_floor), _fmt(row.peak_mem_gb),
             _fmt(row.psnr_vs_fp32), _fmt(row.max_abs_vs_fp32), row.status]
    return "| " + " | ".join(str(x) for x in cells) + " |"


def row_json(row: Row) -> dict[str, Any]:
    """A row as flat JSON (config fields first)."""
    out = {**asdict(row.config), "size": row.config.size}
    out.update({k: v for k, v in asdict(row).items() if k != "config"})
    return out


if __name__ == "__main__":
    main()
