"""derain: remove rain from photographs with IR-SDE diffusion conditioned on DA-CLIP.

Public API (imported on first use, so that ``import derain_cli`` and ``derain --help`` stay fast)::

    from derain_cli import load_model                 # a ready model by name or checkpoint file
    model = load_model("compact", device="cpu")       # the bundled model, with its own defaults
    clean = model(pil_image)                          # PIL in, PIL out; model.restore(tensor) for [B, 3, H, W]

- ``load_model(name_or_path, device, precision, passes, offline)``: a restorer (a ``DerainPipeline``,
  or a ``Cascade`` of them) carrying its model card, whose defaults ``model.options(...)`` spells out.
- ``DerainPipeline(unet, sde, daclip, device, dtype, prediction | card)``: one sampler run per call;
  ``SampleOptions`` says how (steps, sampler, seed, tile, ensemble). ``Cascade``: further passes.
- ``load_unet(path)``, ``load_daclip(path)``, ``read_state_dict(path)``: safe checkpoint loading.
- ``IRSDE``: the schedule and pure samplers over a denoiser callable. ``ConditionalUNet``, ``DACLIP``:
  the networks.
- ``read_image(path)``, ``write_image(path, tensor, like)``: files with EXIF, ICC, alpha, 16 bits.
- ``DerainError`` (base of every error a user can cause), ``NonFiniteError`` (a NaN/inf result).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Names are imported on first use, so that `derain --help` does not pay for torch and open_clip.
_EXPORTS = {
    "load_unet": "derain_cli.checkpoints",
    "load_daclip": "derain_cli.checkpoints",
    "read_state_dict": "derain_cli.checkpoints",
    "IRSDE": "derain_cli.sde",
    "ConditionalUNet": "derain_cli.unet",
    "DACLIP": "derain_cli.daclip",
    "DerainPipeline": "derain_cli.pipeline",
    "SampleOptions": "derain_cli.pipeline",
    "Cascade": "derain_cli.cascade",
    "read_image": "derain_cli.imageio",
    "write_image": "derain_cli.imageio",
    "DerainError": "derain_cli.errors",
    "NonFiniteError": "derain_cli.errors",
}
__all__ = ["__version__", "load_model", *_EXPORTS]

if TYPE_CHECKING:
    from derain_cli.cascade import Cascade
    from derain_cli.checkpoints import load_daclip, load_unet, read_state_dict
    from derain_cli.daclip import DACLIP
    from derain_cli.errors import DerainError, NonFiniteError
    from derain_cli.imageio import read_image, write_image
    from derain_cli.pipeline import DerainPipeline, Restorer, SampleOptions
    from derain_cli.sde import IRSDE
    from derain_cli.unet import ConditionalUNet

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


def load_model(name_or_path: str | Path = "auto", device: str = "auto", precision: str = "auto",
               passes: int | None = None, offline: bool = False) -> Restorer:
    """A ready restorer: a manifest model by name (``compact`` is bundled) or a U-Net checkpoint file.

    As ``derain run --model NAME`` / ``--unet PATH`` builds it: the model card's defaults (steps,
    sampler, tile, passes, precision), ``auto`` = the universal model if cached, else the bundled one.
    A checkpoint file brings its settings in the ``NAME.json`` beside it. Warnings (a device fallback)
    are issued with ``warnings.warn``.
    """
    import warnings

    from derain_cli.resolve import ModelSpec, load

    path = Path(name_or_path)
    is_file = path.suffix in _CHECKPOINT_SUFFIXES or path.is_file()
    spec = ModelSpec(unet=path, offline=offline) if is_file else ModelSpec(model=str(name_or_path), offline=offline)
    loaded = load(spec, device=device, precision=precision, passes=passes)
    for note in loaded.notes:
        if note.kind == "warning":
            warnings.warn(note.text, stacklevel=2)
    return loaded.restorer


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'derain_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the lazily imported public API, so that ``dir`` and ``help`` list it."""
    return sorted({*globals(), *__all__})
