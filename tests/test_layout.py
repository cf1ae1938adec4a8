"""One weights manifest, at the repository's top level, found by a source checkout and by an installed wheel."""

import json
import shutil

from derain_cli import weights
from derain_cli.weights import MANIFEST_NAME, bundled_manifest, load_manifest

from tests.conftest import REPO


def test_the_bundled_manifest_is_the_one_file_at_the_top_level_of_the_repository(monkeypatch):
    monkeypatch.delenv("DERAIN_MANIFEST", raising=False)
    assert weights.BUNDLED_MANIFEST == REPO / MANIFEST_NAME
    assert not (REPO / "derain_cli" / MANIFEST_NAME).exists()  # no second copy to drift apart
    compact = load_manifest().weights["compact-unet"]
    assert compact.path == REPO / "derain_cli" / "weights" / "compact.safetensors" and compact.path.is_file()


def test_an_installed_package_reads_its_copy_with_paths_starting_beside_the_package(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"  # what a wheel install looks like: no pyproject.toml, the copy inside
    package = site / "derain_cli"
    (package / "weights").mkdir(parents=True)
    shutil.copy(REPO / MANIFEST_NAME, package / MANIFEST_NAME)
    (site / MANIFEST_NAME).write_text("{}")  # a stray file beside the package is not a source checkout's
    assert bundled_manifest(package) == package / MANIFEST_NAME
    monkeypatch.setattr(weights, "PACKAGE_DIR", package)
    manifest = load_manifest(package / MANIFEST_NAME)
    assert manifest.weights["compact-unet"].path == package / "weights" / "compact.safetensors"
    assert manifest.weights["compact-repeat-unet"].path == package / "weights" / "compact_repeat.safetensors"


def test_a_manifest_elsewhere_takes_its_paths_from_its_own_folder(tmp_path):
    data = json.loads((REPO / MANIFEST_NAME).read_text())
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    path = load_manifest(tmp_path / MANIFEST_NAME).weights["compact-unet"].path
    assert path == tmp_path / "derain_cli" / "weights" / "compact.safetensors"


def test_a_source_checkout_reads_the_top_level_file(tmp_path):
    (tmp_path / "derain_cli").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / MANIFEST_NAME).write_text("{}")
    assert bundled_manifest(tmp_path / "derain_cli") == tmp_path / MANIFEST_NAME
