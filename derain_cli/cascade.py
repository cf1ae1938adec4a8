"""A cascade: a pipeline run again on its own output, for the images its previous pass changed a lot.

Each further pass sees the previous output rounded to 8 bits, as if it had been saved and run again.
With thresholds (``CascadeCard.repeat_above``) an image gets a further pass only when the previous
pass changed it by more than the threshold (mean absolute difference, 0-255 scale): heavy rain,
which one pass leaves partly in place, and not light rain, which a second pass would only blur.
The bundled `compact` model is such a cascade, with a second U-Net for the further passes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from derain_cli.card import CascadeCard
from derain_cli.errors import DerainError
from derain_cli.pipeline import DerainPipeline, SampleOptions, conditioning_of, restore_image
from derain_cli.sde import StepCallback


class Cascade:
    """``first`` once, then ``further`` (default: ``first`` again) up to ``card.passes`` runs in all."""

    def __init__(self, first: DerainPipeline, card: CascadeCard, further: DerainPipeline | None = None) -> None:
        further = further or first
        if conditioning_of(further.unet.config) != conditioning_of(first.unet.config):
            raise DerainError("the U-Net for further passes must take the same conditioning as the first")
        if further.card.sde != first.card.sde or further.prediction != first.prediction:
            raise DerainError("the U-Net for further passes must use the same SDE and prediction as the first")
        self.first, self.further, self.cascade = first, further, card

    @property
    def card(self):
        """The first pipeline's model card (the defaults of every pass)."""
        return self.first.card

    @property
    def device(self) -> torch.device:
        """Where the networks run."""
        return self.first.device

    @property
    def dtype(self) -> torch.dtype:
        """The networks' compute precision."""
        return self.first.dtype

    def options(self, **changes) -> SampleOptions:
        """Sampling options with the model's defaults, then ``changes`` (as ``DerainPipeline.options``)."""
        return self.first.options(**changes)

    @torch.no_grad()
    def restore(self, lq: Tensor, options: SampleOptions | None = None,
                callback: StepCallback | None = None, image_indices: Sequence[int] | None = None) -> Tensor:
        """Restore a [B, 3, H, W] batch in 0..1 with up to ``passes`` runs; clamped to 0..1.

        Every pass draws an image's noise from the seed of its position (``image_indices``, default
        0..B-1), so an image's result does not depend on the other images of the batch.
        """
        positions = list(range(len(lq)) if image_indices is None else image_indices)
        out = self.first.restore(lq, options, callback, image_indices=positions)
        lq = lq.to(out.device, torch.float32)
        for done in range(1, self.cascade.passes):
            saved = torch.round(out * 255.0) / 255.0
            again = torch.ones(lq.shape[0], dtype=torch.bool, device=out.device)
            threshold = self.cascade.threshold(done)
            if threshold is not None:
                again = (saved - lq).abs().flatten(1).mean(1) * 255.0 > threshold
            if not again.any():
                break
            out = out.clone()
            indices = [positions[i] for i in again.nonzero().flatten().tolist()]
            out[again] = self.further.restore(saved[again], options, callback, image_indices=indices)
            lq = saved
        return out

    def __call__(self, image, options: SampleOptions | None = None, callback: StepCallback | None = None):
        """Restore a PIL image or a tensor, as ``DerainPipeline.__call__``."""
        return restore_image(self, image, options, callback)
