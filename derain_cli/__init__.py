"""derain: remove rain from photographs with IR-SDE diffusion conditioned on DA-CLIP.

Public API::

    from derain_cli import load_unet, load_daclip, IRSDE, DerainPipeline, SampleOptions
"""

from __future__ import annotations

from importlib import import_module
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
    "read_image": "derain_cli.imageio",
    "write_image": "derain_cli.imageio",
    "DerainError": "derain_cli.errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from derain_cli.checkpoints import load_daclip, load_unet, read_state_dict
    from derain_cli.daclip import DACLIP
    from derain_cli.errors import DerainError
    from derain_cli.imageio import read_image, write_image
    from derain_cli.pipeline import DerainPipeline, SampleOptions
    from derain_cli.sde import IRSDE
    from derain_cli.unet import ConditionalUNet


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'derain_cli' has no attribute {name!r}")
