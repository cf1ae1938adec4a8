"""Exceptions that the CLI turns into one-line messages (everything else is a bug)."""

from __future__ import annotations


class DerainError(Exception):
    """Base class of the failures a user can cause and fix (bad file, bad option, missing weights)."""


class CheckpointError(DerainError):
    """A checkpoint file cannot be read safely or does not match the architecture."""


class ImageError(DerainError):
    """An image file cannot be read or written."""


class WeightsError(DerainError):
    """A weights entry cannot be found, downloaded or verified."""
