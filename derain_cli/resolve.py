"""Turn the model options (`--model`, `--unet`, `--daclip`, SDE flags) into a ready pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from derain_cli.devices import resolve_device, resolve_precision
from derain_cli.errors import DerainError
from derain_cli.pipeline import DerainPipeline, SampleOptions
from derain_cli.sde import IRSDE
from derain_cli.weights import load_manifest, pick_auto_model, resolve_model, resolve_weights, run_defaults

# The universal model's settings (the reference's test options), used for bare checkpoint files.
DEFAULT_SDE = {"max_sigma": 50.0, "T": 100, "schedule": "cosine", "eps": 0.005}


@dataclass
class ModelSpec:
    """Which weights to run: a manifest model name, or checkpoint paths with SDE settings."""

    model: str = "auto"
    manifest: Path | None = None
    unet: Path | None = None
    daclip: Path | None = None
    max_sigma: float | None = None
    schedule: str | None = None
    eps: float | None = None
    T: int | None = None
    offline: bool = False


@dataclass
class Loaded:
    """A pipeline with the defaults its model asks for and what to tell the user about it."""

    pipeline: DerainPipeline
    description: str
    steps: int | None = None
    sampler: str = "posterior"
    notes: list[str] = field(default_factory=list)
    passes: int = 1
    repeat_above: float | tuple[float, ...] | None = None
    tile: int | None = None  # the tile size `--tile auto` uses; None: the largest that fits the memory

    def options(self, **changes) -> SampleOptions:
        """Sampling options with the model's defaults (steps, sampler, tile, passes), then ``changes``."""
        defaults = SampleOptions(steps=self.steps, sampler=self.sampler, tile=self.tile or "auto",
                                 passes=self.passes, repeat_above=self.repeat_above)
        return replace(defaults, **changes)


def sidecar_config(checkpoint: Path) -> dict:
    """The JSON config beside a checkpoint (`NAME.json` next to `NAME.safetensors`), or {}."""
    path = checkpoint.with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DerainError(f"{path}: cannot read the config beside the checkpoint: {err}") from None
    if not isinstance(data, dict):
        raise DerainError(f"{path}: expected a JSON object")
    return data


def _beside(checkpoint: Path, name: object) -> Path | None:
    """The further passes' U-Net a checkpoint's JSON config names (a file in the same folder), or None."""
    if name is None:
        return None
    where = checkpoint.with_suffix(".json")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise DerainError(f"{where}: 'repeat_unet' must be the name of a file beside it, got {name!r}")
    path = checkpoint.parent / name
    if not path.is_file():
        raise DerainError(f"{path}: no such checkpoint file (named by {where.name} as 'repeat_unet')")
    return path


def _sde_settings(spec: ModelSpec, base: dict) -> dict:
    """SDE settings: the model's own, overridden by any flag the user gave."""
    flags = {"max_sigma": spec.max_sigma, "schedule": spec.schedule, "eps": spec.eps, "T": spec.T}
    return {**DEFAULT_SDE, **base, **{k: v for k, v in flags.items() if v is not None}}


def load(spec: ModelSpec, device: str = "auto", precision: str = "auto") -> Loaded:
    """Resolve the weights (downloading them if needed) and build the pipeline on ``device``."""
    torch_device, device_note = resolve_device(device)
    resolve_precision(precision, torch_device)  # fail on a bad choice before loading anything
    notes = [device_note] if device_note else []
    if spec.unet is not None:
        unet_path, daclip_path = Path(spec.unet), Path(spec.daclip) if spec.daclip else None
        for path in filter(None, (unet_path, daclip_path)):
            if not path.is_file():
                raise DerainError(f"{path}: no such checkpoint file")
        config = sidecar_config(unet_path)
        sde = _sde_settings(spec, config.get("sde", {}))
        repeat_path = _beside(unet_path, config.get("repeat_unet"))
        description = f"U-Net {unet_path}" + (f" + DA-CLIP {daclip_path}" if daclip_path else "")
        description += f" (further passes: {repeat_path.name})" if repeat_path else ""
        steps, sampler = config.get("steps"), config.get("sampler", "posterior")
        prediction = config.get("prediction", "noise")
        passes, repeat_above, tile, model_precision = run_defaults(config, str(unet_path.with_suffix(".json")))
    else:
        manifest = load_manifest(spec.manifest)
        name = spec.model
        if name == "auto":
            name, reason = pick_auto_model(manifest)
            notes.append(f"model {name!r}: {reason}")
        entry = resolve_model(manifest, name)
        unet_path = resolve_weights(manifest, entry.unet, offline=spec.offline)
        daclip_path = resolve_weights(manifest, entry.daclip, offline=spec.offline) if entry.daclip else None
        repeat_path = resolve_weights(manifest, entry.repeat_unet, offline=spec.offline) if entry.repeat_unet else None
        sde = _sde_settings(spec, vars(entry.sde))
        description = f"model {name!r}" + (f" ({entry.description})" if entry.description else "")
        steps, sampler, prediction = entry.steps, entry.sampler, entry.prediction
        passes, repeat_above, tile = entry.passes, entry.repeat_above, entry.tile
        model_precision = entry.precision
    if precision == "auto" and model_precision is not None:
        precision = model_precision  # the model's own choice (the bundled one is exact and faster in fp32)
    pipeline = DerainPipeline.from_files(unet_path, daclip_path, IRSDE(**sde), device=str(torch_device),
                                         precision=precision, prediction=prediction, repeat_unet_path=repeat_path)
    return Loaded(pipeline, description, steps, sampler, notes, passes, repeat_above, tile)
