"""Synthetic rain: streak layers, motion blur, screen blending, haze and drops on clean photos.

Model of one rainy image, all on the 0–1 scale:

- Haze (atmospheric scattering, Koschmieder's law): ``H = J * t + A * (1 - t)``, with a smooth
  random transmission map ``t`` and a grey atmospheric light ``A``.
- Rain layer ``R``: several streak layers, each sparse random drops blurred by a Gaussian of the
  drop's width, then motion-blurred along the falling direction by a line kernel of the streak's
  length (both applied at once as one kernel, by FFT); optional round drops (splashes on the
  lens). Layers are combined by screen blending.
- Rainy image: screen blend ``O = 1 - (1 - H) * (1 - R)`` (or, with ``blend="add"``, ``min(H + R, 1)``),
  so rain only ever brightens.

Angles are in degrees from the vertical; a positive angle makes rain fall towards the right
(top-left to bottom-right). Lengths and widths are in pixels of an image whose shorter side is
``reference_side`` pixels, scaled to the actual image (``None``: plain pixels).
Everything is drawn from the ``numpy.random.Generator`` passed in: same seed, same bytes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .errors import DerainError, ImageError
from .imageio import IMAGE_EXTENSIONS, atomic_write, list_images, read_rgb8

Range = tuple[float, float]

_SUPERSAMPLE = 3  # sub-pixel samples per axis when drawing kernels (anti-aliasing)


@dataclass(frozen=True)
class RainConfig:
    """Ranges that each rendered image draws its rain from (uniformly, per image or per layer)."""

    layers: tuple[int, int] = (2, 3)  # number of streak layers (inclusive)
    angle: Range = (-20.0, 20.0)  # image's main falling direction, degrees from vertical
    angle_spread: float = 8.0  # each layer deviates from the main angle by up to this (degrees)
    length: Range = (15.0, 45.0)  # streak length = motion-blur length (pixels)
    width: Range = (0.8, 2.0)  # drop width across the streak, Gaussian FWHM (pixels)
    density: Range = (0.001, 0.004)  # streak starts per pixel and layer
    intensity: Range = (0.4, 0.8)  # peak brightness a streak adds (screen-blend weight)
    haze: Range = (0.0, 0.0)  # mean haze amount 1 - t; 0 disables the veil
    haze_light: Range = (0.75, 0.95)  # grey atmospheric light A
    splash_prob: float = 0.0  # probability that an image gets round drops
    splash_density: Range = (0.0002, 0.0008)  # drops per pixel when it does
    splash_radius: Range = (1.5, 4.0)  # drop radius (pixels)
    reference_side: float | None = 320.0  # shorter side the pixel sizes above refer to
    blend: Literal["screen", "add"] = "screen"  # how rain meets the scene: "screen" (1 - (1-a)(1-b)) or "add" (a + b, clipped)

    def __post_init__(self) -> None:
        """Reject ranges that are reversed or outside their meaningful interval."""
        _check_range("layers", self.layers, 1, 64)
        _check_range("angle", self.angle, -89.0, 89.0)
        _check_range("angle_spread", (0.0, self.angle_spread), 0.0, 89.0)
        _check_range("length", self.length, 1.0, math.inf)
        _check_range("width", self.width, 0.1, math.inf)
        _check_range("density", self.density, 0.0, 1.0)
        _check_range("intensity", self.intensity, 0.0, 1.0)
        _check_range("haze", self.haze, 0.0, 0.95)
        _check_range("haze_light", self.haze_light, 0.0, 1.0)
        _check_range("splash_prob", (0.0, self.splash_prob), 0.0, 1.0)
        _check_range("splash_density", self.splash_density, 0.0, 1.0)
        _check_range("splash_radius", self.splash_radius, 0.5, math.inf)
        if self.blend not in ("screen", "add"):
            raise ValueError(f"blend must be 'screen' or 'add', got {self.blend!r}")
        if self.reference_side is not None and self.reference_side <= 0:
            raise ValueError(f"reference_side must be positive or None, got {self.reference_side}")


def _check_range(name: str, value: Sequence[float], lo: float, hi: float) -> None:
    """Raise ValueError unless value is a pair lo <= a <= b <= hi."""
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ValueError(f"{name} must be a pair (a, b) with {lo} <= a <= b <= {hi}, got {value}")


PRESETS: dict[str, RainConfig] = {
    # Sparse thin streaks of moderate length (the look of Rain100L).
    "light": RainConfig(
        layers=(1, 2), angle=(-20.0, 20.0), angle_spread=5.0, length=(12.0, 35.0),
        width=(0.8, 1.5), density=(0.0008, 0.0025), intensity=(0.35, 0.7),
    ),
    "medium": RainConfig(
        layers=(2, 3), angle=(-20.0, 20.0), angle_spread=8.0, length=(20.0, 60.0),
        width=(0.8, 2.0), density=(0.0008, 0.002), intensity=(0.3, 0.6),
        haze=(0.0, 0.2), splash_prob=0.1,
    ),
    # Dense bright streaks of several widths and crossing angles over a bright veil: the look of
    # Rain100H (compared by eye with its rainy images; never fitted to its numbers).
    "heavy": RainConfig(
        layers=(3, 4), angle=(-15.0, 15.0), angle_spread=12.0, length=(25.0, 100.0),
        width=(0.8, 2.2), density=(0.001, 0.0025), intensity=(0.35, 0.7),
        haze=(0.05, 0.2), haze_light=(0.8, 1.0), splash_prob=0.1,
    ),
}
# Heavier still: dense rain that hides much of the scene (not the `downpour` look below).
PRESETS["storm"] = replace(PRESETS["heavy"], density=(0.0015, 0.004), intensity=(0.4, 0.8), haze=(0.05, 0.3))
# Rain100H's other look (compared by eye): many short, bright, nearly parallel streaks, often steeply
# slanted, over a strong bright veil.
PRESETS["downpour"] = RainConfig(
    layers=(2, 3), angle=(-35.0, 35.0), angle_spread=4.0, length=(12.0, 60.0), width=(1.0, 2.2),
    density=(0.002, 0.005), intensity=(0.4, 0.85), haze=(0.1, 0.3), haze_light=(0.85, 1.0),
)
# A third look of Rain100H (compared by eye at 2x zoom): long, thin, sharp streaks so dense that they
# cover about half the picture, added (and clipped to white) rather than screened, over a veil.
PRESETS["torrent"] = RainConfig(
    layers=(2, 4), angle=(-30.0, 30.0), angle_spread=3.0, length=(30.0, 110.0), width=(0.7, 1.4),
    density=(0.001, 0.003), intensity=(0.35, 0.75), haze=(0.05, 0.3), haze_light=(0.8, 1.0),
    blend="add",
)


def _lerp(r: Range, s: float) -> float:
    """Return the point a fraction s of the way through range r."""
    return r[0] + (r[1] - r[0]) * s


def _uniform(rng: np.random.Generator, r: Range) -> float:
    """Draw one float uniformly from the closed range r."""
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _fft_size(n: int) -> int:
    """Return the smallest 2,3,5-smooth integer >= n (a fast FFT length)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _subpixel_grid(half: int) -> tuple[np.ndarray, np.ndarray]:
    """Return x, y of the sub-pixel samples of a (2*half+1)^2 kernel centred at 0, each (nS, nS)."""
    n = 2 * half + 1
    coords = (np.arange(n * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5 - half
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return x, y


def _pixel_mean(samples: np.ndarray) -> np.ndarray:
    """Average sub-pixel samples (nS, nS) into pixels (n, n): area sampling against aliasing."""
    n = samples.shape[0] // _SUPERSAMPLE
    return samples.reshape(n, _SUPERSAMPLE, n, _SUPERSAMPLE).mean(axis=(1, 3))


def streak_kernel(length: float, width: float, angle: float) -> np.ndarray:
    """Return one drop's streak: a Gaussian of FWHM `width` motion-blurred along a line (peak <= 1)."""
    theta = math.radians(angle)
    ux, uy = math.sin(theta), math.cos(theta)  # falling direction, y points down
    sigma = width / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    half = math.ceil(length / 2 + 3 * sigma + 1)
    x, y = _subpixel_grid(half)
    along = x * ux + y * uy
    across = x * uy - y * ux
    profile = np.exp(-0.5 * (across / sigma) ** 2)
    fade = max(1.0, 0.15 * length)  # ends taper over this many pixels
    extent = np.clip((length / 2 - np.abs(along)) / fade + 0.5, 0.0, 1.0)
    return _pixel_mean(profile * extent)


def drop_kernel(radius: float) -> np.ndarray:
    """Return a round drop: a disc of the given radius with a soft edge and a brighter rim (peak 1)."""
    half = math.ceil(radius + 2)
    x, y = _subpixel_grid(half)
    r = np.hypot(x, y) / radius
    disc = np.clip((1.0 - r) * radius + 0.5, 0.0, 1.0)
    return _pixel_mean((0.5 + 0.5 * r**2) * disc)


def _splat(rng: np.random.Generator, kernel: np.ndarray, shape: tuple[int, int], density: float,
           intensity: float) -> np.ndarray:
    """Return an H x W layer of sparse drops splatted with a (2h+1)^2 kernel by FFT, clipped to [0, 1].

    The drops, drawn over the image and an h-pixel margin, are a fraction `density` of pixels valued
    in [intensity / 2, intensity).
    """
    half = kernel.shape[0] // 2
    u = rng.random((shape[0] + 2 * half, shape[1] + 2 * half))
    seeds = np.where(u < density, intensity * (0.5 + 0.5 * u / max(density, 1e-12)), 0.0)
    fft_shape = (_fft_size(seeds.shape[0]), _fft_size(seeds.shape[1]))
    spectrum = np.fft.rfft2(seeds, fft_shape) * np.fft.rfft2(kernel, fft_shape)
    full = np.fft.irfft2(spectrum, fft_shape)
    h, w = shape
    return np.clip(full[2 * half: 2 * half + h, 2 * half: 2 * half + w], 0.0, 1.0)


def _screen(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the screen blend 1 - (1 - a)(1 - b) of two layers on the 0–1 scale."""
    return 1.0 - (1.0 - a) * (1.0 - b)


def _streak_layer(rng: np.random.Generator, shape: tuple[int, int], config: RainConfig,
                  main_angle: float, scale: float) -> np.ndarray:
    """Render one streak layer; near layers (depth q -> 1) are longer, wider and sparser."""
    q = rng.random()
    near = 0.6 * q + 0.4 * rng.random()
    far = 1.0 - (0.6 * q + 0.4 * rng.random())
    angle = main_angle + rng.uniform(-config.angle_spread, config.angle_spread)
    length = _lerp(config.length, near) * scale
    width = _lerp(config.width, near) * scale
    density = _lerp(config.density, far) / scale**2
    intensity = _uniform(rng, config.intensity)
    return _splat(rng, streak_kernel(length, width, angle), shape, min(density, 1.0), intensity)


def _drop_layer(rng: np.random.Generator, shape: tuple[int, int], config: RainConfig,
                scale: float) -> np.ndarray:
    """Render round drops (splashes on the lens) of one random radius and density."""
    kernel = drop_kernel(_uniform(rng, config.splash_radius) * scale)
    density = min(_uniform(rng, config.splash_density) / scale**2, 1.0)
    return _splat(rng, kernel, shape, density, _uniform(rng, (0.3, 0.6)))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    """Return a smooth random field in [0, 1]: a coarse uniform grid, bilinearly upsampled."""
    coarse = rng.random((cells + 1, cells + 1))
    y = np.linspace(0, cells, shape[0])[:, None]
    x = np.linspace(0, cells, shape[1])[None, :]
    y0, x0 = np.minimum(y.astype(int), cells - 1), np.minimum(x.astype(int), cells - 1)
    fy, fx = y - y0, x - x0
    top = coarse[y0, x0] * (1 - fx) + coarse[y0, x0 + 1] * fx
    bottom = coarse[y0 + 1, x0] * (1 - fx) + coarse[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def apply_haze(clean: np.ndarray, haze: float, light: float, field: np.ndarray) -> np.ndarray:
    """Return J * t + A * (1 - t) (atmospheric scattering) with t = 1 - haze * (0.5 + field)."""
    t = np.clip(1.0 - haze * (0.5 + field), 0.05, 1.0)[..., None]
    return clean * t + light * (1.0 - t)


def render_rain(clean: np.ndarray, config: RainConfig, rng: np.random.Generator,
                full_side: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (rainy, rain_layer), float32 HxWx3 in [0, 1].

    rainy = 1 - (1 - hazy) * (1 - rain_layer) with screen blending, min(hazy + rain_layer, 1) with "add".
    ``full_side``: when ``clean`` is a crop of a larger photo, that photo's shorter side, so that the
    streaks and the haze have the sizes they would have on the whole photo.
    """
    if clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {clean.shape}")
    if not np.issubdtype(clean.dtype, np.floating) or clean.min() < 0 or clean.max() > 1:
        raise ValueError("expected a float image with values in [0, 1]")
    shape = clean.shape[:2]
    side = float(full_side) if full_side is not None else float(min(shape))
    if side < min(shape):
        raise ValueError(f"full_side {full_side} is smaller than the image's shorter side {min(shape)}")
    scale = side / config.reference_side if config.reference_side else 1.0
    cells = max(1, round(4 * min(shape) / side))  # haze varies over quarters of the whole photo
    main_angle = _uniform(rng, config.angle)
    rain = np.zeros(shape)
    for _ in range(int(rng.integers(config.layers[0], config.layers[1] + 1))):
        rain = _screen(rain, _streak_layer(rng, shape, config, main_angle, scale))
    if rng.random() < config.splash_prob:
        rain = _screen(rain, _drop_layer(rng, shape, config, scale))
    hazy = clean.astype(np.float64)
    haze = _uniform(rng, config.haze)
    if haze > 0:
        hazy = apply_haze(hazy, haze, _uniform(rng, config.haze_light), _smooth_field(rng, shape, cells))
    rain3 = np.repeat(rain[..., None], 3, axis=2)
    rainy = _screen(hazy, rain3) if config.blend == "screen" else np.minimum(hazy + rain3, 1.0)
    return rainy.astype(np.float32), rain3.astype(np.float32)


def image_rng(seed: int, name: str, copy: int) -> np.random.Generator:
    """Return the generator of one output image, derived from (seed, file name, copy index) only."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    digest = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest, copy]))


def write_png_atomic(array: np.ndarray, path: Path) -> None:
    """Write a uint8 image as PNG through a temporary file and a rename."""
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def _output_names(files: Sequence[Path], copies: int) -> list[tuple[Path, int, str]]:
    """Return (source, copy index, output name) triples; raise if two sources share a stem."""
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise DerainError(f"{stems[f.stem].name} and {f.name} would write the same output name")
        stems[f.stem] = f
    return [(f, k, f"{f.stem}_s{k}.png" if copies > 1 else f"{f.stem}.png")
            for f in files for k in range(copies)]


def synth_folder(clean_dir: str | Path, out_dir: str | Path, preset: str | RainConfig = "heavy",
                 seed: int = 0, copies: int = 1,
                 on_pair: Callable[[Path, Path], None] | None = None) -> list[tuple[Path, Path]]:
    """Render rain on every image of clean_dir into out_dir/LQ (+ clean copy in GT); return the pairs."""
    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown rain preset {preset!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[preset] if isinstance(preset, str) else preset
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    out_dir = Path(out_dir)
    files = _list_images(Path(clean_dir))
    (out_dir / "LQ").mkdir(parents=True, exist_ok=True)
    (out_dir / "GT").mkdir(parents=True, exist_ok=True)
    written = []
    for src, k, name in _output_names(files, copies):
        clean8 = read_rgb8(src)
        rainy, _ = render_rain(clean8.astype(np.float32) / 255.0, config, image_rng(seed, src.name, k))
        lq, gt = out_dir / "LQ" / name, out_dir / "GT" / name
        write_png_atomic(np.round(rainy * 255.0).astype(np.uint8), lq)
        write_png_atomic(clean8, gt)
        written.append((lq, gt))
        if on_pair is not None:
            on_pair(lq, gt)
    return written


def _list_images(folder: Path) -> list[Path]:
    """The image files of folder, sorted; raise ImageError if there are none."""
    files = list_images(folder)
    if not files:
        raise ImageError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    return files
