"""MaRS (sampler="mr") against the official MRSampler, closed-form oracles and its option rules."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from derain_cli.mars import (MarsOptions, interpolate, mars_tables, sample_mars, step_orders,
                             time_grid)
from derain_cli.sde import IRSDE
from tests import mars_standins as standins

GOLDEN_FILE = Path(__file__).parent / "golden" / "mars_reference.safetensors"
GOLDEN = load_file(GOLDEN_FILE)
with safe_open(str(GOLDEN_FILE), framework="pt") as _f:
    CASES = json.loads(_f.metadata()["cases"])
UNET = standins.tiny_unet()
TOLERANCE = 1e-4  # float32; the measured worst case is about 1e-5


def case_inputs(case: dict) -> tuple[IRSDE, dict]:
    """Our IRSDE and the golden inputs of a case."""
    sde = IRSDE(**case["sde"])
    return sde, {k: GOLDEN[f"input.{case['sde']['max_sigma']}.{k}"] for k in ("mu", "clean", "x_T")}


def options(case: dict) -> MarsOptions:
    """The MarsOptions of a golden case."""
    names = ("solver", "parameterization", "order", "lambda_min", "time_schedule", "thresholding",
             "denoise_last")
    return MarsOptions(**{name: case[name] for name in names})


@pytest.mark.parametrize("key", sorted(CASES))
def test_sampler_matches_the_official_mrsampler(key):
    case = CASES[key]
    sde, data = case_inputs(case)
    tables = mars_tables(sde.thetas, sde.max_sigma, case["sde"]["eps"])
    net = standins.standin(case["net"], case["prediction"], data["clean"], tables, UNET)
    seen = []
    out = sde.sample(lambda x, mu, t: seen.append(t) or net(x, mu, t), data["mu"], steps=case["steps"],
                     sampler="mr", x_T=data["x_T"], prediction=case["prediction"], mr_options=options(case),
                     generator=torch.Generator().manual_seed(standins.NOISE_SEED))
    assert (out - GOLDEN[f"out.{key}"]).abs().max() <= TOLERANCE
    assert len(seen) == case["steps"]
    assert torch.equal(torch.stack([t[0] for t in seen]).double(), GOLDEN[f"times.{key}"])


@pytest.mark.parametrize("name", ["cosine50", "linear37"])
def test_tables_and_their_interpolation_equal_the_official_ones(name):
    sde = {"cosine50": IRSDE(50, 100, "cosine", 0.005), "linear37": IRSDE(30, 37, "linear", 0.01)}[name]
    tables = mars_tables(sde.thetas, sde.max_sigma, sde.config["eps"])
    times = torch.linspace(0, sde.T, 11).flip(0)
    for i, part in enumerate(("alpha", "sigma", "lambda")):
        assert torch.equal(tables[i], GOLDEN[f"table.{name}.{part}"])
        assert torch.equal(interpolate(times, time_grid(tables), tables[i]), GOLDEN[f"table.{name}.{part}s10"])


def test_tables_do_not_subtract_theta_0_so_sigma_0_is_positive():
    tables = mars_tables(IRSDE().thetas, IRSDE().max_sigma, 0.005)
    assert float(tables.sigma[0]) == pytest.approx(0.0022, abs=5e-5)
    assert float(tables.alpha[-1]) == pytest.approx(0.005, rel=1e-4)
    assert torch.isfinite(tables.lam).all() and (tables.lam.diff() < 0).all()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    return 10 * math.log10(1 / float(((a - b) ** 2).mean()))


@pytest.mark.parametrize("solver,parameterization", [("ode", "data"), ("ode", "noise"), ("sde", "data")])
@pytest.mark.parametrize("prediction", ["noise", "x0"])
@pytest.mark.parametrize("steps", [5, 20])
def test_oracle_denoiser_returns_the_clean_image_to_50_db(solver, parameterization, prediction, steps):
    """The true noise (or the clean image for an x0 model) brings MaRS to t = 0: about 53 dB, since
    alpha_0 < 1 and sigma_0 > 0 in mr-sampler's tables. (The SDE solver with the noise
    parameterization needs many steps even with an oracle: 44 dB at 100 steps.)"""
    sde = IRSDE(max_sigma=50, T=100)
    g = torch.Generator().manual_seed(0)
    clean = 0.1 + 0.8 * torch.rand(1, 3, 32, 32, generator=g)
    lq = clean + 0.1 * torch.rand(1, 3, 32, 32, generator=g)
    tables = mars_tables(sde.thetas, sde.max_sigma, 0.005)
    oracle = standins.true_noise(clean, tables) if prediction == "noise" else (lambda x, mu, t: clean)
    out = sde.sample(oracle, lq, steps=steps, sampler="mr", generator=g, prediction=prediction,
                     mr_options=MarsOptions(solver=solver, parameterization=parameterization))
    assert psnr(out, clean) >= 50


def test_network_is_called_steps_times_at_the_official_times_with_callback():
    sde = IRSDE(T=100)
    seen, calls = [], []

    def spy(x, mu, t):
        seen.append(t)
        return torch.zeros_like(x)

    for denoise_last in (False, True):
        seen.clear()
        sde.sample(spy, torch.rand(2, 3, 4, 4), steps=7, sampler="mr", generator=torch.Generator(),
                   mr_options=MarsOptions(denoise_last=denoise_last),
                   callback=lambda i, n: calls.append((i, n)))
        expected = torch.linspace(0, 100, 8).flip(0)[:-1]
        assert torch.equal(torch.stack([t[0] for t in seen]), expected)
        assert all(t.dtype == torch.float32 and t.shape == (2,) for t in seen)
    assert calls == [(i, 7) for i in range(1, 8)] * 2


def test_lambda_min_starts_sampling_at_the_last_time_above_it():
    sde = IRSDE(T=100)
    tables = mars_tables(sde.thetas, sde.max_sigma, 0.005)
    start = int((tables.lam >= -3).sum()) - 1
    seen = []
    sde.sample(lambda x, mu, t: seen.append(float(t[0])) or torch.zeros_like(x), torch.rand(1, 3, 4, 4),
               steps=4, sampler="mr", generator=torch.Generator(), mr_options=MarsOptions(lambda_min=-3))
    assert 0 < start < 100 and seen[0] == start


def test_first_step_and_step_n_minus_1_below_10_steps_are_first_order():
    assert step_orders(7, 2) == [1, 2, 2, 2, 2, 1, 2]
    assert step_orders(10, 2) == [1] + [2] * 9
    assert step_orders(2, 2) == [1, 2]
    assert step_orders(1, 2) == [1]
    assert step_orders(5, 1) == [1] * 5


def test_one_step_is_one_first_order_network_call():
    sde = IRSDE()
    lq, x_T = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    calls = []
    second = sde.sample(lambda x, mu, t: calls.append(t) or standins.analytic_x0(lq)(x, mu, t), lq, steps=1,
                        sampler="mr", x_T=x_T, prediction="x0")
    first = sde.sample(standins.analytic_x0(lq), lq, steps=1, sampler="mr", x_T=x_T, prediction="x0",
                       mr_options=MarsOptions(order=1))
    assert len(calls) == 1 and torch.equal(first, second)


def test_denoise_last_returns_the_clean_image_estimate_in_both_parameterizations():
    """Upstream returns the noise estimate as the image with the noise parameterization; we do not."""
    sde = IRSDE()
    clean, lq = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    for parameterization in ("data", "noise"):
        opts = MarsOptions(parameterization=parameterization, denoise_last=True)
        out = sde.sample(lambda x, mu, t: clean, lq, steps=5, sampler="mr", prediction="x0",
                         generator=torch.Generator(), mr_options=opts)
        assert torch.equal(out, clean)


def test_sde_solver_draws_from_the_generator_and_ode_solver_does_not():
    sde = IRSDE(T=100)
    lq = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    net = standins.analytic_x0(lq)

    def run(seed, solver):
        return sde.sample(net, lq, steps=6, sampler="mr", prediction="x0", mr_options=MarsOptions(solver=solver),
                          generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(7, "sde"), run(7, "sde")) and not torch.equal(run(7, "sde"), run(8, "sde"))
    x_T = sde.noise_state(lq, torch.Generator().manual_seed(7))
    ode = sde.sample(net, lq, steps=6, sampler="mr", prediction="x0", x_T=x_T, generator=torch.Generator())
    assert torch.equal(run(7, "ode"), ode)


def test_result_is_finite_and_clipped_to_the_unit_range():
    sde = IRSDE()
    lq = torch.rand(1, 3, 8, 8)
    for solver in ("ode", "sde"):
        for parameterization in ("data", "noise"):
            out = sde.sample(lambda x, mu, t: 3 * torch.sin(5 * x), lq, steps=4, sampler="mr",
                             generator=torch.Generator().manual_seed(0),
                             mr_options=MarsOptions(solver=solver, parameterization=parameterization))
            assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_defaults_are_the_official_mrsampler_yml():
    assert MarsOptions() == MarsOptions(solver="ode", parameterization="data", order=2, lambda_min=-5.0,
                                        time_schedule="linspace", thresholding=False, threshold_ratio=0.995,
                                        threshold_max=1.5, denoise_last=False)


@pytest.mark.parametrize("field,value,choices", [
    ("solver", "euler", "ode.*sde"),
    ("parameterization", "velocity", "data.*noise"),
    ("order", 3, r"\[1, 2\]"),
    ("order", True, r"\[1, 2\]"),
    ("time_schedule", "karras-t", "linspace.*linear-lambda"),
])
def test_bad_options_name_the_valid_choices(field, value, choices):
    with pytest.raises(ValueError, match=f"{field}.*choose from.*{choices}"):
        MarsOptions(**{field: value})


def test_bad_numbers_and_misplaced_options_are_refused():
    for bad in ({"threshold_ratio": 0}, {"threshold_max": 0.5}, {"lambda_min": math.nan}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MarsOptions(**bad)
    sde, lq = IRSDE(), torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="mr_options"):
        sde.sample(lambda x, mu, t: x, lq, sampler="ode", mr_options=MarsOptions())
    with pytest.raises(ValueError, match="lambda_min .* choose one below"):
        sde.sample(lambda x, mu, t: x, lq, sampler="mr", mr_options=MarsOptions(lambda_min=7))
    with pytest.raises(ValueError, match="at least one step"):
        sample_mars(lambda x, mu, t: x, lq, lq, mars_tables(sde.thetas, sde.max_sigma, 0.005), 0)
