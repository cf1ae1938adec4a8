"""The mean-reverting SDE of IR-SDE (Luo et al., ICML 2023) and its samplers.

    dx = theta_t (mu - x) dt + sigma_t dw,        sigma_t^2 / theta_t = 2 lambda^2   (eq. 1-2)

`mu` is the degraded image, `lambda` (``max_sigma``) the stationary noise level. Time steps are
integers 1..T as in the reference code; index 0 of every schedule table is the clean state.
The object only holds the schedule: the network comes in as a denoiser callable on every call,
``denoiser(x_t, mu, t, **context) -> predicted noise``, and no per-call state is stored.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Literal, Protocol, Sequence, Union

import torch
from torch import Tensor

from derain_cli.card import PREDICTIONS, SAMPLERS  # noqa: F401 - the choices, defined once in the card
from derain_cli.card import SCHEDULES as SCHEDULE_NAMES

if TYPE_CHECKING:
    from derain_cli.mars import MarsOptions

Schedule = Literal["cosine", "linear", "constant"]
Sampler = Literal["posterior", "sde", "ode", "mr"]
Prediction = Literal["noise", "x0"]
StepCallback = Callable[[int, int], None]
# One generator draws the noise of the whole batch; a sequence holds one generator per image, so
# that each image's noise does not depend on the batch it is in.
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


class Denoiser(Protocol):
    """A noise-prediction network: ``denoiser(x_t, mu, t, **context)`` returns epsilon."""

    def __call__(self, x_t: Tensor, mu: Tensor, t: Tensor, **context: Tensor) -> Tensor: ...


def cosine_thetas(T: int, s: float = 0.008) -> Tensor:
    """theta_0..theta_T from the cosine schedule (Nichol & Dhariwal), truncated as the reference."""
    n = T + 2
    x = torch.linspace(0, n, n + 1, dtype=torch.float32)
    alphas_cumprod = torch.cos(((x / n) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return 1 - alphas_cumprod[1:-1]


def linear_thetas(T: int) -> Tensor:
    """theta_0..theta_T rising linearly from 1e-4 to 2e-2, scaled by 1000 / (T + 1)."""
    scale = 1000 / (T + 1)
    return torch.linspace(scale * 0.0001, scale * 0.02, T + 1, dtype=torch.float32)


def constant_thetas(T: int) -> Tensor:
    """theta_0..theta_T all equal to one."""
    return torch.ones(T + 1, dtype=torch.float32)


SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "cosine": cosine_thetas,
    "linear": linear_thetas,
    "constant": constant_thetas,
}
assert tuple(SCHEDULES) == SCHEDULE_NAMES, "the card's schedule names and these tables must agree"


def _at(table: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """Schedule values at time indices ``t``, shaped to broadcast over a [B, C, H, W] batch."""
    values = table.to(like.device)[t]
    return values.reshape(-1, *([1] * (like.dim() - 1))) if values.dim() else values


class IRSDE:
    """Schedule tables of the IR-SDE with ``T`` steps; ``max_sigma`` is on the 0-255 scale if >= 1."""

    def __init__(self, max_sigma: float = 50.0, T: int = 100, schedule: Schedule = "cosine",
                 eps: float = 0.005) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.config = {"max_sigma": max_sigma, "T": T, "schedule": schedule, "eps": eps}
        self.T = T
        self.max_sigma = max_sigma / 255 if max_sigma >= 1 else max_sigma
        self.thetas = SCHEDULES[schedule](T)
        self.sigmas = torch.sqrt(self.max_sigma**2 * 2 * self.thetas)
        # The reference subtracts theta_0 so that the cumulative sum is zero at the clean state.
        self.thetas_cumsum = torch.cumsum(self.thetas, dim=0) - self.thetas[0]
        # dt is chosen so that exp(-theta_bar_T dt) = eps: the state has (almost) reached mu at T.
        dt = -1 / self.thetas_cumsum[-1] * math.log(eps)
        self.dt = float(dt)
        self.sigma_bars = torch.sqrt(self.max_sigma**2 * (1 - torch.exp(-2 * self.thetas_cumsum * dt)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"IRSDE({args})"

    # -- closed forms -------------------------------------------------------------------------

    def mu_bar(self, x0: Tensor, mu: Tensor, t: Tensor | int) -> Tensor:
        """Mean of x_t given x_0: mu + (x_0 - mu) exp(-theta_bar_t dt) (eq. 4)."""
        return mu + (x0 - mu) * torch.exp(-_at(self.thetas_cumsum, t, x0) * self.dt)

    def sigma_bar(self, t: Tensor | int, like: Tensor) -> Tensor:
        """Standard deviation of x_t given x_0 (eq. 5), broadcastable against ``like``."""
        return _at(self.sigma_bars, t, like)

    def noisy_state(self, x0: Tensor, mu: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = mu_bar_t + sigma_bar_t * noise, the training input at time ``t``."""
        return self.mu_bar(x0, mu, t) + self.sigma_bar(t, x0) * noise

    def true_noise(self, x_t: Tensor, x0: Tensor, mu: Tensor, t: Tensor | int) -> Tensor:
        """The noise that produced x_t from x_0: (x_t - mu_bar_t) / sigma_bar_t."""
        return (x_t - self.mu_bar(x0, mu, t)) / self.sigma_bar(t, x_t)

    def x0_from_noise(self, x_t: Tensor, mu: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """Clean image implied by a noise estimate: (x_t - mu - sigma_bar_t eps) e^{theta_bar_t dt} + mu."""
        grow = torch.exp(_at(self.thetas_cumsum, t, x_t) * self.dt)
        return (x_t - mu - self.sigma_bar(t, x_t) * noise) * grow + mu

    def score_from_noise(self, noise: Tensor, t: Tensor | int) -> Tensor:
        """Score of p(x_t | x_0) from the predicted noise: -eps / sigma_bar_t."""
        return -noise / self.sigma_bar(t, noise)

    def optimal_posterior_mean(self, x_t: Tensor, x0: Tensor, mu: Tensor, t: Tensor | int) -> Tensor:
        """Mean of x_{t-1} given x_t and x_0, the maximum-likelihood target (eq. 11-12)."""
        a = torch.exp(-_at(self.thetas, t, x_t) * self.dt)
        b = torch.exp(-_at(self.thetas_cumsum, t, x_t) * self.dt)
        c = torch.exp(-_at(self.thetas_cumsum, t - 1, x_t) * self.dt)
        coef_t = a * (1 - c**2) / (1 - b**2)
        coef_0 = c * (1 - a**2) / (1 - b**2)
        return coef_t * (x_t - mu) + coef_0 * (x0 - mu) + mu

    def optimal_posterior_std(self, t: int) -> Tensor:
        """Standard deviation of x_{t-1} given x_t and x_0 on the image scale, clamped as the reference."""
        a = torch.exp(-2 * self.thetas[t] * self.dt)
        b = torch.exp(-2 * self.thetas_cumsum[t] * self.dt)
        c = torch.exp(-2 * self.thetas_cumsum[t - 1] * self.dt)
        variance = (1 - a) * (1 - c) / (1 - b)
        log_variance = torch.log(torch.clamp(variance, min=1e-20 * self.dt))
        return (0.5 * log_variance).exp() * self.max_sigma

    def reverse_sde_mean(self, x_t: Tensor, mu: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """Euler-Maruyama mean of x_{t-1}: x_t - (theta_t (mu - x_t) - sigma_t^2 score) dt (eq. 7)."""
        score = self.score_from_noise(noise, t)
        theta, sigma = _at(self.thetas, t, x_t), _at(self.sigmas, t, x_t)
        return x_t - (theta * (mu - x_t) - sigma**2 * score) * self.dt

    # -- sampling -----------------------------------------------------------------------------

    def noise_state(self, mu: Tensor, generator: Generators = None) -> Tensor:
        """Start of the reverse process: mu + max_sigma * N(0, I), as the reference."""
        return mu + _randn_like(mu, generator) * self.max_sigma

    def step(self, x_t: Tensor, mu: Tensor, noise: Tensor, t: int, sampler: Sampler = "posterior",
             generator: Generators = None) -> Tensor:
        """One reverse step x_t -> x_{t-1} from a noise estimate, with the chosen sampler."""
        if sampler == "posterior":
            x0 = self.x0_from_noise(x_t, mu, noise, t)
            mean = self.optimal_posterior_mean(x_t, x0, mu, t)
            return mean + self.optimal_posterior_std(t) * _randn_like(x_t, generator)
        theta, sigma = self.thetas[t], self.sigmas[t]
        score = self.score_from_noise(noise, t)
        if sampler == "sde":
            drift = (theta * (mu - x_t) - sigma**2 * score) * self.dt
            return x_t - drift - sigma * (_randn_like(x_t, generator) * math.sqrt(self.dt))
        if sampler == "ode":
            return x_t - (theta * (mu - x_t) - 0.5 * sigma**2 * score) * self.dt
        raise ValueError(f"unknown sampler {sampler!r}; choose from {list(SAMPLERS)}")

    def with_steps(self, steps: int) -> IRSDE:
        """The same SDE discretised with ``steps`` steps (the reference's ``sample_T``)."""
        cfg = dict(self.config, T=steps)
        return IRSDE(**cfg)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, lq: Tensor, steps: int | None = None,
               sampler: Sampler = "posterior", generator: Generators = None,
               x_T: Tensor | None = None, callback: StepCallback | None = None,
               prediction: Prediction = "noise", mr_options: MarsOptions | None = None,
               **context: Tensor) -> Tensor:
        """Restore ``lq`` by integrating the reverse SDE from x_T = lq + max_sigma N(0, I) to x_0.

        With ``steps`` other than T the schedule is rebuilt with that many steps and the network
        sees times scaled by T / steps, exactly as the reference's ``sample_T``; the times are then
        floats unless T is a multiple of ``steps``. ``callback(i, n)`` is called after each step.
        With ``prediction="x0"`` the denoiser returns the clean image, turned into the noise it
        implies at this step (the posterior sampler then recovers that clean image exactly).

        ``generator``: one generator for the whole batch, one per image (a sequence), or None for
        the global RNG.

        ``sampler="mr"`` runs MaRS (:func:`derain_cli.mars.sample_mars`) with ``mr_options``
        (default ``MarsOptions()``, the official mrsampler.yml): ``steps`` network calls on the
        0..T time scale, no rebuilt schedule, result clipped to [0, 1].
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {list(SAMPLERS)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose from {list(PREDICTIONS)}")
        if mr_options is not None and sampler != "mr":
            raise ValueError(f"mr_options apply to sampler 'mr' only, not {sampler!r}")
        steps = self.T if steps is None else steps
        if sampler == "mr":
            return self._sample_mars(denoiser, lq, steps, generator, x_T, callback, prediction,
                                     mr_options, **context)
        sde = self if steps == self.T else self.with_steps(steps)
        scale = self.T / steps
        x = self.noise_state(lq, generator) if x_T is None else x_T.clone()
        for i, t in enumerate(range(steps, 0, -1)):
            times = _model_times(t, scale, len(x), x.device)
            out = denoiser(x, lq, times, **context).float()
            noise = sde.true_noise(x, out, lq, t) if prediction == "x0" else out
            x = sde.step(x, lq, noise, t, sampler, generator)
            if callback is not None:
                callback(i + 1, steps)
        return x

    def _sample_mars(self, denoiser: Denoiser, lq: Tensor, steps: int,
                     generator: Generators, x_T: Tensor | None,
                     callback: StepCallback | None, prediction: Prediction,
                     options: MarsOptions | None, **context: Tensor) -> Tensor:
        """MaRS from x_T (drawn as for the other samplers when not given) on mr-sampler's tables."""
        from derain_cli import mars  # mars builds on this module, so it is imported on use

        tables = mars.mars_tables(self.thetas, self.max_sigma, self.config["eps"])
        x = self.noise_state(lq, generator) if x_T is None else x_T.clone()
        return mars.sample_mars(denoiser, lq, x, tables, steps, options or mars.MarsOptions(),
                                prediction, generator, callback, **context)


def _model_times(t: int, scale: float, batch: int, device: torch.device) -> Tensor:
    """Times handed to the network: integers when ``t * scale`` is whole, floats otherwise."""
    value = t * scale
    dtype = torch.long if float(value).is_integer() else torch.float32
    return torch.full((batch,), value, dtype=dtype, device=device)


def _randn_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like ``x``: from ``generator``, one generator per image, or the global RNG."""
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return _randn(x.shape, generator, x)
    if len(generator) != len(x):
        raise ValueError(f"got {len(generator)} generators for a batch of {len(x)} images")
    return torch.cat([_randn((1, *x.shape[1:]), g, x) for g in generator])


def _randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal noise of ``shape`` drawn by ``generator``, on ``like``'s device and dtype."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
