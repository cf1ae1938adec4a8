"""Fixture writers: a state dict saved in each on-disk format of the official DA-CLIP / IR-SDE files."""

from __future__ import annotations

import builtins
import os
import pickle
import pickletools
import shlex
import types
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save_file

_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy's scalar constructor (numpy._core under numpy 2)


class _Numpy1Pickler(pickle._Pickler):
    """Pure-Python pickler that names numpy's scalar constructor `numpy.core.multiarray.scalar`, as numpy 1.x did."""

    def save_global(self, obj: object, name: str | None = None) -> None:
        """Write the GLOBAL opcode, spelling numpy's scalar constructor with its numpy 1.x module."""
        if obj is _NUMPY_SCALAR:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


_NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")
_NUMPY1_PICKLE.Pickler = _Numpy1Pickler


def write_plain_pickle(state_dict: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Save an OrderedDict of tensors with torch.save, like `universal-ir.pth`."""
    torch.save(OrderedDict(state_dict), path)
    return path


def write_module_prefixed_pickle(state_dict: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Save a state dict whose keys carry the `module.` prefix of (Distributed)DataParallel."""
    torch.save(OrderedDict((f"module.{key}", value) for key, value in state_dict.items()), path)
    return path


def write_training_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    path: Path,
    *,
    numpy_names: Literal["1.x", "2.x"] = "1.x",
    module_prefix: bool = True,
) -> Path:
    """Save an open_clip training checkpoint {"epoch", "name", "state_dict", "optimizer"}, like `daclip_ViT-B-32.pt`.

    The optimizer's learning rate is a numpy float64 (open_clip's cosine schedule computes it with
    numpy), so the pickle references `numpy.core.multiarray.scalar` (numpy 1.x spelling; 2.x writes
    `numpy._core.multiarray.scalar`), `numpy.dtype` and `_codecs.encode`.
    """
    prefix = "module." if module_prefix else ""
    checkpoint = {
        "epoch": 30,
        "name": "daclip_ViT-B-32",
        "state_dict": OrderedDict((prefix + key, value) for key, value in state_dict.items()),
        "optimizer": _adamw_state(state_dict),
    }
    pickle_module = _NUMPY1_PICKLE if numpy_names == "1.x" else pickle
    torch.save(checkpoint, path, pickle_module=pickle_module, pickle_protocol=2)
    return path


def _adamw_state(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """An AdamW state dict in the shape torch writes, with a numpy learning rate like open_clip's."""
    float_tensors = [value for value in state_dict.values() if value.is_floating_point()]
    return {
        "state": {
            index: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.ones_like(v)}
            for index, v in enumerate(float_tensors)
        },
        "param_groups": [
            {
                "lr": np.float64(3e-5) * (1 + np.cos(np.pi * 0.25)) / 2,
                "betas": (0.9, 0.98),
                "eps": 1e-6,
                "weight_decay": 0.2,
                "amsgrad": False,
                "params": list(range(len(float_tensors))),
            }
        ],
    }


def write_safetensors(state_dict: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Save every entry as its own tensor with safetensors (aliased entries are written twice)."""
    save_file({key: value.detach().contiguous().clone() for key, value in state_dict.items()}, path)
    return path


class _RunsCode:
    """An object whose unpickling calls `function(argument)`."""

    def __init__(self, function: object, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple:
        return self.function, (self.argument,)


def write_malicious_pickle(
    path: Path,
    marker: Path,
    *,
    payload: Literal["os.system", "exec"] = "os.system",
    legacy_format: bool = False,
) -> Path:
    """Save a state dict whose unpickling would create `marker` through os.system or exec (if ever run)."""
    if payload == "os.system":
        code = _RunsCode(os.system, f"touch {shlex.quote(str(marker))}")
    else:
        code = _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    state_dict = OrderedDict(weight=torch.ones(2, 2), bias=code)
    torch.save(state_dict, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def pickle_globals(path: Path) -> set[str]:
    """Every `module.name` that the pickle inside a torch.save zip file references with GLOBAL."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    return {str(arg).replace(" ", ".") for opcode, arg, _ in pickletools.genops(data) if opcode.name == "GLOBAL"}
