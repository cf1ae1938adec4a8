"""Turn the model options (`--model`, `--unet`, `--daclip`, SDE flags) into a ready restorer.

A manifest model brings its card; a checkpoint file brings the card in the JSON beside it
(`NAME.json`) or, without one, the config derain embedded in its safetensors metadata, read by the
same strict parser; a bare file gets the universal model's settings, which the SDE flags may change.
The restorer is a pipeline, or a cascade where the card has passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from derain_cli.card import DEFAULT_SDE, CascadeCard, ModelCard, SDESettings, parse_card
from derain_cli.cascade import Cascade
from derain_cli.checkpoints import CONFIG_ONLY_KEYS, load_daclip, load_unet, read_config
from derain_cli.devices import resolve_device, resolve_precision
from derain_cli.errors import CardError, DerainError, UsageError
from derain_cli.pipeline import DerainPipeline, Restorer
from derain_cli.weights import load_manifest, pick_auto_model, resolve_model, resolve_weights


@dataclass
class ModelSpec:
    """Which weights to run: a manifest model name, or checkpoint paths (SDE flags for bare files)."""

    model: str = "auto"
    manifest: Path | None = None
    unet: Path | None = None
    daclip: Path | None = None
    max_sigma: float | None = None
    schedule: str | None = None
    eps: float | None = None
    offline: bool = False

    def sde_flags(self) -> dict:
        """The SDE settings given as flags."""
        flags = {"max_sigma": self.max_sigma, "schedule": self.schedule, "eps": self.eps}
        return {key: value for key, value in flags.items() if value is not None}


@dataclass(frozen=True)
class Note:
    """Something to tell the user about the loaded model: ``info`` or ``warning``."""

    kind: Literal["info", "warning"]
    text: str


@dataclass
class Loaded:
    """A restorer (a pipeline or a cascade, carrying its model card) and what to tell the user."""

    restorer: Restorer
    description: str
    notes: list[Note] = field(default_factory=list)


def read_card(checkpoint: Path, flags: dict | None = None) -> ModelCard:
    """The card a checkpoint carries (see read_config), or the universal settings (with SDE ``flags``) for a bare file."""
    data, where = read_config(checkpoint)
    if data is None:
        return ModelCard(sde=SDESettings(**{**DEFAULT_SDE, **(flags or {})}))
    if flags and isinstance(data, dict) and "sde" in data:
        what = f"{Path(where).name} beside the checkpoint" if where.endswith(".json") else where
        raise UsageError(f"--{'/--'.join(k.replace('_', '-') for k in flags)}: {what} "
                         "sets the SDE; the flags are for a bare checkpoint file")
    if flags and isinstance(data, dict):
        data = {**data, "sde": {**DEFAULT_SDE, **flags}}
    return parse_card(data, where, ignore=CONFIG_ONLY_KEYS)


def _check_sampling(card: ModelCard, sampler: str | None, steps: int | None, fast: bool) -> None:
    """Raise UsageError unless the card supports the sampling asked for."""
    if fast:
        sampler, steps = card.fast_sampling
    card.check_sampling(sampler, steps)


def _beside(checkpoint: Path, name: str) -> Path:
    """The further passes' U-Net that a checkpoint's JSON names: a file in the same folder."""
    where = checkpoint.with_suffix(".json")
    if Path(name).name != name:
        raise CardError(f"{where}: 'repeat_unet' must be the name of a file beside it, got {name!r}")
    path = checkpoint.parent / name
    if not path.is_file():
        raise CardError(f"{path}: no such checkpoint file (named by {where.name} as 'repeat_unet')")
    return path


def load(spec: ModelSpec, device: str = "auto", precision: str = "auto", passes: int | None = None,
         steps: int | None = None, sampler: str | None = None, fast: bool = False) -> Loaded:
    """Resolve the weights (downloading them if needed) and build the restorer on ``device``.

    ``passes``: None runs the card's passes; a number runs that many on every image. ``steps`` and
    ``sampler`` (or ``fast``), when given, are checked against the card before any weights are
    fetched or read.
    """
    torch_device, device_note = resolve_device(device)
    resolve_precision(precision, torch_device)  # fail on a bad choice before loading anything
    if passes is not None and passes < 1:
        raise UsageError(f"--passes {passes}: expected auto or a number of at least 1")
    notes = [Note("warning", device_note)] if device_note else []
    if spec.unet is not None:
        unet_path, daclip_path = Path(spec.unet), Path(spec.daclip) if spec.daclip else None
        for path in filter(None, (unet_path, daclip_path)):
            if not path.is_file():
                raise DerainError(f"{path}: no such checkpoint file")
        card = read_card(unet_path, spec.sde_flags())
        _check_sampling(card, sampler, steps, fast)
        repeat_path = _beside(unet_path, card.cascade.unet) if card.cascade and card.cascade.unet else None
        description = f"U-Net {unet_path}" + (f" + DA-CLIP {daclip_path}" if daclip_path else "")
    else:
        if spec.sde_flags():
            raise UsageError("--max-sigma/--schedule/--eps are for a bare --unet file; a manifest model's card sets its SDE")
        manifest = load_manifest(spec.manifest)
        name = spec.model
        if name == "auto":
            name, reason = pick_auto_model(manifest)
            notes.append(Note("info", f"model {name!r}: {reason}"))
        entry = resolve_model(manifest, name)
        card = entry.card
        _check_sampling(card, sampler, steps, fast)
        unet_path = resolve_weights(manifest, entry.unet, offline=spec.offline)
        daclip_path = resolve_weights(manifest, entry.daclip, offline=spec.offline) if entry.daclip else None
        repeat_path = resolve_weights(manifest, entry.repeat_unet, offline=spec.offline) if entry.repeat_unet else None
        description = f"model {name!r}" + (f" ({card.description})" if card.description else "")
    if passes is not None:
        card = replace(card, cascade=CascadeCard(passes, None, card.cascade.unet if card.cascade else None))
    if card.cascade is not None and card.cascade.passes == 1:
        card, repeat_path = replace(card, cascade=None), None
    if card.cascade and repeat_path is not None:
        description += f" (further passes: {repeat_path.name})"
    if precision == "auto" and card.precision is not None:
        precision = card.precision  # the model's own choice (the bundled one is exact and faster in fp32)
    dtype = resolve_precision(precision, torch_device)
    daclip = load_daclip(daclip_path) if daclip_path is not None else None
    first = DerainPipeline(load_unet(unet_path), daclip=daclip, device=torch_device, dtype=dtype, card=card)
    if card.cascade is None:
        return Loaded(first, description, notes)
    further = None
    if repeat_path is not None:
        further = DerainPipeline(load_unet(repeat_path), daclip=daclip, device=torch_device, dtype=dtype, card=card)
    return Loaded(Cascade(first, card.cascade, further), description, notes)
