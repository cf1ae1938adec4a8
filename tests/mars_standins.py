"""Stand-in networks and inputs the MaRS golden data (tests/golden/mars_reference.safetensors) was made with.

The noise stand-ins are the true noise under derain's MaRS tables (pinned to the official ones by
the golden ``table.*`` entries) plus a smooth error, so that trajectories stay near the clean image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from derain_cli.mars import MarsTables, interpolate, time_grid
from derain_cli.unet import ConditionalUNet

SHAPE = (1, 3, 8, 8)
NOISE_SEED = 1234  # generator seed of the SDE solver's noise draws, fresh for every case
UNET = {"nf": 16, "ch_mult": [1, 2], "context_dim": None, "use_degra_context": False,
        "use_image_context": False}


def _t(t: Tensor) -> Tensor:
    """Times as a float32 [B, 1, 1, 1] column."""
    return torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)


def true_noise(clean: Tensor, tables: MarsTables) -> callable:
    """The noise an oracle returns: (x_t - mu - alpha_t (clean - mu)) / sigma_t, tables interpolated at t."""
    grid = time_grid(tables)

    def denoiser(x: Tensor, mu: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
        alpha, sigma = (_t(interpolate(t, grid, table)) for table in tables[:2])
        return (x - mu - alpha * (clean - mu)) / sigma

    return denoiser


def analytic_noise(clean: Tensor, tables: MarsTables) -> callable:
    """The true noise plus a smooth error that depends on x_t, mu and t."""
    oracle = true_noise(clean, tables)
    return lambda x, mu, t: oracle(x, mu, t) + 0.2 * torch.tanh(3 * (x - mu)) + 0.05 * torch.sin(_t(t) / 7)


def analytic_x0(clean: Tensor) -> callable:
    """The clean image plus a smooth error that depends on x_t, mu and t."""
    return lambda x, mu, t: clean + 0.05 * torch.tanh(2 * (x - mu)) + 0.0003 * _t(t)


def tiny_unet() -> ConditionalUNet:
    """The plain tiny U-Net with every parameter seeded normal x fan_in^-1/2 (x 0.5 for 1-d), sorted keys."""
    model = ConditionalUNet(**UNET).eval()
    g = torch.Generator().manual_seed(2025)
    state = {}
    for key, value in sorted(model.state_dict().items()):
        scale = (value[0].numel() ** -0.5) if value.dim() >= 2 else 0.5
        state[key] = torch.randn(value.shape, generator=g) * scale
    model.load_state_dict(state)
    return model


def unet_noise(model: ConditionalUNet, clean: Tensor, tables: MarsTables) -> callable:
    """The true noise plus 0.2 times the U-Net's output."""
    oracle = true_noise(clean, tables)
    return lambda x, mu, t: oracle(x, mu, t) + 0.2 * model(x, mu, t)


def unet_x0(model: ConditionalUNet, clean: Tensor) -> callable:
    """The clean image plus 0.03 times the U-Net's output."""
    return lambda x, mu, t: clean + 0.03 * model(x, mu, t)


def standin(net: str, prediction: str, clean: Tensor, tables: MarsTables, model: ConditionalUNet) -> callable:
    """The stand-in named by a golden case: ``net`` analytic or unet, noise or x0 ``prediction``."""
    if net == "analytic":
        return analytic_noise(clean, tables) if prediction == "noise" else analytic_x0(clean)
    return unet_noise(model, clean, tables) if prediction == "noise" else unet_x0(model, clean)


def inputs(max_sigma: float) -> dict[str, Tensor]:
    """Degraded image mu, clean image and start state x_T = mu + max_sigma N(0, I) (max_sigma on 0-1)."""
    g = torch.Generator().manual_seed(7)
    clean = 0.1 + 0.8 * torch.rand(SHAPE, generator=g)
    mu = clean + 0.1 * torch.rand(SHAPE, generator=g)  # 'rain' brightens
    x_T = mu + max_sigma * torch.randn(SHAPE, generator=g)
    return {"mu": mu, "clean": clean, "x_T": x_T}
