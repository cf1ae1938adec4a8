"""IRSDE schedules and samplers against the reference implementation and closed-form oracles."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from derain_cli.sde import IRSDE

GOLDEN = load_file(Path(__file__).parent / "golden" / "sde_reference.safetensors")


def fake_denoiser(x, mu, t, **context):
    """A deterministic stand-in network, the same one the golden data was made with."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
    return 0.5 * torch.sin(3 * x) + 0.2 * mu - 0.001 * t


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("max_sigma,T,eps", [(50, 100, 0.005), (10, 37, 0.01)])
def test_schedule_tables_equal_reference(schedule, max_sigma, T, eps):
    sde = IRSDE(max_sigma=max_sigma, T=T, schedule=schedule, eps=eps)
    key = f"{schedule}_{max_sigma}_{T}"
    for name in ("thetas", "sigmas", "thetas_cumsum", "sigma_bars"):
        ours = getattr(sde, name)
        assert ours.shape == (T + 1,)
        torch.testing.assert_close(ours, GOLDEN[f"{key}.{name}"], rtol=0, atol=0)
    assert isinstance(sde.dt, float)
    assert sde.dt == GOLDEN[f"{key}.dt"].item()


@pytest.mark.parametrize("sampler", ["posterior", "sde", "ode"])
@pytest.mark.parametrize("steps", [100, 25, 30])
def test_sampling_loop_equals_reference(sampler, steps):
    sde = IRSDE(max_sigma=50, T=100, schedule="cosine", eps=0.005)
    lq = GOLDEN["lq"]
    torch.manual_seed(123)
    out = sde.sample(fake_denoiser, lq, steps=steps, sampler=sampler)
    torch.testing.assert_close(out, GOLDEN[f"sample.{sampler}.{steps}"], rtol=0, atol=1e-6)


def test_denoiser_receives_long_reference_times_in_descending_order():
    sde = IRSDE(T=10)
    seen = []

    def spy(x, mu, t, **context):
        seen.append(t.clone())
        return torch.zeros_like(x)

    sde.sample(spy, torch.zeros(3, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    assert [int(t[0]) for t in seen] == list(range(10, 0, -1))
    assert all(t.dtype == torch.long and t.shape == (3,) for t in seen)


def test_fewer_steps_scale_times_like_reference_sample_T():
    sde = IRSDE(T=100)
    seen = []
    sde.sample(lambda x, mu, t: seen.append(t) or torch.zeros_like(x), torch.zeros(1, 3, 2, 2),
               steps=25, generator=torch.Generator().manual_seed(0))
    assert [int(t[0]) for t in seen] == list(range(100, 0, -4))


def test_context_is_forwarded_to_the_denoiser():
    sde = IRSDE(T=3)
    ctx = torch.randn(1, 8)
    got = []
    sde.sample(lambda x, mu, t, text_context: got.append(text_context) or torch.zeros_like(x),
               torch.zeros(1, 3, 2, 2), text_context=ctx, generator=torch.Generator())
    assert len(got) == 3 and all(c is ctx for c in got)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_posterior_sampler_with_true_noise_oracle_returns_clean_image(schedule):
    """A denoiser that knows the clean image must make the posterior sampler return it exactly."""
    sde = IRSDE(max_sigma=50, T=100, schedule=schedule, eps=0.005)
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    lq = (clean + 0.3 * torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)).clamp(0, 1)

    def oracle(x_t, mu, t, **context):
        return sde.true_noise(x_t, clean, mu, t)

    sde64 = sde  # the same tables in float64, so that the oracle is exact
    for name in ("thetas", "sigmas", "thetas_cumsum", "sigma_bars"):
        setattr(sde64, name, getattr(sde, name).double())
    out = sde64.sample(oracle, lq, generator=g)
    # What remains is the float32 rounding of the tables (theta_bar_1 = (theta_0 + theta_1) - theta_0
    # is not exactly theta_1) and the reference's variance floor at t = 1: about 1e-9.
    assert float(sde64.optimal_posterior_std(1)) < 1e-9
    assert (out - clean).abs().max() < 1e-7


@pytest.mark.parametrize("steps", [100, 10, 1])
def test_clean_image_prediction_oracle_returns_the_clean_image(steps):
    """A denoiser that outputs the clean image itself (prediction="x0") makes the posterior sampler return it."""
    sde = IRSDE(max_sigma=10, T=100)
    g = torch.Generator().manual_seed(4)
    clean, lq = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    out = sde.sample(lambda x, mu, t: clean, lq, steps=steps, generator=g, prediction="x0")
    assert (out - clean).abs().max() < 1e-4
    with pytest.raises(ValueError, match="prediction"):
        sde.sample(lambda x, mu, t: clean, lq, prediction="eps")


def test_posterior_oracle_in_float32_is_within_float_precision():
    sde = IRSDE()
    g = torch.Generator().manual_seed(2)
    clean = torch.rand(1, 3, 16, 16, generator=g)
    lq = torch.rand(1, 3, 16, 16, generator=g)
    out = sde.sample(lambda x, mu, t: sde.true_noise(x, clean, mu, t), lq, generator=g)
    assert (out - clean).abs().max() < 1e-4


def test_noisy_state_and_true_noise_are_inverse():
    sde = IRSDE()
    g = torch.Generator().manual_seed(3)
    x0, mu, eps = (torch.rand(4, 3, 5, 5, generator=g) for _ in range(3))
    t = torch.tensor([1, 30, 70, 100])
    x_t = sde.noisy_state(x0, mu, t, eps)
    torch.testing.assert_close(sde.true_noise(x_t, x0, mu, t), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sde.x0_from_noise(x_t, mu, eps, t), x0, rtol=1e-4, atol=1e-4)


def test_same_generator_seed_gives_same_output_and_no_state_is_kept():
    sde = IRSDE(T=20)
    lq = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    a = sde.sample(fake_denoiser, lq, generator=torch.Generator().manual_seed(7))
    b = sde.sample(fake_denoiser, lq, generator=torch.Generator().manual_seed(7))
    c = sde.sample(fake_denoiser, lq, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not hasattr(sde, "mu") and not hasattr(sde, "model")


def test_ode_sampler_is_deterministic_given_the_start_state():
    sde = IRSDE(T=10)
    lq = torch.rand(1, 3, 4, 4)
    x_T = sde.noise_state(lq, torch.Generator().manual_seed(0))
    a = sde.sample(fake_denoiser, lq, sampler="ode", x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = sde.sample(fake_denoiser, lq, sampler="ode", x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_callback_reports_each_step():
    calls = []
    IRSDE(T=5).sample(lambda x, mu, t: torch.zeros_like(x), torch.zeros(1, 3, 2, 2),
                      generator=torch.Generator(), callback=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 5) for i in range(1, 6)]


def test_bad_choices_name_the_valid_ones():
    with pytest.raises(ValueError, match="choose from .*constant.*cosine.*linear"):
        IRSDE(schedule="cosin")
    with pytest.raises(ValueError, match="choose from"):
        IRSDE().sample(fake_denoiser, torch.zeros(1, 3, 2, 2), sampler="euler")


def test_max_sigma_is_on_the_255_scale():
    assert IRSDE(max_sigma=51).max_sigma == pytest.approx(0.2)
    assert IRSDE(max_sigma=0.2).max_sigma == pytest.approx(0.2)
