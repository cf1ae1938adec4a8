"""The deraining pipeline: one U-Net, optional DA-CLIP conditioning, the IR-SDE sampler, tiles, ensemble.

One call is one sampler run; running a model again on its own output is the cascade's job
(``derain_cli.cascade``). The pipeline carries its model card, so the defaults a library user gets
(steps, sampler, tile) are the ones the CLI uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from derain_cli.card import ENSEMBLE_SIZES, PREDICTIONS, SAMPLERS, ModelCard, SDESettings
from derain_cli.devices import free_memory_bytes
from derain_cli.ensemble import FlipEnsemble
from derain_cli.errors import DerainError, NonFiniteError
from derain_cli.mars import MarsOptions
from derain_cli.sde import IRSDE, Sampler, StepCallback
from derain_cli.tiling import TiledDenoiser, auto_tile_size
from derain_cli.unet import ConditionalUNet

if TYPE_CHECKING:  # open_clip is slow to import: only pipelines with DA-CLIP pay for it
    from derain_cli.daclip import DACLIP

TileOption = Union[int, Literal["auto"], None]
# Share of the free memory that automatic tiling may plan for (the rest is the state, the
# model and the allocator's slack).
MEMORY_BUDGET_SHARE = 0.5
# An image whose longer side exceeds this many of the model's own tiles has rain streaks far wider
# than the crops such a model was trained on: measured with `compact` (128-px tiles) on the cat
# example scaled up 3x and 6x, a pass changed it by 22 and 10 (0-255 scale) against 33 at its size.
LARGE_IMAGE_TILES = 8
FP16_ON_CPU = "fp16 on the CPU is emulated and much slower than fp32 (use --precision fp32 or bf16)"


@dataclass(frozen=True)
class SampleOptions:
    """How to sample; ``None`` and ``"auto"`` mean the model's own choice (its card).

    ``steps`` and ``sampler``: the card's defaults when None (steps: else the SDE's T). ``seed``:
    image ``i`` of a batch draws its noise from its own generator, seeded by ``image_seed(seed, i)``,
    so a batch gives each image what restoring it alone with that seed gives; None: the global RNG.
    ``tile``:
    ``"auto"`` is the card's tile size, else the largest tile that fits the free memory (halved on a
    CUDA out-of-memory error); a number of pixels; or None for the whole image. ``ensemble`` > 1
    averages every network call over that many mirror images (see ``derain_cli.ensemble``).
    ``mr``: settings of the MaRS sampler (``sampler="mr"``; None: the official defaults). ``fast``:
    the model's fast path instead of ``steps`` and ``sampler`` (MaRS at 20 calls for the published
    models; see ``ModelCard.fast_sampling``).
    """

    steps: int | None = None
    sampler: Sampler | None = None
    seed: int | None = 0
    tile: TileOption = "auto"
    tile_overlap: int = 32
    ensemble: int = 1
    mr: MarsOptions | None = None
    fast: bool = False

    def __post_init__(self) -> None:
        if self.fast and (self.steps is not None or self.sampler is not None):
            raise ValueError("fast chooses the sampler and steps itself: give fast or steps/sampler, not both")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {list(SAMPLERS)}")
        if self.ensemble not in ENSEMBLE_SIZES:
            raise ValueError(f"ensemble must be one of {list(ENSEMBLE_SIZES)}, got {self.ensemble}")
        if self.tile not in ("auto", None) and not (isinstance(self.tile, int) and self.tile > 0):
            raise ValueError(f"tile must be auto, None or a size in pixels, got {self.tile!r}")


class Restorer(Protocol):
    """What restores images: a pipeline, or a cascade of them."""

    card: ModelCard
    device: torch.device
    dtype: torch.dtype

    def restore(self, lq: Tensor, options: SampleOptions | None = None,
                callback: StepCallback | None = None, image_indices: Sequence[int] | None = None) -> Tensor: ...


def image_seed(seed: int, index: int) -> int:
    """The noise seed of image ``index`` of a batch: ``seed`` itself for the first, a hash of both otherwise."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"derain image seed {seed} {index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid torch seed


def image_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded by ``image_seed(seed, index)`` (device-independent noise)."""
    return [torch.Generator("cpu").manual_seed(image_seed(seed, index)) for index in indices]


def conditioning_of(config: dict) -> tuple:
    """What a U-Net takes besides the image: its DA-CLIP context size and which embeddings."""
    return config.get("context_dim") or None, bool(config.get("use_degra_context")), bool(config.get("use_image_context"))


class DerainPipeline:
    """Restores rainy images with an IR-SDE U-Net, optionally conditioned on DA-CLIP embeddings.

    Give either ``card`` (the SDE, prediction and defaults of a model) or ``sde`` and
    ``prediction``: what the U-Net outputs, the noise (the published models) or the clean image.
    """

    def __init__(self, unet: ConditionalUNet, sde: IRSDE | None = None, daclip: DACLIP | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 prediction: str | None = None, card: ModelCard | None = None) -> None:
        if card is not None and (sde is not None or prediction is not None):
            raise ValueError("give either a card or sde/prediction, not both")
        if card is None:
            sde = sde or IRSDE()
            card = ModelCard(sde=SDESettings(**sde.config), prediction=prediction or "noise")
        if card.prediction not in PREDICTIONS:
            raise DerainError(f"unknown prediction {card.prediction!r}; choose from {list(PREDICTIONS)}")
        self.card = card
        self.sde = sde or IRSDE(**vars(card.sde))
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet = unet.to(self.device).eval()
        self.daclip = daclip.to(self.device).eval() if daclip is not None else None
        if self.needs_daclip and self.daclip is None:
            raise DerainError("this U-Net is conditioned on DA-CLIP embeddings: give the DA-CLIP weights too")
        if self.device.type == "cpu" and dtype == torch.float16:
            warnings.warn(FP16_ON_CPU, stacklevel=2)

    @property
    def prediction(self) -> str:
        """What the U-Net outputs: ``noise`` or ``x0``."""
        return self.card.prediction

    @property
    def needs_daclip(self) -> bool:
        """Whether the U-Net takes DA-CLIP embeddings (degradation prompt or cross-attention)."""
        context_dim, degradation, image = conditioning_of(self.unet.config)
        return bool(context_dim) and (degradation or image)

    def options(self, **changes) -> SampleOptions:
        """Sampling options with this model's defaults spelled out, then ``changes``."""
        defaults = {"steps": self.card.steps or self.card.sde.T, "sampler": self.card.sampler}
        return SampleOptions(**{**defaults, **changes})

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the networks when a half dtype is chosen; the SDE state stays fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def conditioning(self, lq: Tensor) -> dict[str, Tensor]:
        """DA-CLIP content and degradation embeddings of the whole image, once per image."""
        if self.daclip is None or not self.needs_daclip:
            return {}
        from derain_cli.daclip import clip_preprocess

        with self._autocast():
            content, degradation = self.daclip.encode_image(clip_preprocess(lq, self.daclip.image_size), control=True)
        return {"image_context": content.float(), "text_context": degradation.float()}

    def denoiser(self, x_t: Tensor, mu: Tensor, t: Tensor, **context: Tensor) -> Tensor:
        """The U-Net's output (noise, or clean image: see ``prediction``) in the pipeline's precision, as fp32."""
        with self._autocast():
            return self.unet(x_t, mu, t, **context).float()

    def _tile_size(self, tile: TileOption, height: int, width: int) -> int | None:
        """The tile size to use: a given size, none, the card's, or the largest that fits the free memory."""
        if tile != "auto":
            return tile or None
        if self.card.tile is not None:
            return self.card.tile
        budget = int(free_memory_bytes(self.device) * MEMORY_BUDGET_SHARE)
        return auto_tile_size(self.unet.config, height, width, budget, torch.finfo(self.dtype).bits // 8)

    @torch.no_grad()
    def restore(self, lq: Tensor, options: SampleOptions | None = None,
                callback: StepCallback | None = None, image_indices: Sequence[int] | None = None) -> Tensor:
        """One sampler run on a [B, 3, H, W] batch in 0..1; returns the clean estimate clamped to 0..1.

        ``image_indices``: each image's position in the batch it came from, which picks its noise seed
        (default 0..B-1; a cascade's further pass on some images of a batch passes theirs). Images
        with a side below ``min_side`` are edge-padded to it for sampling and cropped back. Raises
        NonFiniteError when the sampler's result holds NaN or infinite values.
        """
        if lq.dim() != 4 or lq.shape[1] != 3:
            raise ValueError(f"expected a [B, 3, H, W] tensor, got shape {tuple(lq.shape)}")
        options = options or SampleOptions()
        sampler, steps = self.card.fast_sampling if options.fast else (options.sampler, options.steps)
        self.card.check_sampling(sampler, steps)
        sampler = sampler or self.card.sampler
        if options.mr is not None and sampler != "mr":
            raise ValueError(f"MaRS settings apply to the sampler 'mr', not {sampler!r}")
        lq = lq.to(self.device, torch.float32)
        context = self.conditioning(lq)
        height, width = lq.shape[-2:]
        self._warn_if_large(height, width)
        lq = F.pad(lq, (0, max(0, self.min_side - width), 0, max(0, self.min_side - height)), mode="replicate")
        tile = self._tile_size(options.tile, *lq.shape[-2:])
        denoiser = self.denoiser
        if tile is not None:
            denoiser = TiledDenoiser(denoiser, tile, options.tile_overlap, shrink_on_oom=options.tile == "auto")
        if options.ensemble > 1:
            denoiser = FlipEnsemble(denoiser, options.ensemble)
        generators = None
        if options.seed is not None:
            indices = range(len(lq)) if image_indices is None else image_indices
            generators = image_generators(options.seed, indices)
        steps = steps or self.card.steps
        out = self.sde.sample(denoiser, lq, steps=steps, sampler=sampler, generator=generators,
                              callback=callback, prediction=self.prediction,
                              mr_options=options.mr if sampler == "mr" else None, **context)
        if not torch.isfinite(out).all():
            precision = str(self.dtype).removeprefix("torch.")
            raise NonFiniteError(f"the {sampler} sampler at {steps or self.sde.T} step(s) in {precision} gave NaN or "
                                 "infinite values; try --precision fp32 or another --steps/--sampler")
        return out[..., :height, :width].clamp(0, 1)

    @property
    def min_side(self) -> int:
        """The smallest side sampled: shorter images are edge-padded to it, so the U-Net's lowest level has 2x2 pixels.

        A few pixels padded to the U-Net's multiple were mostly padding, with the image's own noise
        repeated: the bundled model turned 4x4 crops black.
        """
        return 2 ** (self.unet.depth + 1)

    def _warn_if_large(self, height: int, width: int) -> None:
        """Warn when a model that works in its own tiles gets an image many tiles wide (see LARGE_IMAGE_TILES)."""
        if self.card.tile is not None and max(height, width) > LARGE_IMAGE_TILES * self.card.tile:
            limit = LARGE_IMAGE_TILES * self.card.tile
            warnings.warn(f"{width}x{height} is more than {limit} px for a model working in {self.card.tile}-px tiles: "
                          f"rain streaks much wider than its training crops may stay; a copy downscaled below "
                          f"{limit} px may derain better", stacklevel=3)

    def __call__(self, image: Image.Image | Tensor, options: SampleOptions | None = None,
                 callback: StepCallback | None = None) -> Image.Image | Tensor:
        """Restore a PIL image (returns a PIL RGB image) or a [B, 3, H, W] / [3, H, W] tensor."""
        return restore_image(self, image, options, callback)


def restore_image(restorer: Restorer, image: Image.Image | Tensor, options: SampleOptions | None = None,
                  callback: StepCallback | None = None) -> Image.Image | Tensor:
    """Run ``restorer`` on a PIL image (returns a PIL RGB image) or a [B, 3, H, W] / [3, H, W] tensor."""
    if isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        lq = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        out = restorer.restore(lq, options, callback)[0].permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.round(out * 255).astype(np.uint8))
    if image.dim() == 3:
        return restorer.restore(image[None], options, callback)[0].cpu()
    return restorer.restore(image, options, callback).cpu()
