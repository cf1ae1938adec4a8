"""Flip self-ensemble of a denoiser: the mean of its predictions on mirrored copies of the image.

Each network call runs on the image as it is and on its mirror images (left-right, then also
upside-down and both), and the predictions, mirrored back, are averaged. This is the geometric
self-ensemble of the restoration literature restricted to flips: rain falls roughly downwards in
every mirror image, whereas the transposes (the 90-degree rotations of the full 8-fold ensemble)
turn the streaks sideways, which the bundled model never saw and does worse on. Not part of the
published models' sampling: an option beside it, at ``n`` times the cost of a call.
"""

from __future__ import annotations

from torch import Tensor

from derain_cli.card import ENSEMBLE_SIZES
from derain_cli.sde import Denoiser

# (mirror left-right, mirror upside-down) for each member, in order; an n-member ensemble uses the first n.
FLIPS = ((False, False), (True, False), (False, True), (True, True))


def _flip(x: Tensor, horizontal: bool, vertical: bool) -> Tensor:
    """Mirror the last two dimensions; its own inverse."""
    dims = [d for d, on in ((-1, horizontal), (-2, vertical)) if on]
    return x.flip(dims) if dims else x


class FlipEnsemble:
    """Wraps a denoiser so that each call averages its predictions over ``size`` mirror images.

    Context tensors (DA-CLIP embeddings of the whole image) are passed unchanged to every member.
    """

    def __init__(self, denoiser: Denoiser, size: int) -> None:
        if size not in ENSEMBLE_SIZES:
            raise ValueError(f"ensemble size must be one of {list(ENSEMBLE_SIZES)}, got {size}")
        self.denoiser = denoiser
        self.flips = FLIPS[:size]

    def __call__(self, x_t: Tensor, mu: Tensor, t: Tensor, **context: Tensor) -> Tensor:
        """The mean prediction over the mirror images, mirrored back to the image's orientation."""
        total = None
        for horizontal, vertical in self.flips:
            pred = self.denoiser(_flip(x_t, horizontal, vertical), _flip(mu, horizontal, vertical), t, **context)
            pred = _flip(pred.float(), horizontal, vertical)
            total = pred if total is None else total + pred
        return total / len(self.flips)
