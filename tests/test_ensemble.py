"""Flip self-ensemble: equivariant denoisers are unchanged, others are averaged over mirror images."""

import pytest
import torch

from derain_cli.checkpoints import load_unet
from derain_cli.ensemble import FlipEnsemble
from derain_cli.pipeline import DerainPipeline, SampleOptions
from derain_cli.sde import IRSDE

from tests.conftest import TINY_SDE


def pointwise(x, mu, t, **context):
    """A per-pixel denoiser commutes with every flip: the ensemble must give it back unchanged."""
    return torch.tanh(x - mu) * (t.float().reshape(-1, 1, 1, 1) / 100)


def leftward(x, mu, t, **context):
    """Not mirror-symmetric: each pixel minus its right-hand neighbour (wrapping around)."""
    return x - x.roll(-1, dims=-1)


def test_an_equivariant_denoiser_is_unchanged_by_the_ensemble():
    x, mu, t = torch.rand(2, 3, 20, 31), torch.rand(2, 3, 20, 31), torch.tensor([30, 30])
    for size in (2, 4):
        torch.testing.assert_close(FlipEnsemble(pointwise, size)(x, mu, t), pointwise(x, mu, t))


def test_members_are_mirrored_back_and_averaged():
    x = torch.rand(1, 3, 8, 9, generator=torch.Generator().manual_seed(0))
    mu, t = torch.zeros_like(x), torch.tensor([1])
    right = x - x.roll(-1, dims=-1)
    left = x - x.roll(1, dims=-1)  # what the left-right mirror image gives, mirrored back
    torch.testing.assert_close(FlipEnsemble(leftward, 2)(x, mu, t), (right + left) / 2)
    # Upside-down mirroring commutes with this denoiser: four members average the same two.
    torch.testing.assert_close(FlipEnsemble(leftward, 4)(x, mu, t), (right + left) / 2)


def test_every_member_sees_the_mirrored_inputs_the_time_and_the_context():
    seen = []

    def spy(x, mu, t, image_context):
        seen.append((x.clone(), mu.clone(), t, image_context))
        return torch.zeros_like(x)

    x, mu, ctx = torch.rand(1, 3, 5, 6), torch.rand(1, 3, 5, 6), torch.ones(1, 4)
    FlipEnsemble(spy, 4)(x, mu, torch.tensor([7]), image_context=ctx)
    expected = [x, x.flip(-1), x.flip(-2), x.flip([-1, -2])]
    assert len(seen) == 4
    for (sx, smu, st, sctx), want in zip(seen, expected):
        assert torch.equal(sx, want) and int(st) == 7 and sctx is ctx
    assert torch.equal(seen[3][1], mu.flip([-1, -2]))


def test_only_sizes_1_2_and_4_are_accepted():
    for size in (0, 3, 8):
        with pytest.raises(ValueError, match="ensemble"):
            FlipEnsemble(pointwise, size)
        with pytest.raises(ValueError, match="ensemble"):
            SampleOptions(ensemble=size)


def test_the_pipeline_averages_its_network_over_flips_only_when_asked(plain_unet_file):
    pipeline = DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE))
    lq = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    plain = pipeline.restore(lq, SampleOptions(steps=3, tile=None))
    assert torch.equal(plain, pipeline.restore(lq, SampleOptions(steps=3, tile=None, ensemble=1)))
    two = pipeline.restore(lq, SampleOptions(steps=3, tile=None, ensemble=2))
    assert not torch.equal(two, plain)
    assert torch.equal(two, pipeline.restore(lq, SampleOptions(steps=3, tile=None, ensemble=2)))  # deterministic
    # Every sampler step calls the network once per member, on the whole image.
    calls = []
    original = pipeline.denoiser

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    pipeline.denoiser = counting
    try:
        pipeline.restore(lq, SampleOptions(steps=3, tile=None, ensemble=4))
    finally:
        del pipeline.denoiser
    assert len(calls) == 3 * 4 and all(shape == lq.shape for shape in calls)
