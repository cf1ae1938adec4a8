"""Safe reading of official DA-CLIP / IR-SDE checkpoints (pickles and safetensors) and strict model loading."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from derain_cli.errors import CheckpointError
from derain_cli.unet import ConditionalUNet, infer_unet_config

if TYPE_CHECKING:
    from derain_cli.daclip import DACLIP

PathLike = str | os.PathLike[str]

_MODULE_PREFIX = "module."
_CLIP_PREFIX = "clip."
_VISUAL_ALIAS = "visual."
_KEYS_SHOWN = 5
_ZIP_MAGIC = b"PK\x03\x04"
_DACLIP_PREFIXES = ("clip.", "visual_control.")
# Patterns of torch's weights-only unpickler messages that mean "this pickle wants to run code".
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")
_UNSAFE_CALL = re.compile(r"unrecognized function|Can only (?:build|create new object)")
# What torch.load raises on truncated or bit-flipped files (found by fuzzing both torch.save formats).
_DAMAGED_FILE_ERRORS = (
    RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, AssertionError, struct.error
)


def _numpy_safe_globals() -> list[tuple[object, str]]:
    """Numpy names a training checkpoint's pickled numpy scalars need (numpy 1.x and 2.x spellings)."""
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar constructor, whatever module holds it
    allowed: list[tuple[object, str]] = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        (np.dtype, "numpy.dtype"),
    ]
    # Unpickling np.dtype("f8") sets the state of a Float64DType instance, so the numeric dtype
    # classes must be allowed too. `_codecs.encode` (bytes under protocol 2) is allowed by torch.
    for code in "?bhilqBHILQefdgFDG":
        dtype_class = type(np.dtype(code))
        allowed.append((dtype_class, f"{dtype_class.__module__}.{dtype_class.__qualname__}"))
    return allowed


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint (safetensors or weights-only pickle) into a flat CPU state dict without `module.`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    raw = _read_safetensors(path) if _is_safetensors(path) else _read_pickle(path)
    return _clean_state_dict(_unwrap_training_checkpoint(raw, path), path)


def _is_safetensors(path: Path) -> bool:
    """Tell a safetensors file (8-byte header length, then a JSON object) from a pickle."""
    return path.suffix == ".safetensors" or _head(path, 9)[8:9] == b"{"


def _head(path: Path, size: int) -> bytes:
    """The first `size` bytes of a file."""
    with path.open("rb") as file:
        return file.read(size)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto the CPU."""
    try:
        return load_file(path, device="cpu")
    except SafetensorError as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None


def _read_pickle(path: Path) -> object:
    """Unpickle a torch.save file (zip or legacy) allowing tensors, containers and numpy scalars only."""
    head = _head(path, 4)
    archive = head == _ZIP_MAGIC  # torch.save's default format; earlier torch wrote a bare pickle
    if not archive and head[:1] != pickle.PROTO:
        raise CheckpointError(f"{path}: not a torch.save or safetensors checkpoint (wrong file, or truncated)")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=archive)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, str(err)) from err
    except _DAMAGED_FILE_ERRORS as err:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_describe_error(err)})") from err


def _unpickling_error(path: Path, message: str) -> CheckpointError:
    """Turn torch's weights-only refusal into a one-line error saying whether the file is unsafe or corrupt."""
    unsafe = _UNSAFE_GLOBAL.search(message)
    if unsafe:
        return CheckpointError(
            f"{path}: refused as unsafe: its pickle calls {unsafe.group(1)}, which could run code"
            " (a weights file needs only tensors)"
        )
    if _UNSAFE_CALL.search(message):
        return CheckpointError(f"{path}: refused as unsafe: its pickle builds objects other than tensors")
    reason = _first_sentence(message.rsplit("WeightsUnpickler error:", 1)[-1]) or "unreadable pickle"
    return CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})")


def _first_sentence(message: str) -> str:
    """First sentence of the first non-empty line of an error message."""
    line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return line.split(". ")[0].rstrip(".")


def _describe_error(err: BaseException) -> str:
    """The error's type and the first sentence of its message."""
    message = _first_sentence(str(err))
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _unwrap_training_checkpoint(obj: object, path: Path) -> Mapping:
    """Return the state dict of a training checkpoint.

    Two layouts: the reference's {"epoch", "name", "state_dict", "optimizer", ...}, and the ``state.pt``
    that ``derain train`` writes beside its EMA weights, {"format", "step", "model", "ema", ...}, whose
    "model" entry holds the raw (not averaged) weights.
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and "format" in obj and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
    return obj


def _clean_state_dict(raw: Mapping, path: Path) -> dict[str, torch.Tensor]:
    """Check that every entry is a named tensor; strip the `module.` prefix of (Distributed)DataParallel."""
    not_tensors = [repr(k) for k, v in raw.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if not_tensors:
        verb = "is not a tensor" if len(not_tensors) == 1 else "are not tensors"
        raise CheckpointError(f"{path}: not a state dict: {_some(not_tensors, 'entry', 'entries')} {verb}")
    if not raw:
        raise CheckpointError(f"{path}: not a state dict: it holds no tensors")
    state_dict: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key.removeprefix(_MODULE_PREFIX)
        if name in state_dict:
            raise CheckpointError(f"{path}: key {name!r} is stored both with and without the 'module.' prefix")
        state_dict[name] = tensor
    return state_dict


def _some(items: list[str], singular: str, plural: str) -> str:
    """Describe a list as a count and its first few items: '7 keys (a, b, c, d, e, ...)'."""
    shown = ", ".join(items[:_KEYS_SHOWN]) + (", ..." if len(items) > _KEYS_SHOWN else "")
    return f"{len(items)} {singular if len(items) == 1 else plural} ({shown})"


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """Copy a state dict into a module, failing with the missing, unexpected and mis-shaped keys named."""
    _check_fits(module, state_dict, path)
    module.load_state_dict(state_dict, strict=True)


def _check_fits(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """Raise a CheckpointError naming the keys that are missing, unexpected or of the wrong shape."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: file {list(state_dict[key].shape)} vs model {list(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    problems = [
        f"{_some(keys, 'key', 'keys')} {what}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path}: does not fit {type(module).__name__}: {'; '.join(problems)}")


def load_unet(path: PathLike, map_location: str | torch.device = "cpu") -> ConditionalUNet:
    """Build the U-Net the checkpoint's tensor shapes describe, load it strictly, eval mode."""
    state_dict = read_state_dict(path)
    model, _ = _build("unet", state_dict, path)
    load_strict(model, state_dict, path)
    return model.to(map_location).eval()


def load_daclip(path: PathLike, map_location: str | torch.device = "cpu") -> DACLIP:
    """Build the DA-CLIP model the checkpoint's tensor shapes describe, load it strictly, eval mode."""
    state_dict = with_visual_alias(read_state_dict(path), path)
    model, _ = _build("daclip", state_dict, path)
    load_strict(model, state_dict, path)
    return model.to(map_location).eval()


def convert_checkpoint(src: PathLike, dst: PathLike, *, fp16: bool = False) -> tuple[str, Path]:
    """Rewrite a U-Net or DA-CLIP checkpoint as safetensors plus <stem>.json; return (kind, config path)."""
    state_dict = read_state_dict(src)
    kind = "daclip" if any(key.startswith(_DACLIP_PREFIXES) for key in state_dict) else "unet"
    if kind == "daclip":
        state_dict = with_visual_alias(state_dict, src)
    model, config = _build(kind, state_dict, src, device="meta")  # shapes only: checks keys, no memory
    _check_fits(model, state_dict, src)
    if kind == "daclip":  # load_daclip restores the alias
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(_VISUAL_ALIAS)}
    save_safetensors(state_dict, dst, {kind: config}, dtype=torch.float16 if fp16 else None)
    return kind, Path(dst).with_suffix(".json")


def _architecture(kind: str) -> tuple[Callable[..., torch.nn.Module], Callable[[Mapping], dict]]:
    """Model class and config inference for ``unet`` or ``daclip`` (open_clip is imported only when needed)."""
    if kind == "unet":
        return ConditionalUNet, infer_unet_config
    from derain_cli.daclip import DACLIP, infer_daclip_config

    return DACLIP, infer_daclip_config


def _build(kind: str, state_dict: Mapping[str, torch.Tensor], path: PathLike, device: str = "cpu") -> tuple:
    """(model, constructor kwargs) of the architecture the tensor shapes describe; failures name the file."""
    model_class, infer = _architecture(kind)
    name = model_class.__name__
    try:
        config = infer(state_dict)
        with torch.device(device):
            return model_class(**config), config
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except KeyError as err:
        raise CheckpointError(f"{path}: not a {name} checkpoint: no {err.args[0]!r} tensor") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: not a {name} checkpoint: {err}") from None


def with_visual_alias(state_dict: Mapping[str, torch.Tensor], path: PathLike) -> dict[str, torch.Tensor]:
    """Complete the DA-CLIP `visual.*` / `clip.visual.*` alias pairs; a pair stored twice must be equal."""
    completed = dict(state_dict)
    for key, tensor in state_dict.items():
        if key.startswith(_CLIP_PREFIX + _VISUAL_ALIAS):
            clip_key, alias = key, key.removeprefix(_CLIP_PREFIX)
        elif key.startswith(_VISUAL_ALIAS):
            clip_key, alias = _CLIP_PREFIX + key, key
        else:
            continue
        twin = alias if key == clip_key else clip_key
        if twin not in state_dict:
            completed[twin] = tensor
        elif not _same_values(state_dict[alias], state_dict[clip_key]):
            raise CheckpointError(
                f"{path}: {alias} differs from {clip_key}, but both name one CLIP image tower weight"
            )
    return completed


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two tensors hold equal values (one view of shared memory counts as equal without comparing)."""
    if a.shape != b.shape:
        return False
    same_view = a.dtype == b.dtype and a.data_ptr() == b.data_ptr() and a.stride() == b.stride()
    return same_view or torch.equal(a, b.to(a.dtype))


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: PathLike,
    config: dict | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a state dict as safetensors (aliases stored once, floats cast to `dtype`) plus <stem>.json."""
    path = Path(path)
    tensors = {name: _standalone(tensor, dtype) for name, tensor in _drop_aliases(state_dict).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # never leave a truncated file under the real name
    try:
        save_file(tensors, partial, metadata={"format": "pt"})
        os.chmod(partial, 0o666 & ~_umask())  # safetensors creates 0600 files; give the usual permissions
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    if config is not None:
        path.with_suffix(".json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _drop_aliases(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the first name of every tensor that appears under several names (same memory, same view)."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, tensor in state_dict.items():
        view = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() and view in seen:
            continue
        seen.add(view)
        kept[name] = tensor
    return kept


def _standalone(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A contiguous CPU tensor owning its memory, floats cast to `dtype` when given."""
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    tensor = tensor.detach().to(device="cpu", dtype=target).contiguous()
    if tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone()
    return tensor
