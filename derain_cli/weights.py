"""Weights manifest, Hub downloads at pinned revisions, sha256 verification and the local cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from derain_cli.card import CARD_KEYS, ModelCard, check_keys, parse_card
from derain_cli.errors import WeightsError

MANIFEST_ENV = "DERAIN_MANIFEST"
MANIFEST_NAME = "weights_manifest.json"
PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_manifest(package_dir: Path = PACKAGE_DIR) -> Path:
    """The manifest that ships with derain: the repository's top-level file, or the copy a build puts in the package.

    A source checkout (editable install included) has the file beside ``pyproject.toml``; a wheel
    carries the copy that setup.py's build step makes at ``derain_cli/weights_manifest.json``.
    Either way its relative paths start at the folder that holds the ``derain_cli`` package.
    """
    source = package_dir.parent / MANIFEST_NAME
    if source.is_file() and (package_dir.parent / "pyproject.toml").is_file():
        return source
    return package_dir / MANIFEST_NAME


BUNDLED_MANIFEST = bundled_manifest()
SCHEMA_VERSION = 1
FORMATS = ("pickle", "safetensors")
AUTO_MODEL = "universal"
FALLBACK_MODEL = "compact"

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 8 << 20
_TRUE = {"1", "ON", "YES", "TRUE"}


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Return the connection-error classes of the HTTP clients huggingface_hub may use (httpx2, httpx, requests)."""
    found: list[type[BaseException]] = []
    clients = (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError"))
    for module_name, attr in clients:
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        found.append(getattr(module, attr))
    return tuple(found)




class UnverifiedWeightsWarning(UserWarning):
    """A weights file is used although the manifest pins no sha256 for it."""


@dataclass(frozen=True)
class WeightsEntry:
    """One weights file: on the Hub at a pinned revision, or bundled inside the package (`path`)."""

    name: str
    filename: str
    format: str
    license: str
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    path: Path | None = None

    @property
    def bundled(self) -> bool:
        """Whether the file ships with the package instead of coming from the Hub."""
        return self.path is not None

    @property
    def source(self) -> str:
        """Where the file comes from, for tables and messages."""
        if self.path is not None:
            return f"bundled ({self.filename})"
        return f"hf://{self.repo_id}@{str(self.revision)[:7]}/{self.filename}"


@dataclass(frozen=True)
class ModelEntry:
    """A runnable model: U-Net weights, optional DA-CLIP weights, and its card (how to run it)."""

    name: str
    unet: str
    daclip: str | None
    card: ModelCard

    @property
    def repeat_unet(self) -> str | None:
        """Weights of the further passes' U-Net (a cascade's), or None."""
        return self.card.cascade.unet if self.card.cascade else None


@dataclass(frozen=True)
class Manifest:
    """A parsed and validated weights manifest (schema 1)."""

    path: Path
    weights: Mapping[str, WeightsEntry]
    models: Mapping[str, ModelEntry]


@dataclass(frozen=True)
class WeightsRow:
    """One row of `derain weights list`."""

    name: str
    size: int | None
    source: str
    cached: bool
    sha256_pinned: bool


@dataclass(frozen=True)
class ModelRow:
    """One model of `derain weights list`: the name `--model` takes, its weights and whether all are local."""

    name: str
    weights: tuple[str, ...]
    cached: bool
    description: str


# ---------------------------------------------------------------------------------------------- manifest


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Read and validate a manifest: `path`, else $DERAIN_MANIFEST, else the one bundled with the package."""
    if path is None:
        path = os.environ.get(MANIFEST_ENV) or BUNDLED_MANIFEST
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise WeightsError(f"{path}: manifest not found") from err
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    return _parse_manifest(data, path)


def _parse_manifest(data: Any, path: Path) -> Manifest:
    """Build a Manifest from decoded JSON, raising WeightsError on the first schema violation."""
    base = _paths_base(path)
    check_keys(data, str(path), required={"schema", "weights", "models"}, optional=set())
    if data["schema"] != SCHEMA_VERSION or isinstance(data["schema"], bool):
        raise WeightsError(
            f"{path}: unsupported schema {data['schema']!r}; this version reads schema {SCHEMA_VERSION}"
        )
    for section in ("weights", "models"):
        if not isinstance(data[section], dict):
            raise WeightsError(f"{path}: {section!r} must be a JSON object")
    weights = {name: _parse_weights(name, raw, path, base) for name, raw in data["weights"].items()}
    models = {name: _parse_model(name, raw, path, weights) for name, raw in data["models"].items()}
    return Manifest(path=path, weights=MappingProxyType(weights), models=MappingProxyType(models))


_HUB_KEYS = {"repo_id", "revision", "filename", "format", "license"}
_BUNDLED_KEYS = {"path", "format", "license"}
_OPTIONAL_WEIGHTS_KEYS = {"sha256", "size"}


def _paths_base(manifest_path: Path) -> Path:
    """Where a manifest's relative paths start: its folder, but the package's parent for the package's own copy."""
    if manifest_path.resolve() == (PACKAGE_DIR / MANIFEST_NAME).resolve():
        return PACKAGE_DIR.parent  # so the copy reads as the top-level file does
    return manifest_path.parent


def _parse_weights(name: str, raw: Any, manifest_path: Path, base: Path) -> WeightsEntry:
    """Validate one weights entry; a relative `path` starts at ``base`` (the manifest's folder, see _paths_base)."""
    where = f"{manifest_path}: weights {name!r}"
    required = _BUNDLED_KEYS if isinstance(raw, dict) and "path" in raw else _HUB_KEYS
    check_keys(raw, where, required=required, optional=_OPTIONAL_WEIGHTS_KEYS)
    for key in required:
        _expect(raw[key], str, where, key)
    _expect_choice(raw["format"], FORMATS, where, "format")
    sha256, size = raw.get("sha256"), raw.get("size")
    if sha256 is not None and not (isinstance(sha256, str) and _HEX64.fullmatch(sha256)):
        raise WeightsError(f"{where}: 'sha256' must be 64 lowercase hex digits or null, got {sha256!r}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise WeightsError(f"{where}: 'size' must be a byte count or null, got {size!r}")
    common = dict(name=name, format=raw["format"], license=raw["license"], sha256=sha256, size=size)
    if "path" in raw:
        file_path = Path(raw["path"]).expanduser()
        file_path = file_path if file_path.is_absolute() else base / file_path
        return WeightsEntry(filename=file_path.name, path=file_path, **common)
    if not _HEX40.fullmatch(raw["revision"]):
        raise WeightsError(f"{where}: 'revision' must be a pinned 40-hex commit, got {raw['revision']!r}")
    return WeightsEntry(filename=raw["filename"], repo_id=raw["repo_id"], revision=raw["revision"], **common)


_MODEL_KEYS = frozenset({"unet", "daclip"})


def _parse_model(name: str, raw: Any, manifest_path: Path, weights: Mapping[str, WeightsEntry]) -> ModelEntry:
    """Validate one model entry (its card, strictly) and check that it names existing weights entries."""
    where = f"{manifest_path}: model {name!r}"
    check_keys(raw, where, required={"unet", "daclip", "sde", "sampler"}, optional=CARD_KEYS)
    card = parse_card(raw, where, ignore=_MODEL_KEYS)
    for key in ("unet", "daclip", "repeat_unet"):
        ref = raw.get(key)
        if key != "unet" and ref is None:
            continue
        _expect(ref, str, where, key)
        if ref not in weights:
            raise WeightsError(f"{where}: {key!r} names unknown weights {ref!r}; known weights: {sorted(weights)}")
    return ModelEntry(name=name, unet=raw["unet"], daclip=raw["daclip"], card=card)


def _expect(value: Any, types: type | tuple[type, ...], where: str, key: str) -> None:
    """Raise WeightsError unless `value` has one of `types` (booleans never count as numbers)."""
    if isinstance(value, bool) or not isinstance(value, types):
        expected = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise WeightsError(f"{where}: {key!r} must be {expected}, got {value!r}")


def _expect_choice(value: Any, choices: tuple[str, ...], where: str, key: str) -> None:
    """Raise WeightsError unless `value` is one of `choices`."""
    if value not in choices:
        raise WeightsError(f"{where}: {key!r} is {value!r}; choose from {list(choices)}")


def get_weights(manifest: Manifest, name: str) -> WeightsEntry:
    """Return the weights entry called `name`, or fail listing the valid names."""
    if name not in manifest.weights:
        raise WeightsError(f"unknown weights {name!r}; choose from {sorted(manifest.weights)}")
    return manifest.weights[name]


def resolve_model(manifest: Manifest, name: str) -> ModelEntry:
    """Return the model entry called `name`, or fail listing the valid names."""
    if name not in manifest.models:
        raise WeightsError(f"unknown model {name!r}; choose from {sorted(manifest.models)}")
    return manifest.models[name]


def model_weights(model: ModelEntry) -> list[str]:
    """Return the weights names a model needs (U-Net first, then DA-CLIP and the further passes' U-Net)."""
    return [model.unet] + [name for name in (model.daclip, model.repeat_unet) if name is not None]


def weights_names(manifest: Manifest, names: Iterable[str]) -> list[str]:
    """Expand weights or model names into the distinct weights names they need, in order."""
    result: list[str] = []
    for name in names:
        if name in manifest.weights:
            expanded = [name]
        elif name in manifest.models:
            expanded = model_weights(manifest.models[name])
        else:
            choices = f"weights: {sorted(manifest.weights)}, models: {sorted(manifest.models)}"
            raise WeightsError(f"unknown weights or model {name!r}; {choices}")
        result.extend(n for n in expanded if n not in result)
    return result


def pick_auto_model(manifest: Manifest) -> tuple[str, str]:
    """Choose the model for `--model auto`: `universal` when its files are present, else the bundled fallback."""
    if AUTO_MODEL in manifest.models and _model_cached(manifest, AUTO_MODEL):
        return AUTO_MODEL, f"{AUTO_MODEL!r} weights are in the cache"
    if FALLBACK_MODEL in manifest.models and _model_cached(manifest, FALLBACK_MODEL):
        return FALLBACK_MODEL, (
            f"{AUTO_MODEL!r} weights are not downloaded (run `derain weights download {AUTO_MODEL}`); "
            f"using the bundled model {FALLBACK_MODEL!r}"
        )
    if AUTO_MODEL in manifest.models:
        return AUTO_MODEL, f"no bundled model in {manifest.path}; {AUTO_MODEL!r} weights will be downloaded"
    raise WeightsError(f"{manifest.path}: defines neither {AUTO_MODEL!r} nor {FALLBACK_MODEL!r}; pass --model NAME")


def _model_cached(manifest: Manifest, model_name: str) -> bool:
    """Whether every weights file of a model is available locally."""
    return all(is_cached(manifest.weights[w]) for w in model_weights(manifest.models[model_name]))


# ---------------------------------------------------------------------------------------------- cache


def cached_path(entry: WeightsEntry) -> Path | None:
    """Return the local file of an entry (bundled file or Hugging Face cache snapshot), or None if absent."""
    if entry.path is not None:
        return entry.path if entry.path.is_file() else None
    from huggingface_hub import try_to_load_from_cache  # the Hub client is imported where it is used

    found = try_to_load_from_cache(entry.repo_id, entry.filename, revision=entry.revision)
    return Path(found) if isinstance(found, str) else None


def is_cached(entry: WeightsEntry) -> bool:
    """Whether the entry's file is available without a download."""
    return cached_path(entry) is not None


def list_entries(manifest: Manifest) -> list[WeightsRow]:
    """Return one row per weights entry: name, size in bytes (if known), source and whether it is local."""
    rows = []
    for entry in manifest.weights.values():
        local = cached_path(entry)
        size = entry.size if entry.size is not None or local is None else local.stat().st_size
        rows.append(WeightsRow(entry.name, size, entry.source, local is not None, entry.sha256 is not None))
    return rows


def list_models(manifest: Manifest) -> list[ModelRow]:
    """Return one row per model: its name, the weights it needs and whether they are all available locally."""
    return [ModelRow(name, tuple(model_weights(model)), _model_cached(manifest, name), model.card.description)
            for name, model in manifest.models.items()]


def local_weights(manifest: Manifest, name: str, wanted: str | None = None) -> Path:
    """Return the verified local file of weights `name` without downloading; an error says how to get it.

    ``wanted`` is what the user asked for (a model whose weights `name` are), named in the error's hint.
    """
    entry, hint = get_weights(manifest, name), f"run `derain weights download {wanted or name}`"
    if entry.path is not None:
        return _resolve_bundled(entry)
    local = cached_path(entry)
    if local is None:
        raise WeightsError(f"{name}: not downloaded; {hint}")
    problem = _check_file(entry, local, reuse_digest=True)
    if problem is not None:
        raise WeightsError(f"{name}: the cached file {local} is damaged ({problem}); {hint} to fetch it again")
    return local


def offline_mode(requested: bool = False) -> bool:
    """Whether downloads are off: `requested`, or HF_HUB_OFFLINE set now or when huggingface_hub was imported."""
    from_env = os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE
    from huggingface_hub import constants as hf_constants

    return requested or from_env or bool(hf_constants.HF_HUB_OFFLINE)


def resolve_weights(manifest: Manifest, name: str, offline: bool = False, progress: bool = True) -> Path:
    """Return a verified local file for weights `name`, downloading it at the pinned revision if needed.

    Entries without a pinned sha256 are used with an `UnverifiedWeightsWarning` (via `warnings.warn`).
    """
    entry = get_weights(manifest, name)
    if entry.sha256 is None:
        warnings.warn(
            f"weights {name!r} ({entry.filename}) have no sha256 in {manifest.path}: the file is used unverified",
            UnverifiedWeightsWarning,
            stacklevel=2,
        )
    if entry.path is not None:
        return _resolve_bundled(entry)
    local = cached_path(entry)
    if local is not None:
        problem = _check_file(entry, local, reuse_digest=True)
        if problem is None:
            return local
        _remove_from_cache(local)
        why = f"the cached file was corrupt ({problem}) and has been removed"
    else:
        why = "not in the Hugging Face cache"
    # Offline never calls huggingface_hub: even with local_files_only it builds request headers, which may fetch
    # its agent-harness registry from the Hub.
    if offline_mode(offline):
        raise WeightsError(f"{name}: {why}; {_offline_hint(name)}")
    local = _download(entry, progress=progress)
    problem = _check_file(entry, local, reuse_digest=False)
    if problem is not None:
        _remove_from_cache(local)
        raise WeightsError(f"{name}: downloaded file failed verification ({problem}); it was removed from the cache")
    return local


def verify(entry: WeightsEntry) -> tuple[bool, str]:
    """Re-hash the entry's local file and compare it with the manifest: (ok, one-line message)."""
    local = cached_path(entry)
    if local is None and entry.path is not None:
        return False, f"bundled file {entry.path} is missing; reinstall derain-cli"
    if local is None:
        return False, f"not downloaded; run `derain weights download {entry.name}`"
    problem = _check_file(entry, local, reuse_digest=False)
    if problem is not None:
        return False, problem
    if entry.sha256 is None:
        return True, f"unverified: no sha256 in the manifest (file sha256 {file_sha256(local)})"
    return True, "sha256 ok"


def _resolve_bundled(entry: WeightsEntry) -> Path:
    """Return a bundled file after checking it exists and matches its pinned size and sha256."""
    assert entry.path is not None
    if not entry.path.is_file():
        raise WeightsError(f"{entry.name}: bundled weights file {entry.path} is missing; reinstall derain-cli")
    problem = _check_file(entry, entry.path, reuse_digest=True)
    if problem is not None:
        raise WeightsError(
            f"{entry.name}: bundled weights file {entry.path} is damaged ({problem}); reinstall derain-cli"
        )
    return entry.path


def _check_file(entry: WeightsEntry, path: Path, *, reuse_digest: bool) -> str | None:
    """Return why `path` does not match the entry's size or sha256, or None when it matches."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"size mismatch: expected {entry.size} bytes, got {size}"
    if entry.sha256 is None:
        return None
    digest = file_sha256(path, reuse=reuse_digest)
    if digest != entry.sha256:
        return f"sha256 mismatch: expected {entry.sha256}, got {digest}"
    return None


def _offline_hint(name: str) -> str:
    """Explain how to get weights that are not in the cache while offline."""
    return f"offline mode is on (--offline or HF_HUB_OFFLINE=1); run `derain weights download {name}` while online"


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Temporarily silence huggingface_hub's download bars when `enabled` is False."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


@contextmanager
def _hub_logs_once() -> Iterator[None]:
    """Send huggingface_hub's messages (e.g. its retry warnings) only through the application's logging, if it has any.

    huggingface_hub gives its logger a handler of its own and lets records propagate too, so where
    the application has configured logging (the CLI does) every message would be printed twice.
    """
    hub = logging.getLogger("huggingface_hub")
    own = list(hub.handlers)
    if not (own and hub.propagate and logging.getLogger().handlers):
        yield
        return
    for handler in own:
        hub.removeHandler(handler)
    try:
        yield
    finally:
        for handler in own:
            hub.addHandler(handler)


def _download(entry: WeightsEntry, *, progress: bool) -> Path:
    """Fetch one Hub entry into the Hugging Face cache (resuming broken transfers) and return its snapshot path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{entry.name} ({entry.repo_id}/{entry.filename} @ {str(entry.revision)[:7]})"
    try:
        with _progress_bars(progress), _hub_logs_once():
            found = hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision)
    except LocalEntryNotFoundError as err:  # huggingface_hub's answer to a failed metadata request
        cause = err.__cause__ or err
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        raise WeightsError(f"{where}: cannot reach the file on the Hub ({reason}) and it is not cached") from err
    except RevisionNotFoundError as err:
        raise WeightsError(f"{where}: revision {entry.revision} not found on the Hub") from err
    except RepositoryNotFoundError as err:
        raise WeightsError(f"{where}: repository {entry.repo_id} not found (or private) on the Hub") from err
    except EntryNotFoundError as err:
        raise WeightsError(f"{where}: file {entry.filename!r} not found in the repository at that revision") from err
    except HfHubHTTPError as err:
        raise WeightsError(f"{where}: download failed: {str(err).splitlines()[0]}") from err
    except _transport_errors() as err:
        raise WeightsError(f"{where}: connection to the Hub lost ({type(err).__name__}: {err}); try again") from err
    return Path(found)


def _remove_from_cache(snapshot_path: Path) -> None:
    """Delete a cached file: the blob and the snapshot link pointing to it, plus its recorded digest."""
    blob = snapshot_path.resolve()
    _digest_record(blob).unlink(missing_ok=True)
    snapshot_path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- hashing


def file_sha256(path: Path, reuse: bool = True) -> str:
    """Return the hex sha256 of a file, streamed; with `reuse`, trust a digest recorded for the same size and mtime."""
    real = Path(path).resolve()
    stat = real.stat()
    record = _digest_record(real)
    if reuse:
        cached = _read_record(record)
        if cached.get("size") == stat.st_size and cached.get("mtime_ns") == stat.st_mtime_ns:
            return str(cached["sha256"])
    digest = hashlib.sha256()
    with real.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    _write_record(
        record, {"path": str(real), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": hexdigest}
    )
    return hexdigest


def _digest_record(real_path: Path) -> Path:
    """Return the sidecar file that records the digest of `real_path` ($XDG_CACHE_HOME/derain/sha256/)."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(real_path).encode()).hexdigest()[:32]
    return cache_home / "derain" / "sha256" / f"{key}.json"


def _read_record(record: Path) -> dict[str, Any]:
    """Read a digest record; a missing or unreadable one counts as empty."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(record: Path, data: dict[str, Any]) -> None:
    """Write a digest record atomically; a read-only cache only costs a re-hash next time."""
    tmp = record.with_suffix(f".{os.getpid()}.tmp")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, record)
    except OSError:
        tmp.unlink(missing_ok=True)
