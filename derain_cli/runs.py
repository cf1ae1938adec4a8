"""A training run's folder: checkpoints replaced atomically and pruned, resume state and RNG state.

Layout: ``last/`` and ``best/`` (and ``step-NNNNNNNN/``, the newest few) each hold
``unet.safetensors`` (the exported weights), ``unet.json`` (how to build and sample them) and
``state.pt`` (everything needed to resume, readable with ``torch.load(weights_only=True)``).
A checkpoint is written to ``.NAME.tmp/`` and put in place of ``NAME/`` by two renames, the old
one moved aside to ``.NAME.old/`` first; a run cut short between the renames gets it back on resume.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from derain_cli.checkpoints import save_safetensors
from derain_cli.errors import DerainError

STATE_FORMAT = 1
WEIGHTS_FILE, STATE_FILE = "unet.safetensors", "state.pt"
STEP_PATTERN = "step-" + "[0-9]" * 8


def step_name(step: int) -> str:
    """The folder name of the numbered checkpoint of ``step``."""
    return f"step-{step:08d}"


class RunFolder:
    """The checkpoints of one training run under ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def state_path(self) -> Path:
        """The resume state of the latest checkpoint, ``last/state.pt``."""
        return self.path / "last" / STATE_FILE

    def write(self, name: str, weights: Mapping[str, Tensor], sidecar: dict[str, Any],
              state: dict[str, Any]) -> Path:
        """Write weights (+ their JSON sidecar) and resume state as checkpoint ``name``, atomically."""
        folder, tmp, old = self.path / name, self.path / f".{name}.tmp", self.path / f".{name}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_safetensors(weights, tmp / WEIGHTS_FILE, sidecar)
        torch.save(state, tmp / STATE_FILE)
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
        return folder

    def prune(self, keep: int) -> None:
        """Remove the numbered checkpoints but the newest ``keep``."""
        numbered = sorted(self.path.glob(STEP_PATTERN))
        for old in numbered[:max(len(numbered) - keep, 0)]:
            shutil.rmtree(old)

    def exported_weights(self) -> Path:
        """The weights a run exports: best/ when validation kept one, else last/."""
        best = self.path / "best" / WEIGHTS_FILE
        return best if best.exists() else self.path / "last" / WEIGHTS_FILE

    def recover(self) -> None:
        """Bring back last/ and best/ from their moved-aside copies where a replacement was cut short."""
        for name in ("last", "best"):
            target, old = self.path / name, self.path / f".{name}.old"
            if not target.exists() and old.exists():
                old.rename(target)

    def read_state(self) -> dict[str, Any]:
        """The resume state of last/, checked to be of the format this version writes."""
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise DerainError(f"{self.state_path}: unknown training state format {state.get('format')!r}")
        return state


def check_fixed_settings(where: Path, saved: Mapping[str, str], given: Mapping[str, str]) -> None:
    """Refuse to resume the run at ``where`` when a fixed setting (flag -> shown value) differs from the run's."""
    changed = [flag for flag, value in saved.items() if given[flag] != value]
    if changed:
        differences = "; ".join(f"{flag} {saved[flag]} in the run, {given[flag]} given" for flag in changed)
        raise DerainError(f"cannot resume {where} with other settings: {differences} "
                          "(give the run's values, or train into another folder)")


# -- random number generators -------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The global torch, CUDA, numpy and Python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
