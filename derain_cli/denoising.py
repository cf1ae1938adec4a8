"""What the samplers share: the denoiser they call, their progress callback, and the noise they draw.

A denoiser is the network as a callable, ``denoiser(x_t, mu, t, **context)``; the samplers
(``derain_cli.sde``, ``derain_cli.mars``) hold no network and no per-call state.
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol, Sequence, Union

import torch
from torch import Tensor

Prediction = Literal["noise", "x0"]
StepCallback = Callable[[int, int], None]
# One generator draws the noise of the whole batch; a sequence holds one generator per image, so
# that each image's noise does not depend on the batch it is in.
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


class Denoiser(Protocol):
    """A noise-prediction network: ``denoiser(x_t, mu, t, **context)`` returns epsilon."""

    def __call__(self, x_t: Tensor, mu: Tensor, t: Tensor, **context: Tensor) -> Tensor: ...


def randn_like(x: Tensor, generator: Generators) -> Tensor:
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
