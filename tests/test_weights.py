"""Tests of derain_cli.weights: manifest validation, Hub downloads through a local stand-in, cache, sha256."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants as hf_constants

from derain_cli import weights
from derain_cli.errors import WeightsError
from derain_cli.weights import (
    ModelRow,
    UnverifiedWeightsWarning,
    cached_path,
    file_sha256,
    get_weights,
    is_cached,
    list_entries,
    list_models,
    load_manifest,
    local_weights,
    pick_auto_model,
    resolve_model,
    resolve_weights,
    verify,
    weights_names,
)
from tests.conftest import REPO
from tests.hub_standin import HubFile, HubStandin
from tests.test_cli import derain

REPO = "derain-test/tiny-weights"
REVISION = "0123456789abcdef0123456789abcdef01234567"
GOOD = hashlib.sha256(b"good").digest() * 128  # 4 KiB
OTHER = hashlib.sha256(b"other").digest() * 128  # same size, different bytes
LONG = hashlib.sha256(b"long").digest() * 256  # 8 KiB
INTERRUPT_AT = 3000


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hub_entry(filename: str, data: bytes | None, **overrides: Any) -> dict[str, Any]:
    """A manifest weights entry for `filename` in the stand-in repo, pinned to `data`'s sha256 and size."""
    entry = {
        "repo_id": REPO,
        "revision": REVISION,
        "filename": filename,
        "sha256": None if data is None else _sha(data),
        "size": None if data is None else len(data),
        "format": "safetensors",
        "license": "MIT",
    }
    return {**entry, **overrides}


def model_entry(unet: str, daclip: str | None = None) -> dict[str, Any]:
    """A manifest model entry with the universal model's SDE settings."""
    sde = {"max_sigma": 50, "T": 100, "schedule": "cosine", "eps": 0.005}
    return {"unet": unet, "daclip": daclip, "sde": sde, "sampler": "posterior", "description": "test"}


def write_manifest(folder: Path, weights_: dict[str, Any], models: dict[str, Any] | None = None) -> Path:
    """Write a schema-1 manifest into `folder` and return its path."""
    path = folder / "manifest.json"
    path.write_text(json.dumps({"schema": 1, "weights": weights_, "models": models or {}}))
    return path


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Start the Hub stand-in and point huggingface_hub (endpoint, cache, token, offline flag) at temporary state."""
    files = {
        "good.bin": HubFile(GOOD),
        "bad.bin": HubFile(OTHER),
        "resume.bin": HubFile(LONG, interrupt_after=INTERRUPT_AT),
    }
    server = HubStandin(REPO, REVISION, files).start()
    hf_home = tmp_path / "hf"
    # huggingface_hub reads these variables once, at import: set them and patch the constants it derived.
    for name, value in {
        "HF_ENDPOINT": server.url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "NO_PROXY": "127.0.0.1,localhost",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    yield server
    server.stop()


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    """A manifest with a good, a corrupt-on-the-Hub, a resumable, a missing and an unverified file."""
    entries = {
        "tiny": hub_entry("good.bin", GOOD),
        "corrupt": hub_entry("bad.bin", GOOD),
        "resumable": hub_entry("resume.bin", LONG),
        "absent": hub_entry("absent.bin", GOOD),
        "unpinned": hub_entry("good.bin", None),
    }
    return write_manifest(tmp_path, entries, {"universal": model_entry("tiny")})


def repo_cache(tmp_path: Path) -> Path:
    """The stand-in repo's folder inside the temporary Hugging Face cache."""
    return tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}"


# ---------------------------------------------------------------------------------------------- downloads


def test_download_is_verified_and_later_resolves_make_no_request(hub: HubStandin, manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    path = resolve_weights(manifest, "tiny", progress=False)
    assert path.read_bytes() == GOOD
    assert path == repo_cache(manifest_path.parent) / "snapshots" / REVISION / "good.bin"
    assert is_cached(get_weights(manifest, "tiny"))
    assert len(hub.gets("good.bin")) == 1
    assert [r.method for r in hub.requests if "/resolve/" in r.path] == ["HEAD", "GET"]
    assert not any("xet" in r.path for r in hub.requests)
    seen = len(hub.requests)
    assert resolve_weights(manifest, "tiny", progress=False) == path
    assert len(hub.requests) == seen


def test_checksum_mismatch_fails_naming_both_hashes_and_removes_blob_and_link(
    hub: HubStandin, manifest_path: Path
) -> None:
    manifest = load_manifest(manifest_path)
    with pytest.raises(WeightsError, match="sha256 mismatch") as caught:
        resolve_weights(manifest, "corrupt", progress=False)
    assert _sha(GOOD) in str(caught.value) and _sha(OTHER) in str(caught.value)
    assert "removed from the cache" in str(caught.value)
    cache = repo_cache(manifest_path.parent)
    assert not (cache / "snapshots" / REVISION / "bad.bin").exists()
    assert list((cache / "blobs").iterdir()) == []
    assert not is_cached(get_weights(manifest, "corrupt"))


def test_size_mismatch_is_caught_before_hashing(hub: HubStandin, tmp_path: Path) -> None:
    manifest = load_manifest(write_manifest(tmp_path, {"short": hub_entry("good.bin", GOOD, size=len(GOOD) + 1)}))
    with pytest.raises(WeightsError, match=f"expected {len(GOOD) + 1} bytes, got {len(GOOD)}"):
        resolve_weights(manifest, "short", progress=False)
    assert not is_cached(get_weights(manifest, "short"))


def test_interrupted_download_resumes_with_a_range_request(
    hub: HubStandin, manifest_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub writes (and so can resume from) whole chunks only; real chunks are 10 MB.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1000)
    path = resolve_weights(load_manifest(manifest_path), "resumable", progress=False)
    assert path.read_bytes() == LONG
    first, second = hub.gets("resume.bin")
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={INTERRUPT_AT}-"


def test_corrupt_cached_file_is_replaced_by_a_fresh_download(hub: HubStandin, manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    path = resolve_weights(manifest, "tiny", progress=False)
    path.resolve().write_bytes(OTHER)
    assert resolve_weights(manifest, "tiny", progress=False).read_bytes() == GOOD
    assert len(hub.gets("good.bin")) == 2


def test_corrupt_cached_file_is_removed_and_reported_when_offline(hub: HubStandin, manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    path = resolve_weights(manifest, "tiny", progress=False)
    path.resolve().write_bytes(OTHER)
    with pytest.raises(WeightsError, match="cached file was corrupt .*sha256 mismatch.* removed; offline mode is on"):
        resolve_weights(manifest, "tiny", offline=True)
    assert not is_cached(get_weights(manifest, "tiny"))


def test_missing_file_revision_or_repo_on_the_hub_give_one_line_errors(hub: HubStandin, tmp_path: Path) -> None:
    entries = {
        "absent": hub_entry("absent.bin", GOOD),
        "old": hub_entry("good.bin", GOOD, revision="f" * 40),
        "elsewhere": hub_entry("good.bin", GOOD, repo_id="someone/else"),
    }
    manifest = load_manifest(write_manifest(tmp_path, entries))
    expected = {
        "absent": "'absent.bin' not found",
        "old": f"revision {'f' * 40} not found",
        "elsewhere": "someone/else not found",
    }
    for name, message in expected.items():
        with pytest.raises(WeightsError, match=message) as caught:
            resolve_weights(manifest, name, progress=False)
        assert "\n" not in str(caught.value)


def test_unpinned_weights_warn_that_they_are_unverified(hub: HubStandin, manifest_path: Path) -> None:
    with pytest.warns(UnverifiedWeightsWarning, match="unverified"):
        path = resolve_weights(load_manifest(manifest_path), "unpinned", progress=False)
    assert path.read_bytes() == GOOD


# ---------------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("via_env", [False, True], ids=["flag", "HF_HUB_OFFLINE"])
def test_offline_mode_serves_cached_files_without_any_request(
    hub: HubStandin, manifest_path: Path, monkeypatch: pytest.MonkeyPatch, via_env: bool
) -> None:
    manifest = load_manifest(manifest_path)
    path = resolve_weights(manifest, "tiny", progress=False)
    seen = len(hub.requests)
    if via_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_weights(manifest, "tiny", offline=not via_env, progress=False) == path
    assert len(hub.requests) == seen


@pytest.mark.parametrize("via_env", [False, True], ids=["flag", "HF_HUB_OFFLINE"])
def test_offline_mode_without_cache_names_the_download_command(
    hub: HubStandin, manifest_path: Path, monkeypatch: pytest.MonkeyPatch, via_env: bool
) -> None:
    if via_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="run `derain weights download tiny` while online"):
        resolve_weights(load_manifest(manifest_path), "tiny", offline=not via_env, progress=False)
    assert hub.requests == []


# ---------------------------------------------------------------------------------------------- verify, list


def test_verify_reports_ok_missing_unverified_and_tampered_files(hub: HubStandin, manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    tiny = get_weights(manifest, "tiny")
    assert verify(tiny) == (False, "not downloaded; run `derain weights download tiny`")
    path = resolve_weights(manifest, "tiny", progress=False)
    assert verify(tiny) == (True, "sha256 ok")
    ok, message = verify(get_weights(manifest, "unpinned"))
    assert ok and message.startswith("unverified") and _sha(GOOD) in message
    blob = path.resolve()
    stat = blob.stat()
    blob.write_bytes(OTHER)
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: verify must still re-hash
    assert verify(tiny) == (False, f"sha256 mismatch: expected {_sha(GOOD)}, got {_sha(OTHER)}")


def test_list_entries_reports_size_source_and_cache_state(hub: HubStandin, manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    resolve_weights(manifest, "tiny", progress=False)
    rows = {row.name: row for row in list_entries(manifest)}
    assert rows["tiny"].cached and rows["tiny"].size == len(GOOD) and rows["tiny"].sha256_pinned
    assert rows["tiny"].source == f"hf://{REPO}@{REVISION[:7]}/good.bin"
    assert not rows["resumable"].cached
    assert rows["unpinned"].size == len(GOOD) and not rows["unpinned"].sha256_pinned  # size read from the file


def test_recorded_digest_is_reused_only_while_size_and_mtime_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "file.bin"
    path.write_bytes(GOOD)
    assert file_sha256(path) == _sha(GOOD)
    (record,) = (tmp_path / "xdg" / "derain" / "sha256").iterdir()
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "sha256": "0" * 64}))
    assert file_sha256(path) == "0" * 64  # trusted: the file was not hashed again
    assert file_sha256(path, reuse=False) == _sha(GOOD)
    record.write_text(json.dumps({**data, "sha256": "0" * 64}))
    os.utime(path, ns=(data["mtime_ns"] + 10**9, data["mtime_ns"] + 10**9))
    assert file_sha256(path) == _sha(GOOD)


# ---------------------------------------------------------------------------------------------- bundled, models


def test_bundled_path_entries_resolve_relative_to_the_manifest_without_network(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "compact.safetensors").write_bytes(GOOD)
    entry = {"path": "weights/compact.safetensors", "sha256": _sha(GOOD), "size": len(GOOD)}
    entry.update(format="safetensors", license="MIT")
    models = {"compact": model_entry("compact-unet")}
    manifest = load_manifest(write_manifest(tmp_path, {"compact-unet": entry}, models))
    compact = get_weights(manifest, "compact-unet")
    assert compact.bundled and compact.filename == "compact.safetensors"
    assert resolve_weights(manifest, "compact-unet", offline=True) == tmp_path / "weights" / "compact.safetensors"
    assert cached_path(compact) == tmp_path / "weights" / "compact.safetensors"
    assert list_entries(manifest)[0].source == "bundled (compact.safetensors)"


def test_damaged_bundled_file_fails_and_is_left_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "compact.bin").write_bytes(OTHER)
    entry = {"path": "compact.bin", "sha256": _sha(GOOD), "format": "pickle", "license": "MIT"}
    manifest = load_manifest(write_manifest(tmp_path, {"compact": entry}))
    with pytest.raises(WeightsError, match="damaged .*sha256 mismatch"):
        resolve_weights(manifest, "compact")
    assert (tmp_path / "compact.bin").exists()


def test_auto_model_prefers_universal_once_its_weights_are_cached(hub: HubStandin, tmp_path: Path) -> None:
    (tmp_path / "compact.bin").write_bytes(GOOD)
    bundled = {"path": "compact.bin", "format": "pickle", "license": "MIT"}
    entries = {"tiny": hub_entry("good.bin", GOOD), "compact-unet": bundled}
    models = {"universal": model_entry("tiny"), "compact": model_entry("compact-unet")}
    manifest = load_manifest(write_manifest(tmp_path, entries, models))
    name, reason = pick_auto_model(manifest)
    assert name == "compact" and "derain weights download universal" in reason
    resolve_weights(manifest, "tiny", progress=False)
    assert pick_auto_model(manifest)[0] == "universal"


def test_weights_names_expand_models_and_drop_duplicates(manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    assert weights_names(manifest, ["universal", "tiny", "absent"]) == ["tiny", "absent"]
    with pytest.raises(WeightsError, match="unknown weights or model 'nope'"):
        weights_names(manifest, ["nope"])
    with pytest.raises(WeightsError, match=r"unknown model 'nope'; choose from \['universal'\]"):
        resolve_model(manifest, "nope")


# ---------------------------------------------------------------------------------------------- manifests


def test_bundled_manifest_pins_the_published_universal_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DERAIN_MANIFEST", raising=False)
    manifest = load_manifest()
    assert manifest.path == weights.BUNDLED_MANIFEST
    universal = resolve_model(manifest, "universal")
    assert (universal.unet, universal.daclip, universal.card.sampler) == ("universal-ir", "daclip_ViT-B-32", "posterior")
    sde = universal.card.sde
    assert (sde.max_sigma, sde.T, sde.schedule, sde.eps) == (50, 100, "cosine", 0.005)
    unet = get_weights(manifest, "universal-ir")
    assert unet.sha256 == "87575b2559ca122d27b56fe7f24fe63d8099795cdd5b16af2bab41ecc2bb02a8"
    assert unet.revision == "b51c67537369f22b9e2485804f570ceab6ce3b2e"
    assert get_weights(manifest, "universal-ir-mix").sha256 is None


def test_derain_manifest_environment_variable_selects_a_user_manifest(
    manifest_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DERAIN_MANIFEST", str(manifest_path))
    manifest = load_manifest()
    assert manifest.path == manifest_path and "tiny" in manifest.weights


def _valid() -> dict[str, Any]:
    return {"schema": 1, "weights": {"w": hub_entry("good.bin", GOOD)}, "models": {"m": model_entry("w")}}


def _broken(change: str) -> dict[str, Any]:
    data = _valid()
    weight, model = data["weights"]["w"], data["models"]["m"]
    if change == "typo in weights key":
        weight["sha265"] = weight.pop("sha256")
    elif change == "typo in sde key":
        model["sde"]["max_sigm"] = model["sde"].pop("max_sigma")
    elif change == "unknown top-level key":
        data["model"] = data.pop("models")
    elif change == "model names unknown weights":
        model["daclip"] = "daclip_ViT-B-99"
    elif change == "branch instead of commit":
        weight["revision"] = "main"
    elif change == "bad format":
        weight["format"] = "ckpt"
    elif change == "missing filename":
        del weight["filename"]
    elif change == "schema 2":
        data["schema"] = 2
    elif change == "bad sampler":
        model["sampler"] = "euler"
    elif change == "size as string":
        weight["size"] = "4096"
    elif change == "bad prediction":
        model["prediction"] = "eps"
    elif change == "zero passes":
        model["passes"] = 0
    elif change == "repeat above 255":
        model["repeat_above"] = 300
    elif change == "empty repeat list":
        model["repeat_above"] = []
    elif change == "text in repeat list":
        model["repeat_above"] = [23.4, "11"]
    elif change == "tile too small":
        model["tile"] = 32
    elif change == "unknown precision":
        model["precision"] = "fp8"
    elif change == "repeat unet names unknown weights":
        model["repeat_unet"] = "w2"
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("typo in weights key", r"weights 'w': unknown key 'sha265' \(did you mean 'sha256'\?\); valid keys: \["),
        ("typo in sde key", r"model 'm' sde: unknown key 'max_sigm' \(did you mean 'max_sigma'\?\)"),
        ("unknown top-level key", r"unknown key 'model' \(did you mean 'models'\?\)"),
        ("model names unknown weights", r"'daclip' names unknown weights 'daclip_ViT-B-99'; known weights: \['w'\]"),
        ("branch instead of commit", r"'revision' must be a pinned 40-hex commit, got 'main'"),
        ("bad format", r"'format' is 'ckpt'; choose from \['pickle', 'safetensors'\]"),
        ("missing filename", r"missing key 'filename'"),
        ("schema 2", r"unsupported schema 2"),
        ("bad sampler", r"'sampler' is 'euler'; choose from"),
        ("size as string", r"'size' must be a byte count or null"),
        ("bad prediction", r"'prediction' is 'eps'; choose from \['noise', 'x0'\]"),
        ("zero passes", r"'passes' must be a positive number of runs, got 0"),
        ("repeat above 255", r"'repeat_above' must be a mean absolute change in 0..255, a list of them \(one per further pass\) or null, got 300"),
        ("empty repeat list", r"'repeat_above' must be .* got \[\]"),
        ("text in repeat list", r"'repeat_above' must be .* got \[23.4, '11'\]"),
        ("tile too small", r"'tile' must be a tile size of at least 64 pixels or null, got 32"),
        ("unknown precision", r"'precision' must be one of fp32, bf16, fp16 or null, got 'fp8'"),
        ("repeat unet names unknown weights", r"'repeat_unet' names unknown weights 'w2'; known weights: \['w'\]"),
    ],
)
def test_invalid_manifests_fail_naming_the_key_and_the_valid_choices(tmp_path: Path, change: str, message: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_broken(change)))
    with pytest.raises(WeightsError, match=message) as caught:
        load_manifest(path)
    assert str(path) in str(caught.value)


def test_valid_test_manifest_loads(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_valid()))
    assert load_manifest(path).models["m"].unet == "w"


def test_unreadable_manifests_fail_with_the_position_or_path(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text('{"schema": 1,')
    with pytest.raises(WeightsError, match="invalid JSON at line 1"):
        load_manifest(path)
    with pytest.raises(WeightsError, match="manifest not found"):
        load_manifest(tmp_path / "nope.json")


def test_a_model_with_a_unet_for_further_passes_needs_both_weights(tmp_path: Path) -> None:
    entries = {"first": hub_entry("good.bin", GOOD), "second": hub_entry("other.bin", OTHER)}
    models = {"cascade": {**model_entry("first"), "repeat_unet": "second"}, "plain": model_entry("first")}
    manifest = load_manifest(write_manifest(tmp_path, entries, models))
    assert resolve_model(manifest, "cascade").repeat_unet == "second"
    assert resolve_model(manifest, "plain").repeat_unet is None
    assert weights_names(manifest, ["cascade"]) == ["first", "second"]


# ---------------------------------------------------------------------------------------------- the weights commands


def test_list_models_names_what_model_takes_with_its_weights_and_cache_state(hub: HubStandin, manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    assert list_models(manifest) == [ModelRow("universal", ("tiny",), False, "test")]
    resolve_weights(manifest, "tiny", progress=False)
    assert list_models(manifest)[0].cached


def test_weights_list_shows_the_model_names_and_which_one_auto_picks(
    hub: HubStandin, manifest_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = derain("weights", "list", "--manifest", manifest_path, capsys=capsys)
    assert code == 0
    assert "--model NAME" in out and "universal (auto)" in out and "resumable" in out


def test_weights_path_prints_each_file_of_a_model_without_downloading(
    hub: HubStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = {"first": hub_entry("good.bin", GOOD), "second": hub_entry("resume.bin", LONG)}
    models = {"cascade": {**model_entry("first"), "repeat_unet": "second"}}
    manifest_file = write_manifest(tmp_path, entries, models)
    code, out, err = derain("weights", "path", "cascade", "--manifest", manifest_file, capsys=capsys)
    assert code == 1 and out == "" and hub.requests == []
    assert "first: not downloaded; run `derain weights download cascade`" in err and "offline" not in err
    manifest = load_manifest(manifest_file)
    paths = [resolve_weights(manifest, name, progress=False) for name in ("first", "second")]
    code, out, err = derain("weights", "path", "cascade", "first", "--manifest", manifest_file, capsys=capsys)
    assert code == 0, err
    assert out.splitlines() == [str(path) for path in paths]


def test_weights_path_of_a_tampered_file_says_it_is_damaged_and_leaves_it(hub: HubStandin, manifest_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    path = resolve_weights(manifest, "tiny", progress=False)
    path.resolve().write_bytes(OTHER)
    with pytest.raises(WeightsError, match=r"tiny: the cached file .* is damaged \(sha256 mismatch.*download tiny` to fetch"):
        local_weights(manifest, "tiny")
    assert path.read_bytes() == OTHER


def test_every_retry_warning_of_a_download_is_printed_once(hub: HubStandin, tmp_path: Path) -> None:
    hub.files["busy.bin"] = HubFile(GOOD, rate_limited=1)  # the metadata request is retried
    hub.files["cut.bin"] = HubFile(LONG, interrupt_after=INTERRUPT_AT)  # the transfer is resumed
    manifest_file = write_manifest(tmp_path, {"busy": hub_entry("busy.bin", GOOD), "cut": hub_entry("cut.bin", LONG)})
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    done = subprocess.run([sys.executable, "-m", "derain_cli", "weights", "download", "busy", "cut",
                           "--manifest", str(manifest_file)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Retrying in") == 1, done.stderr
    assert done.stderr.count("Trying to resume download") == 1, done.stderr
    assert "warning: Retrying in" in done.stderr  # in the CLI's own format
