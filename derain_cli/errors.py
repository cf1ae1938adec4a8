"""Exceptions that the CLI turns into one-line messages (everything else is a bug)."""

from __future__ import annotations


class DerainError(Exception):
    """Base class of the failures a user can cause and fix (bad file, bad option, missing weights)."""


class UsageError(DerainError):
    """A command-line choice that cannot work (exit code 2): a value out of range, options that conflict."""


class CheckpointError(DerainError):
    """A checkpoint file cannot be read safely or does not match the architecture."""


class ImageError(DerainError):
    """An image file cannot be read or written."""


class WeightsError(DerainError):
    """A weights entry cannot be found, downloaded or verified."""


class CardError(WeightsError):
    """A model card (a manifest model entry or the JSON beside a checkpoint) is invalid."""


class NonFiniteError(DerainError):
    """A sampler run gave NaN or infinite values (an overflow, e.g. in half precision): nothing is written."""
