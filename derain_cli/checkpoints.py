"""Safe reading of official DA-CLIP / IR-SDE checkpoints (pickles and safetensors) and strict model loading.

A checkpoint's config (its architecture and model card) is the JSON beside it (``NAME.json``); the
safetensors files derain writes also carry it in their metadata, so a file used without its JSON
still runs as its model should.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from derain_cli.card import parse_card
from derain_cli.errors import CardError, CheckpointError, UsageError
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
CONFIG_METADATA_KEY = "derain_config"  # safetensors metadata entry holding the JSON config
# Keys of a checkpoint's config that describe the file rather than how to run it.
CONFIG_ONLY_KEYS = frozenset({"unet", "daclip", "training"})
_EXPORTED_WEIGHTS = "unet.safetensors"  # what `derain train` exports beside its resume state
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
    elif _is_training_state(obj):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
    return obj


def _is_training_state(obj: object) -> bool:
    """Whether an unpickled object is the resume state ``derain train`` writes as ``state.pt``."""
    return isinstance(obj, Mapping) and "format" in obj and isinstance(obj.get("model"), Mapping)


def read_config(checkpoint: PathLike) -> tuple[dict | None, str]:
    """A checkpoint's config and where it was read: the JSON beside it, else its embedded one; (None, "") for a bare file.

    A ``derain train`` resume state (``state.pt``) is refused: its raw weights are not the run's
    exported ones and it carries no card to run them with.
    """
    path = Path(checkpoint)
    beside = path.with_suffix(".json")
    if beside.is_file():
        try:
            return json.loads(beside.read_text()), str(beside)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CardError(f"{beside}: cannot read the config beside the checkpoint: {err}") from None
    if not path.is_file():
        return None, ""
    if _is_safetensors(path):
        return _embedded_config(path)
    if _is_training_state(_read_pickle(path)):
        raise CheckpointError(
            f"{path}: a `derain train` resume state, not weights to run (its raw weights come without the run's "
            f"settings); use the exported weights beside it, {path.with_name(_EXPORTED_WEIGHTS)}"
        )
    return None, ""


def _embedded_config(path: Path) -> tuple[dict | None, str]:
    """The config a safetensors file carries in its metadata (written by save_safetensors), or (None, "")."""
    try:
        with safe_open(path, framework="pt") as file:
            text = (file.metadata() or {}).get(CONFIG_METADATA_KEY)
    except SafetensorError as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None
    if text is None:
        return None, ""
    where = f"{path} (embedded config)"
    try:
        return json.loads(text), where
    except json.JSONDecodeError as err:
        raise CardError(f"{where}: invalid JSON: {err}") from None


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


@dataclass(frozen=True)
class Converted:
    """What `convert_checkpoint` wrote: the kind of model, and the weights, their JSON and any further passes' weights."""

    kind: str
    files: tuple[Path, ...]


def convert_checkpoint(src: PathLike, dst: PathLike, *, fp16: bool = False) -> Converted:
    """Rewrite a U-Net or DA-CLIP checkpoint as safetensors plus <stem>.json, keeping its model card.

    The source's card (the JSON beside it, or the config embedded in it) is copied into the output's
    JSON and metadata with the architecture the tensors describe. A further passes' U-Net that the
    card names (``repeat_unet``, a file beside the source) is converted too, as ``<stem>_repeat.safetensors``
    beside the output, and the card names that file. Everything is read and checked before anything is written.
    """
    src, dst = Path(src), Path(dst)
    source_config, where = read_config(src)  # refuses a training resume state before reading its weights
    state_dict = read_state_dict(src)
    kind = "daclip" if any(key.startswith(_DACLIP_PREFIXES) for key in state_dict) else "unet"
    if kind == "daclip":
        state_dict = with_visual_alias(state_dict, src)
    config = _checked_architecture(kind, state_dict, src)
    if kind == "daclip":  # load_daclip restores the alias; a DA-CLIP file has no card
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(_VISUAL_ALIAS)}
    card = _run_settings(source_config, where) if kind == "unet" else {}
    outputs, sources = [dst, dst.with_suffix(".json")], [src, src.with_suffix(".json")]
    repeat_state = None
    if card.get("repeat_unet") is not None:
        repeat_src = _repeat_source(src, card["repeat_unet"], where)
        repeat_state = read_state_dict(repeat_src)
        _checked_architecture("unet", repeat_state, repeat_src)
        card["repeat_unet"] = f"{dst.stem}_repeat.safetensors"
        outputs.append(dst.with_name(card["repeat_unet"]))
        sources.append(repeat_src)
    _refuse_overwriting(outputs, sources)
    dtype = torch.float16 if fp16 else None
    if repeat_state is not None:
        save_safetensors(repeat_state, outputs[2], dtype=dtype)
    save_safetensors(state_dict, dst, {**card, kind: config}, dtype=dtype)
    return Converted(kind, tuple(outputs))


def _checked_architecture(kind: str, state_dict: Mapping[str, torch.Tensor], path: PathLike) -> dict:
    """The constructor kwargs the tensors describe, after checking every key and shape fits (no memory used)."""
    model, config = _build(kind, state_dict, path, device="meta")
    _check_fits(model, state_dict, path)
    return config


def _run_settings(config: dict | None, where: str) -> dict:
    """A U-Net config without its architecture: the card (checked by the card parser) and the training notes."""
    if config is None:
        return {}
    parse_card(config, where, ignore=CONFIG_ONLY_KEYS)
    return {key: value for key, value in config.items() if key not in ("unet", "daclip")}


def _repeat_source(src: Path, name: str, where: str) -> Path:
    """The further passes' U-Net a card names: a file beside the checkpoint."""
    path = src.parent / name
    if Path(name).name != name:
        raise CardError(f"{where}: 'repeat_unet' must be the name of a file beside it, got {name!r}")
    if not path.is_file():
        raise CardError(f"{path}: no such checkpoint file (named by {where} as 'repeat_unet')")
    return path


def _refuse_overwriting(outputs: list[Path], sources: list[Path]) -> None:
    """Raise UsageError when an output file would replace one of the source files."""
    for output in outputs:
        for source in sources:
            if output.exists() and source.exists() and output.samefile(source):
                raise UsageError(f"{output}: would overwrite the source file {source}; choose another output name")


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
    """Write a state dict as safetensors (aliases stored once, floats cast to `dtype`) plus <stem>.json.

    The config is also stored in the file's metadata (``derain_config``), where `read_config` finds
    it when the JSON is not beside the file.
    """
    path = Path(path)
    tensors = {name: _standalone(tensor, dtype) for name, tensor in _drop_aliases(state_dict).items()}
    text = None if config is None else json.dumps(config, indent=2, sort_keys=True) + "\n"
    # One metadata entry: safetensors writes several in a random order, and a checkpoint must be reproducible.
    metadata = {"format": "pt"} if text is None else {CONFIG_METADATA_KEY: text}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda partial: save_file(tensors, partial, metadata=metadata))
    if text is not None:
        _write_atomic(path.with_suffix(".json"), lambda partial: partial.write_text(text))


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through ``write(partial)`` and move it into place: never a truncated file under the real name."""
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.chmod(partial, 0o666 & ~_umask())  # safetensors creates 0600 files; give the usual permissions
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


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
