"""The deraining pipeline: DA-CLIP conditioning, the IR-SDE sampler and tiling, tensors in and out."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from derain_cli.checkpoints import load_daclip, load_unet
from derain_cli.devices import free_memory_bytes, resolve_device, resolve_precision
from derain_cli.ensemble import ENSEMBLE_SIZES, FlipEnsemble
from derain_cli.errors import DerainError
from derain_cli.sde import IRSDE, PREDICTIONS, Prediction, Sampler, StepCallback
from derain_cli.tiling import TiledDenoiser, auto_tile_size
from derain_cli.unet import ConditionalUNet

if TYPE_CHECKING:  # open_clip is slow to import: only pipelines with DA-CLIP pay for it
    from derain_cli.daclip import DACLIP

TileOption = Union[int, Literal["auto"], None]
# Share of the free memory that automatic tiling may plan for (the rest is the state, the
# model and the allocator's slack).
MEMORY_BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class SampleOptions:
    """How to sample: steps (None: the SDE's T), sampler, seed, tiling, and repeated passes.

    ``passes`` > 1 runs the model again on its own output (rounded to 8 bits, as if saved and run
    again), up to ``passes`` times in all; with ``repeat_above`` set, an image gets a further pass
    only when the previous one changed it by more than that mean absolute difference (0-255 scale):
    heavy rain, which one pass leaves partly in place, and not light rain, which a second pass
    would only blur. A tuple gives one threshold per further pass (the second, the third, ...);
    its last one serves any pass beyond.

    ``ensemble`` > 1 averages every network call over that many mirror images of the image (2: and
    left-right; 4: and upside-down, and both; see ``derain_cli.ensemble``), at that many times the cost.
    """

    steps: int | None = None
    sampler: Sampler = "posterior"
    seed: int | None = 0
    tile: TileOption = "auto"
    tile_overlap: int = 32
    passes: int = 1
    repeat_above: float | tuple[float, ...] | None = None
    ensemble: int = 1

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ValueError(f"passes must be at least 1, got {self.passes}")
        if self.ensemble not in ENSEMBLE_SIZES:
            raise ValueError(f"ensemble must be one of {list(ENSEMBLE_SIZES)}, got {self.ensemble}")
        if isinstance(self.repeat_above, list):  # as read from JSON
            object.__setattr__(self, "repeat_above", tuple(self.repeat_above))
        if isinstance(self.repeat_above, tuple) and not self.repeat_above:
            raise ValueError("repeat_above must hold at least one threshold")

    def repeat_threshold(self, done: int) -> float | None:
        """The change a pass must exceed for a further one, after ``done`` passes (None: always)."""
        if not isinstance(self.repeat_above, tuple):
            return self.repeat_above
        return self.repeat_above[min(done, len(self.repeat_above)) - 1]


def _conditioning(config: dict) -> tuple:
    """What a U-Net takes besides the image: its DA-CLIP context size and which embeddings."""
    return config.get("context_dim") or None, bool(config.get("use_degra_context")), bool(config.get("use_image_context"))


class DerainPipeline:
    """Restores rainy images with an IR-SDE U-Net, optionally conditioned on DA-CLIP embeddings.

    ``prediction`` says what the U-Net outputs: the noise (the published models) or the clean image
    (``derain train --prediction x0``, as the bundled compact model). ``repeat_unet``, when given,
    runs the further passes (see ``SampleOptions.passes``) instead of ``unet``: a second model
    trained on what the first pass leaves, with the same SDE, prediction and conditioning.
    """

    def __init__(self, unet: ConditionalUNet, sde: IRSDE, daclip: DACLIP | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 prediction: Prediction = "noise", repeat_unet: ConditionalUNet | None = None) -> None:
        if prediction not in PREDICTIONS:
            raise DerainError(f"unknown prediction {prediction!r}; choose from {list(PREDICTIONS)}")
        self.prediction = prediction
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet = unet.to(self.device).eval()
        self.repeat_unet = repeat_unet.to(self.device).eval() if repeat_unet is not None else None
        self.daclip = daclip.to(self.device).eval() if daclip is not None else None
        self.sde = sde
        self.on_tile_shrink: Callable[[int], None] | None = None
        if self.needs_daclip and self.daclip is None:
            raise DerainError("this U-Net is conditioned on DA-CLIP embeddings: give the DA-CLIP weights too")
        if repeat_unet is not None and _conditioning(repeat_unet.config) != _conditioning(unet.config):
            raise DerainError("the U-Net for further passes must take the same conditioning as the first")

    @classmethod
    def from_files(cls, unet_path: str | Path, daclip_path: str | Path | None = None,
                   sde: IRSDE | None = None, device: str = "auto",
                   precision: str = "auto", prediction: Prediction = "noise",
                   repeat_unet_path: str | Path | None = None) -> DerainPipeline:
        """Build a pipeline from checkpoint files (architecture inferred from the tensors)."""
        torch_device, _ = resolve_device(device)
        unet = load_unet(unet_path)
        daclip = load_daclip(daclip_path) if daclip_path is not None else None
        repeat_unet = load_unet(repeat_unet_path) if repeat_unet_path is not None else None
        return cls(unet, sde or IRSDE(), daclip, torch_device, resolve_precision(precision, torch_device),
                   prediction, repeat_unet)

    @property
    def needs_daclip(self) -> bool:
        """Whether the U-Net takes DA-CLIP embeddings (degradation prompt or cross-attention)."""
        context_dim, degradation, image = _conditioning(self.unet.config)
        return bool(context_dim) and (degradation or image)

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
        return self._run(self.unet, x_t, mu, t, **context)

    def repeat_denoiser(self, x_t: Tensor, mu: Tensor, t: Tensor, **context: Tensor) -> Tensor:
        """As ``denoiser``, with the U-Net of the further passes (``unet`` when there is none)."""
        return self._run(self.unet if self.repeat_unet is None else self.repeat_unet, x_t, mu, t, **context)

    def _run(self, unet: ConditionalUNet, x_t: Tensor, mu: Tensor, t: Tensor, **context: Tensor) -> Tensor:
        with self._autocast():
            return unet(x_t, mu, t, **context).float()

    def _tile_size(self, tile: TileOption, height: int, width: int) -> int | None:
        """The tile size to use: a given size, none, or the largest that fits the free memory."""
        if tile != "auto":
            return tile or None
        budget = int(free_memory_bytes(self.device) * MEMORY_BUDGET_SHARE)
        return auto_tile_size(self.unet.config, height, width, budget, torch.finfo(self.dtype).bits // 8)

    @torch.no_grad()
    def restore(self, lq: Tensor, options: SampleOptions = SampleOptions(),
                callback: StepCallback | None = None) -> Tensor:
        """Restore a [B, 3, H, W] batch in 0..1; returns the clean estimate clamped to 0..1."""
        if lq.dim() != 4 or lq.shape[1] != 3:
            raise ValueError(f"expected a [B, 3, H, W] tensor, got shape {tuple(lq.shape)}")
        lq = lq.to(self.device, torch.float32)
        out = self._restore_once(lq, options, callback)
        for done in range(1, options.passes):
            saved = torch.round(out * 255.0) / 255.0
            again = torch.ones(lq.shape[0], dtype=torch.bool, device=out.device)
            threshold = options.repeat_threshold(done)
            if threshold is not None:
                again = (saved - lq).abs().flatten(1).mean(1) * 255.0 > threshold
            if not again.any():
                break
            out = out.clone()
            out[again] = self._restore_once(saved[again], options, callback, self.repeat_denoiser)
            lq = saved
        return out

    def _restore_once(self, lq: Tensor, options: SampleOptions, callback: StepCallback | None,
                      model: Callable[..., Tensor] | None = None) -> Tensor:
        """One run of the sampler with ``model`` (default: ``denoiser``) on a [B, 3, H, W] batch in 0..1."""
        context = self.conditioning(lq)
        tile = self._tile_size(options.tile, *lq.shape[-2:])
        denoiser = model or self.denoiser
        if tile is not None:
            denoiser = TiledDenoiser(denoiser, tile, options.tile_overlap,
                                     shrink_on_oom=options.tile == "auto", on_shrink=self.on_tile_shrink)
        if options.ensemble > 1:
            denoiser = FlipEnsemble(denoiser, options.ensemble)
        generator = None
        if options.seed is not None:
            generator = torch.Generator("cpu").manual_seed(options.seed)
        out = self.sde.sample(denoiser, lq, steps=options.steps, sampler=options.sampler,
                              generator=generator, callback=callback, prediction=self.prediction, **context)
        return out.clamp(0, 1)

    def __call__(self, image: Image.Image | Tensor, options: SampleOptions = SampleOptions(),
                 callback: StepCallback | None = None) -> Image.Image | Tensor:
        """Restore a PIL image (returns a PIL RGB image) or a [B, 3, H, W] / [3, H, W] tensor."""
        if isinstance(image, Image.Image):
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            lq = torch.from_numpy(rgb).permute(2, 0, 1)[None]
            out = self.restore(lq, options, callback)[0].permute(1, 2, 0).cpu().numpy()
            return Image.fromarray(np.round(out * 255).astype(np.uint8))
        if image.dim() == 3:
            return self.restore(image[None], options, callback)[0].cpu()
        return self.restore(image, options, callback).cpu()
