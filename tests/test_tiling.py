"""Tiling inside each sampler step: coverage, blend weights, agreement with untiled runs, OOM retry."""

import pytest
import torch

from derain_cli.sde import IRSDE
from derain_cli.tiling import (
    MIN_TILE,
    TiledDenoiser,
    auto_tile_size,
    estimate_forward_bytes,
    ramp_weights,
    tile_spans,
)


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (64, 64, 8), (65, 64, 16), (1000, 256, 32), (50, 80, 8)])
def test_tile_spans_cover_the_axis_with_at_least_the_overlap(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(end - start == min(tile, length) for start, end in spans)
    for (_, prev_end), (start, _) in zip(spans, spans[1:]):
        assert prev_end - start >= overlap


def test_ramp_weights_of_neighbours_sum_to_one_over_the_overlap():
    rise = ramp_weights(16, 16, 0)
    fall = ramp_weights(16, 0, 16)
    torch.testing.assert_close(rise + fall, torch.ones(16))
    assert torch.all(rise[1:] >= rise[:-1])
    # The outer quarter of the overlap (tile edge pixels, short of context) is discarded.
    assert torch.all(rise[:4] == 0) and torch.all(rise[-4:] == 1)


def pointwise(x, mu, t, **context):
    """A per-pixel denoiser: tiling must reproduce it exactly."""
    return torch.tanh(x - mu) * (t.float().reshape(-1, 1, 1, 1) / 100)


def test_tiled_pointwise_denoiser_equals_untiled_exactly_within_float_error():
    x, mu = torch.rand(2, 3, 150, 97), torch.rand(2, 3, 150, 97)
    t = torch.tensor([40, 40])
    tiled = TiledDenoiser(pointwise, tile=64, overlap=16)(x, mu, t)
    torch.testing.assert_close(tiled, pointwise(x, mu, t), rtol=1e-6, atol=1e-6)


def test_tiles_see_the_context_and_the_time():
    seen = []

    def spy(x, mu, t, image_context):
        seen.append((x.shape[-2:], t, image_context))
        return torch.zeros_like(x)

    ctx = torch.ones(1, 4)
    TiledDenoiser(spy, tile=32, overlap=8)(torch.zeros(1, 3, 70, 40), torch.zeros(1, 3, 70, 40),
                                           torch.tensor([5]), image_context=ctx)
    assert len(seen) == 3 * 2
    assert all(shape == (32, 32) and c is ctx and int(t) == 5 for shape, t, c in seen)


def test_tiled_sampling_with_one_noise_field_has_no_seams():
    """A whole sampling run with a local (3x3 conv) denoiser: tiled and untiled agree closely."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 3, 3, padding=1)

    def local(x, mu, t, **context):
        with torch.no_grad():
            return torch.tanh(conv(torch.cat([x - mu, mu], 1)))

    sde = IRSDE(max_sigma=10, T=20)
    lq = torch.rand(1, 3, 96, 130)
    whole = sde.sample(local, lq, generator=torch.Generator().manual_seed(3))
    tiled = sde.sample(TiledDenoiser(local, tile=48, overlap=16), lq, generator=torch.Generator().manual_seed(3))
    # Edge pixels of tiles (the only ones a 3x3 conv gets wrong) have weight 0: no seam at all.
    assert (tiled - whole).abs().max() < 1e-4


def test_out_of_memory_halves_the_tile_and_retries():
    calls = []

    def picky(x, mu, t, **context):
        calls.append(x.shape[-1])
        if x.shape[-1] > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return torch.zeros_like(x)

    shrunk = []
    tiled = TiledDenoiser(picky, tile=256, overlap=8, shrink_on_oom=True, on_shrink=shrunk.append)
    out = tiled(torch.zeros(1, 3, 200, 200), torch.zeros(1, 3, 200, 200), torch.tensor([1]))
    assert out.shape == (1, 3, 200, 200)
    assert shrunk == [128, 64] and tiled.tile == 64


def test_out_of_memory_is_raised_when_not_adaptive_or_at_the_minimum():
    def broke(x, mu, t, **context):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        TiledDenoiser(broke, tile=128)(torch.zeros(1, 3, 300, 300), torch.zeros(1, 3, 300, 300), torch.tensor([1]))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        TiledDenoiser(broke, tile=MIN_TILE, shrink_on_oom=True)(
            torch.zeros(1, 3, 300, 300), torch.zeros(1, 3, 300, 300), torch.tensor([1]))


def test_auto_tile_size_fits_the_budget_and_skips_tiling_when_the_image_fits():
    cfg = {"nf": 64, "ch_mult": [1, 2, 4, 8], "context_dim": 512, "use_image_context": True}
    assert auto_tile_size(cfg, 320, 480, budget_bytes=10**12) is None
    budget = 2 * 1024**3
    tile = auto_tile_size(cfg, 4000, 3000, budget_bytes=budget)
    assert tile is not None and tile % 64 == 0
    assert estimate_forward_bytes(cfg, tile, tile) <= budget
    assert estimate_forward_bytes(cfg, tile + 64, tile + 64) > budget
