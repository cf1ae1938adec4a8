"""MaRS, the fast sampler for mean-reverting diffusion (Li et al., ICLR 2025), over a denoiser callable.

The IR-SDE state is x_t = mu + alpha_t (x_0 - mu) + sigma_t eps with alpha_t = exp(-theta_bar_t dt)
and sigma_t = lambda sqrt(1 - alpha_t^2) (``lambda`` = ``max_sigma``). MaRS solves the reverse
ODE or SDE from s to t exactly in its linear part (the terms in x_s and mu, from alpha and sigma)
and expands the network term in lambda_t = log(alpha_t / sigma_t) (half the log-SNR), h =
lambda_t - lambda_s, to first or second order (multistep: order 2 reuses the previous output).
These are the paper's semi-analytical solutions with noise prediction and with data prediction,
for its MR-ODE and MR-SDE solvers (named by content below; the paper's text was not at hand to
cite equation numbers). Written from the maths and checked against the official MRSampler
(grrrute/mr-sampler ``utils/sampler.py``; golden data in tests/golden/mars_reference.safetensors).

What the official code does, and this module keeps:

- The tables come from mr-sampler's own IR-SDE, whose theta cumulative sum does NOT subtract
  theta_0 (daclip-uir's does): alpha_0 < 1 and sigma_0 = 0.0022 for max_sigma 50, so lambda_0 is
  finite. With daclip-uir's tables sigma_0 = 0 and the sampler returns NaN.
- The N + 1 times lie on the reference 0..T scale (``linspace``: N + 1 points from t_max down to
  0, t_max the last whole time whose lambda is not below ``lambda_min``). The network is called at
  the first N of them, as float32 values; alpha, sigma and lambda at fractional times are linear
  interpolations of the integer tables (lambda is interpolated, not recomputed from alpha, sigma).
- The first step is first order; with fewer than 10 steps step N - 1 is first order too.
- The result is the state at t = 0 clipped to [0, 1] (not exact recovery: an oracle gets about
  53 dB since alpha_0 < 1 and sigma_0 > 0), or with ``denoise_last`` the clean-image estimate at
  the last but one time, clipped.
- Because lambda is interpolated, e^-h is not exactly (sigma_t alpha_s) / (alpha_t sigma_s) at
  fractional times, so the data-prediction steps keep the paper's split (mu term from alpha and
  sigma, network term from h) rather than the algebraically equal form in x - mu: that form moves
  the result by up to 1e-2 from the official one (measured for 20 linear-lambda steps).
- ``thresholding`` clips each converted network output (Imagen's dynamic thresholding), in
  whichever parameterization the solver runs.

Where this module departs from it, deliberately:

- N = 1: upstream order 2 calls the network twice (a first step to t = 0, then a second-order step
  from t = 0 reading its buffer out of range); here it is one first-order step.
- ``denoise_last`` with the noise parameterization: upstream returns the noise estimate as the
  image; here it returns the clean-image estimate, as with the data parameterization.
- Order 3 (ODE only upstream) and the schedules ``leading``, ``trailing``, ``karras-n`` and
  ``karras-t`` (three of which do not end at t = 0) are not offered; ``linspace`` and
  ``linear-lambda`` are.

Randomness (SDE solver only): one standard normal draw shaped like the state per step, from
``generator`` as in :mod:`derain_cli.sde`. Nothing returns NaN for valid inputs: lambda_min must
leave at least one time step, and every division is by alpha or sigma at a time > 0 or by h > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from derain_cli.sde import Denoiser, Prediction, StepCallback, _randn_like

Solver = Literal["ode", "sde"]
Parameterization = Literal["data", "noise"]
TimeSchedule = Literal["linspace", "linear-lambda"]
SOLVERS = ("ode", "sde")
PARAMETERIZATIONS = ("data", "noise")
ORDERS = (1, 2)
FULL_ORDER_STEPS = 10  # below this many steps, step N - 1 drops to first order (as upstream)


@dataclass(frozen=True)
class MarsOptions:
    """Settings of the MaRS sampler; the defaults are the official ``mrsampler.yml``.

    solver: ``"ode"`` (deterministic) or ``"sde"`` (one noise draw per step).
    parameterization: solve in terms of the clean-image estimate (``"data"``) or the noise (``"noise"``).
    order: 1 or 2 (multistep: the second order reuses the previous network output).
    lambda_min: lower clip of lambda_t = log(alpha_t / sigma_t): sampling starts at the last time
        whose lambda is not below it (for max_sigma 50, T 100, eps 0.005 nothing is clipped).
    time_schedule: ``"linspace"`` (uniform in t) or ``"linear-lambda"`` (uniform in lambda).
    thresholding: dynamic thresholding of each network output: clip to [-s, s] and divide by s, s
        the ``threshold_ratio`` quantile of |output| per image, clamped to [1, ``threshold_max``].
    denoise_last: replace the last step by the clean-image estimate at the last but one time.
    """

    solver: Solver = "ode"
    parameterization: Parameterization = "data"
    order: int = 2
    lambda_min: float = -5.0
    time_schedule: TimeSchedule = "linspace"
    thresholding: bool = False
    threshold_ratio: float = 0.995
    threshold_max: float = 1.5
    denoise_last: bool = False

    def __post_init__(self) -> None:
        _check_choice("solver", self.solver, SOLVERS)
        _check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        _check_choice("order", self.order, ORDERS)
        _check_choice("time_schedule", self.time_schedule, tuple(TIME_SCHEDULES))
        if math.isnan(self.lambda_min) or self.lambda_min == math.inf:
            raise ValueError(f"lambda_min must be a number or -inf, got {self.lambda_min}")
        if not 0 < self.threshold_ratio <= 1:
            raise ValueError(f"threshold_ratio must lie in (0, 1], got {self.threshold_ratio}")
        if not self.threshold_max >= 1:
            raise ValueError(f"threshold_max must be at least 1, got {self.threshold_max}")


def _check_choice(name: str, value: object, choices: tuple) -> None:
    """Raise ValueError naming the valid choices unless ``value`` is one of them."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"unknown MaRS {name} {value!r}; choose from {list(choices)}")


# -- schedule tables ---------------------------------------------------------------------------


class MarsTables(NamedTuple):
    """alpha_t, sigma_t and lambda_t = log alpha_t - log sigma_t at the integer times 0..T."""

    alpha: Tensor
    sigma: Tensor
    lam: Tensor


def mars_tables(thetas: Tensor, max_sigma: float, eps: float) -> MarsTables:
    """mr-sampler's IR-SDE tables: theta_bar_t = sum_{s<=t} theta_s, with no theta_0 subtracted.

    dt makes alpha_T = exp(-theta_bar_T dt) = eps; alpha_t = exp(-theta_bar_t dt) and
    sigma_t = max_sigma sqrt(1 - alpha_t^2) (``max_sigma`` on the image scale, as IRSDE holds it).
    """
    thetas_cumsum = torch.cumsum(thetas.float(), dim=0)
    dt = -1 / thetas_cumsum[-1] * math.log(eps)
    alpha = torch.exp(-thetas_cumsum * dt)
    sigma = torch.sqrt(max_sigma**2 * (1 - torch.exp(-2 * thetas_cumsum * dt)))
    return MarsTables(alpha, sigma, torch.log(alpha) - torch.log(sigma))


def interpolate(x: Tensor, xp: Tensor, yp: Tensor) -> Tensor:
    """Piecewise-linear y(x) through the points (xp, yp), xp increasing; linear beyond both ends."""
    j = (torch.searchsorted(xp, x, right=True) - 1).clamp(0, len(xp) - 2)
    x0, x1, y0, y1 = xp[j], xp[j + 1], yp[j], yp[j + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def time_grid(tables: MarsTables) -> Tensor:
    """The integer times 0..T of the tables, as float32."""
    T = len(tables.lam) - 1
    return torch.linspace(0, T, T + 1, dtype=torch.float32)


def max_time(lam: Tensor, lambda_min: float) -> int:
    """The last whole time whose lambda_t is not below ``lambda_min`` (lambda falls with t)."""
    return len(lam) - 1 - int((lam < lambda_min).sum())


def linspace_times(tables: MarsTables, lambda_min: float, steps: int) -> Tensor:
    """steps + 1 times evenly spaced from t_max down to 0 (the official ``linspace``)."""
    return torch.linspace(0, max_time(tables.lam, lambda_min), steps + 1, dtype=torch.float32).flip(0)


def linear_lambda_times(tables: MarsTables, lambda_min: float, steps: int) -> Tensor:
    """steps + 1 times evenly spaced in lambda, from max(lambda_T, lambda_min) up to lambda_0."""
    low = max(tables.lam.min().item(), lambda_min)
    lams = torch.linspace(low, tables.lam.max().item(), steps + 1, dtype=torch.float32)
    return interpolate(lams, tables.lam.flip(0), time_grid(tables).flip(0))


TIME_SCHEDULES: dict[str, Callable[[MarsTables, float, int], Tensor]] = {
    "linspace": linspace_times,
    "linear-lambda": linear_lambda_times,
}


def step_orders(steps: int, order: int) -> list[int]:
    """Order of steps 1..N: first order first; with N < 10 also at step N - 1 (as upstream)."""
    orders = []
    for i in range(1, steps + 1):
        k = min(order, i)
        if steps < FULL_ORDER_STEPS and i < steps:
            k = min(k, steps - i)
        orders.append(k)
    return orders


# -- network outputs ---------------------------------------------------------------------------


def data_from_output(out: Tensor, x: Tensor, mu: Tensor, alpha: Tensor, sigma: Tensor,
                     prediction: Prediction) -> Tensor:
    """Clean-image estimate from the output: x_0 = (x_t - mu - sigma_t eps) / alpha_t + mu for a noise model."""
    return out if prediction == "x0" else (x - mu - sigma * out) / alpha + mu


def noise_from_output(out: Tensor, x: Tensor, mu: Tensor, alpha: Tensor, sigma: Tensor,
                      prediction: Prediction) -> Tensor:
    """Noise estimate from the output: eps = (x_t - mu - alpha_t (x_0 - mu)) / sigma_t for an x0 model."""
    return out if prediction == "noise" else (x - mu - alpha * (out - mu)) / sigma


def dynamic_threshold(output: Tensor, ratio: float, max_value: float) -> Tensor:
    """Imagen's dynamic thresholding: clamp to [-s, s] / s, s = ratio-quantile of |output| in [1, max]."""
    flat = output.float().reshape(len(output), -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value)[:, None]
    return (torch.clamp(flat, -s, s) / s).reshape(output.shape).to(output.dtype)


# -- solver steps ------------------------------------------------------------------------------


class Step(NamedTuple):
    """Schedule values at the start s and end t of one step, and h = lambda_t - lambda_s > 0."""

    alpha_s: Tensor
    alpha_t: Tensor
    sigma_s: Tensor
    sigma_t: Tensor
    h: Tensor


def ode_data_step(x: Tensor, mu: Tensor, x0: Tensor, d1: Tensor | None, k: Step) -> Tensor:
    """MR-ODE solver with data prediction, from s to t:

    x_t = (sigma_t/sigma_s) x_s + mu (1 - sigma_t/sigma_s + (sigma_t/sigma_s) alpha_s - alpha_t)
          + alpha_t (1 - e^-h) x0_s [+ alpha_t ((e^-h - 1)/h + 1) d1],

    ``x0`` the clean-image estimate at s, d1 = (x0_s - x0_prev) / r with r = h_prev / h (order 2).
    """
    ratio = k.sigma_t / k.sigma_s
    phi1 = 1 - torch.exp(-k.h)
    x_t = ratio * x + mu * (1 - ratio + ratio * k.alpha_s - k.alpha_t) + k.alpha_t * phi1 * x0
    if d1 is not None:
        x_t = x_t + k.alpha_t * (1 - phi1 / k.h) * d1
    return x_t


def ode_noise_step(x: Tensor, mu: Tensor, eps: Tensor, e1: Tensor | None, k: Step) -> Tensor:
    """MR-ODE solver with noise prediction, from s to t:

    x_t = (alpha_t/alpha_s) x_s + mu (1 - alpha_t/alpha_s) - sigma_t (e^h - 1) eps_s
          [- sigma_t ((e^h - 1)/h - 1) e1],  e1 = (eps_s - eps_prev) / r (order 2).
    """
    ratio = k.alpha_t / k.alpha_s
    phi1 = torch.exp(k.h) - 1
    x_t = ratio * x + mu * (1 - ratio) - k.sigma_t * phi1 * eps
    if e1 is not None:
        x_t = x_t - k.sigma_t * (phi1 / k.h - 1) * e1
    return x_t


def sde_data_step(x: Tensor, mu: Tensor, x0: Tensor, d1: Tensor | None, k: Step, z: Tensor) -> Tensor:
    """MR-SDE solver with data prediction, from s to t, with z ~ N(0, I):

    x_t = (sigma_t/sigma_s) e^-h x_s + mu (1 - (alpha_t/alpha_s) e^-2h - alpha_t (1 - e^-2h))
          + alpha_t (1 - e^-2h) x0_s [+ alpha_t (1 - (1 - e^-2h)/2h) d1] + sigma_t sqrt(1 - e^-2h) z.
    """
    phi1 = 1 - torch.exp(-2 * k.h)
    x_t = (k.sigma_t / k.sigma_s * torch.exp(-k.h) * x + k.alpha_t * phi1 * x0
           + mu * (1 - k.alpha_t / k.alpha_s * torch.exp(-2 * k.h) - k.alpha_t * phi1))
    if d1 is not None:
        x_t = x_t + k.alpha_t * (1 - phi1 / (2 * k.h)) * d1
    return x_t + k.sigma_t * torch.sqrt(phi1) * z


def sde_noise_step(x: Tensor, mu: Tensor, eps: Tensor, e1: Tensor | None, k: Step, z: Tensor) -> Tensor:
    """MR-SDE solver with noise prediction, from s to t, with z ~ N(0, I):

    x_t = (alpha_t/alpha_s) x_s + mu (1 - alpha_t/alpha_s) - 2 sigma_t (e^h - 1) eps_s
          [- 2 sigma_t ((e^h - 1)/h - 1) e1] + sigma_t sqrt(e^2h - 1) z.
    """
    ratio = k.alpha_t / k.alpha_s
    phi1 = torch.exp(k.h) - 1
    x_t = ratio * x + mu * (1 - ratio) - 2 * k.sigma_t * phi1 * eps
    if e1 is not None:
        x_t = x_t - 2 * k.sigma_t * (phi1 / k.h - 1) * e1
    return x_t + k.sigma_t * torch.sqrt(torch.exp(2 * k.h) - 1) * z


# -- the sampling loop -------------------------------------------------------------------------


def sample_mars(denoiser: Denoiser, mu: Tensor, x_T: Tensor, tables: MarsTables, steps: int,
                options: MarsOptions = MarsOptions(), prediction: Prediction = "noise",
                generator: torch.Generator | None = None, callback: StepCallback | None = None,
                **context: Tensor) -> Tensor:
    """Restore ``mu`` from the start state ``x_T`` with MaRS in ``steps`` network calls, clipped to [0, 1].

    ``denoiser(x_t, mu, t, **context)`` gets t as a float32 tensor of shape [B] on the 0..T scale
    of ``tables`` and returns the noise (``prediction="noise"``) or the clean image (``"x0"``);
    ``callback(i, steps)`` runs after each call.
    """
    if steps < 1:
        raise ValueError(f"MaRS needs at least one step, got {steps}")
    if max_time(tables.lam, options.lambda_min) < 1:
        raise ValueError(f"lambda_min {options.lambda_min} leaves no time to sample; "
                         f"choose one below lambda_1 = {tables.lam[1].item():.4f}")
    times = TIME_SCHEDULES[options.time_schedule](tables, options.lambda_min, steps)
    grid = time_grid(tables)
    alpha, sigma, lam = (interpolate(times, grid, table) for table in tables)
    data = options.parameterization == "data"

    def model_output(x: Tensor, i: int, as_data: bool) -> Tensor:
        """The network output at times[i] as the solver's variable (x_0 or eps), thresholded if asked."""
        t = torch.full((len(x),), times[i].item(), dtype=torch.float32, device=x.device)
        out = denoiser(x, mu, t, **context).float()
        convert = data_from_output if as_data else noise_from_output
        q = convert(out, x, mu, alpha[i], sigma[i], prediction)
        if options.thresholding:
            q = dynamic_threshold(q, options.threshold_ratio, options.threshold_max)
        if callback is not None:
            callback(i + 1, steps)
        return q

    x = x_T.float()
    last = steps - 1 if options.denoise_last else steps
    q_prev = None
    for i, order in zip(range(1, last + 1), step_orders(steps, options.order)):
        q = model_output(x, i - 1, data)
        k = Step(alpha[i - 1], alpha[i], sigma[i - 1], sigma[i], lam[i] - lam[i - 1])
        q1 = None if order == 1 else (q - q_prev) / ((lam[i - 1] - lam[i - 2]) / k.h)
        if options.solver == "ode":
            x = (ode_data_step if data else ode_noise_step)(x, mu, q, q1, k)
        else:
            z = _randn_like(x, generator)
            x = (sde_data_step if data else sde_noise_step)(x, mu, q, q1, k, z)
        q_prev = q
    if options.denoise_last:
        x = model_output(x, steps - 1, True)
    return x.clamp(0, 1)
