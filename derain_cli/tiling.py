"""Seamless tiling of a denoiser inside each sampler step.

The sampler keeps one full-image state and draws one full-image noise field; only the network
call is split into overlapping tiles whose predictions are blended with smooth weights that sum
to one everywhere. No tile ever drifts from its neighbours, because every step starts again from
the shared state, and peak memory is bounded by the tile size, not the image size.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from derain_cli.card import MIN_TILE
from derain_cli.sde import Denoiser


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/end of windows of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared."""
    if tile >= length:
        return [(0, length)]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must lie in [0, tile), got overlap={overlap}, tile={tile}")
    count = math.ceil((length - overlap) / (tile - overlap))
    if count == 1:
        return [(0, tile)]
    stride = (length - tile) / (count - 1)
    return [(round(i * stride), round(i * stride) + tile) for i in range(count)]


def ramp_weights(size: int, lead: int, trail: int) -> Tensor:
    """1-D blend weights: 0 -> 1 over the ``lead`` overlap, 1 -> 0 over the ``trail`` overlap.

    The outer quarter of each overlap gets weight 0, so a tile's edge pixels, which lack the
    context a convolution needs, never reach the output; the middle half is a raised cosine.
    A tile's fall and its neighbour's rise over the same overlap add up to exactly one.
    """
    w = torch.ones(size, dtype=torch.float32)
    if lead > 0:
        w[:lead] = _rise(lead)
    if trail > 0:
        w[size - trail:] = _rise(trail).flip(0)
    return w


def _rise(n: int) -> Tensor:
    """Raised-cosine rise over ``n`` samples, flat at 0 for the first and 1 for the last quarter."""
    margin = n // 4
    u = ((torch.arange(n, dtype=torch.float64) + 0.5 - margin) / (n - 2 * margin)).clamp(0, 1)
    return (0.5 - 0.5 * torch.cos(torch.pi * u)).float()


def _overlaps(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlap of each window with its previous and next neighbour."""
    out = []
    for i, (start, end) in enumerate(spans):
        lead = spans[i - 1][1] - start if i > 0 else 0
        trail = end - spans[i + 1][0] if i + 1 < len(spans) else 0
        out.append((max(lead, 0), max(trail, 0)))
    return out


class TiledDenoiser:
    """Wraps a denoiser so that each call runs tile by tile and blends the predicted noise.

    With ``shrink_on_oom`` a CUDA out-of-memory error halves the tile size and repeats the call,
    down to ``MIN_TILE``; the smaller size is kept for the following steps.
    """

    def __init__(self, denoiser: Denoiser, tile: int, overlap: int = 32, shrink_on_oom: bool = False,
                 on_shrink: Callable[[int], None] | None = None) -> None:
        if tile < 16:
            raise ValueError(f"tile size must be at least 16 pixels, got {tile}")
        self.denoiser, self.tile, self.overlap = denoiser, tile, overlap
        self.shrink_on_oom, self.on_shrink = shrink_on_oom, on_shrink

    def __call__(self, x_t: Tensor, mu: Tensor, t: Tensor, **context: Tensor) -> Tensor:
        """Predicted noise for the whole image, assembled from overlapping tiles."""
        while True:
            try:
                return self._tiled(x_t, mu, t, **context)
            except torch.cuda.OutOfMemoryError:
                if not self.shrink_on_oom or self.tile <= MIN_TILE:
                    raise
                torch.cuda.empty_cache()
                self.tile = max(MIN_TILE, self.tile // 2 // 16 * 16)
                if self.on_shrink is not None:
                    self.on_shrink(self.tile)

    def _tiled(self, x_t: Tensor, mu: Tensor, t: Tensor, **context: Tensor) -> Tensor:
        """One pass over the tiles at the current tile size."""
        height, width = x_t.shape[-2:]
        overlap = min(self.overlap, self.tile // 2)
        rows = tile_spans(height, self.tile, overlap)
        cols = tile_spans(width, self.tile, overlap)
        if len(rows) == 1 and len(cols) == 1:
            return self.denoiser(x_t, mu, t, **context)
        out = torch.zeros_like(x_t, dtype=torch.float32)
        total = torch.zeros((1, 1, height, width), dtype=torch.float32, device=x_t.device)
        for (y0, y1), (ylead, ytrail) in zip(rows, _overlaps(rows)):
            wy = ramp_weights(y1 - y0, ylead, ytrail).to(x_t.device)
            for (x0, x1), (xlead, xtrail) in zip(cols, _overlaps(cols)):
                wx = ramp_weights(x1 - x0, xlead, xtrail).to(x_t.device)
                weight = wy[:, None] * wx[None, :]
                window = (..., slice(y0, y1), slice(x0, x1))
                noise = self.denoiser(x_t[window], mu[window], t, **context)
                out[window] += noise.float() * weight
                total[window] += weight
        return out / total


# Floats per pixel held by the reference's linear attention, whose width is fixed (4 heads x 32
# channels) whatever nf is: q, k, v (3 x 128), their softmax copies and the output. Calibrated on
# the CPU with benchmarks/memory.py (about 4.1 KB per pixel for an nf=8 U-Net).
LINEAR_ATTENTION_FLOATS = 8 * 128


def estimate_forward_bytes(unet_config: dict, height: int, width: int, dtype_bytes: int = 4) -> int:
    """Rough peak activation memory of one U-Net call on a ``height`` x ``width`` input.

    Per level (resolution halved each time): the convolution activations and skips (about 6 x the
    level's channels per pixel) and the fixed-width linear attention; the cross-attention blocks
    of the lowest levels (image context) hold a (tokens x tokens) matrix per head instead, which
    grows quadratically.
    """
    nf, ch_mult = unet_config["nf"], list(unet_config["ch_mult"])
    pixels = height * width
    transformer = bool(unet_config.get("use_image_context") and unet_config.get("context_dim"))
    linear = quadratic = 0.0
    for level, mult in enumerate(ch_mult):
        level_pixels = pixels / 4**level
        linear += 6 * nf * mult * level_pixels
        if transformer and level >= 3:
            heads = nf * mult // 32
            quadratic += 2 * heads * level_pixels**2
        else:
            linear += LINEAR_ATTENTION_FLOATS * level_pixels
    if transformer:  # the middle block attends at the lowest resolution
        tokens = pixels / 4 ** (len(ch_mult) - 1)
        quadratic += 2 * (nf * ch_mult[-1] // 32) * tokens**2
    return int((linear + quadratic) * dtype_bytes * 1.2)


def auto_tile_size(unet_config: dict, height: int, width: int, budget_bytes: int,
                   dtype_bytes: int = 4) -> int | None:
    """Largest square tile (a multiple of 64) whose estimated memory fits; None if the image fits whole."""
    if estimate_forward_bytes(unet_config, height, width, dtype_bytes) <= budget_bytes:
        return None
    tile = (max(height, width) // 64) * 64
    while tile > MIN_TILE and estimate_forward_bytes(unet_config, tile, tile, dtype_bytes) > budget_bytes:
        tile -= 64
    return max(tile, MIN_TILE)
