"""Malformed inputs and flags, one row each: the exit code, one line on stderr, nothing written or lost.

Every row runs the real `derain` entry point on a small tree of files and checks that the command
exits with 1 (a job that cannot be done) or 2 (a command line that cannot work), prints exactly one
line starting with "error:" and no traceback, leaves every file as it was and adds none (no
partial or temporary files), and, unless the row needs the model to find its problem, never
loads a model: `derain_cli.resolve.load` raises in those rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import write_rgb
from tests.test_cli import derain


@dataclass
class Case:
    """One malformed command line: its arguments (built from the fixture tree), exit code and message."""

    args: Callable[[Path, Path], list]  # (tree root, tiny model file) -> arguments after `derain`
    code: int
    message: str  # a part of the error line (the file it names, the option)
    loads_model: bool = False  # the problem is only found by resolving the model


def make_tree(root: Path) -> None:
    """Inputs, an existing output folder, a regular file, a corrupt image and paired bench folders."""
    write_rgb(root / "in" / "cat.png", seed=1)
    write_rgb(root / "in" / "dog.jpg", seed=2)
    (root / "out").mkdir()
    (root / "file.txt").write_text("a regular file")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    write_rgb(root / "twins" / "x.png", seed=3)
    write_rgb(root / "twins" / "x.jpg", seed=4)
    write_rgb(root / "nested" / "deeper" / "a.png", seed=5)
    (root / "empty").mkdir()
    write_rgb(root / "lq" / "rain-001.png", 40, 56, seed=6)
    write_rgb(root / "gt" / "norain-001.png", 40, 50, seed=7)


def run_args(*extra) -> Callable[[Path, Path], list]:
    """`derain run in/cat.png` with the tiny model and ``extra`` (strings with {root} filled in)."""
    return lambda root, unet: ["run", root / "in" / "cat.png", "--unet", unet, "--device", "cpu",
                               *(str(a).format(root=root) for a in extra)]


def batch_args(src: str, *extra) -> Callable[[Path, Path], list]:
    """`derain batch ROOT/src` with the tiny model and ``extra`` (strings with {root} filled in)."""
    return lambda root, unet: ["batch", root / src, "--unet", unet, "--device", "cpu",
                               *(str(a).format(root=root) for a in extra)]


OUT = "{root}/out/clean.png"
CASES = {
    # -- run: the output path -------------------------------------------------------------
    "run -o with an unknown extension": Case(run_args("-o", "{root}/out.xyz"), 2, "'.xyz'"),
    "run -o without an extension": Case(run_args("-o", "{root}/clean"), 2, "no image extension"),
    "run -o that is only an extension": Case(run_args("-o", "{root}/.png"), 2, "no image extension"),
    "run -o an existing folder": Case(run_args("-o", "{root}/out/"), 1, "is a folder"),
    "run -o under a regular file": Case(run_args("-o", "{root}/file.txt/clean.png"), 1, "file.txt"),
    "run -o deep under a regular file": Case(run_args("-o", "{root}/file.txt/a/b/clean.png"), 1, "file.txt"),
    "run -o equal to the input": Case(run_args("-o", "{root}/in/cat.png"), 1, "input"),
    "run -o the input through another spelling": Case(run_args("-o", "{root}/in/../in/cat.png"), 1, "input"),
    # -- run: the input -------------------------------------------------------------------
    "run a missing input": Case(lambda root, unet: ["run", root / "nope.png", "-o", root / "x.png",
                                                    "--unet", unet], 1, "nope.png: no such file"),
    "run a folder": Case(lambda root, unet: ["run", root / "in", "-o", root / "x.png", "--unet", unet], 1,
                         "derain batch"),
    "run a corrupt input": Case(lambda root, unet: ["run", root / "corrupt.png", "-o", root / "x.png",
                                                    "--unet", unet], 1, "corrupt.png"),
    # -- run: sampling and model flags ----------------------------------------------------
    "run --sampler euler": Case(run_args("-o", OUT, "--sampler", "euler"), 2, "euler"),
    "run --schedule cosin": Case(run_args("-o", OUT, "--schedule", "cosin"), 2, "cosin"),
    "run --precision fp8": Case(run_args("-o", OUT, "--precision", "fp8"), 2, "fp8"),
    "run --steps 0": Case(run_args("-o", OUT, "--steps", "0"), 2, "--steps"),
    "run --steps -3": Case(run_args("-o", OUT, "--steps", "-3"), 2, "--steps"),
    "run --tile 8": Case(run_args("-o", OUT, "--tile", "8"), 2, "--tile 8"),
    "run --tile banana": Case(run_args("-o", OUT, "--tile", "banana"), 2, "--tile"),
    "run --ensemble 3": Case(run_args("-o", OUT, "--ensemble", "3"), 2, "--ensemble 3"),
    "run --passes 0": Case(run_args("-o", OUT, "--passes", "0"), 2, "--passes"),
    "run --passes two": Case(run_args("-o", OUT, "--passes", "two"), 2, "--passes"),
    "run --quality 0": Case(run_args("-o", OUT, "--quality", "0"), 2, "--quality"),
    "run an unknown option": Case(run_args("-o", OUT, "--bogus"), 2, "--bogus"),
    "run --daclip without --unet": Case(lambda root, unet: ["run", root / "in" / "cat.png", "-o", root / "x.png",
                                                            "--daclip", unet], 2, "--daclip"),
    "run an unknown model": Case(lambda root, unet: ["run", root / "in" / "cat.png", "-o", root / "x.png",
                                                     "--model", "nope", "--manifest", root / "manifest.json"],
                                 1, "nope", loads_model=True),
    "run a missing checkpoint": Case(lambda root, unet: ["run", root / "in" / "cat.png", "-o", root / "x.png",
                                                         "--unet", root / "missing.safetensors"],
                                     1, "missing.safetensors", loads_model=True),
    # -- batch ----------------------------------------------------------------------------
    "batch --ext xyz": Case(batch_args("in", "-o", "{root}/out", "--ext", "xyz"), 2, "--ext"),
    "batch --ext .xyz": Case(batch_args("in", "-o", "{root}/out", "--ext", ".xyz"), 2, "--ext"),
    "batch --ext with nothing": Case(batch_args("in", "-o", "{root}/out", "--ext", ""), 2, "--ext"),
    "batch a missing folder": Case(batch_args("nowhere", "-o", "{root}/out"), 1, "nowhere"),
    "batch a file": Case(batch_args("file.txt", "-o", "{root}/out"), 1, "file.txt"),
    "batch an empty folder": Case(batch_args("empty", "-o", "{root}/out"), 1, "no image"),
    "batch images only in sub-folders": Case(batch_args("nested", "-o", "{root}/out"), 1, "-r"),
    "batch -o a regular file": Case(batch_args("in", "-o", "{root}/file.txt"), 1, "file.txt"),
    "batch -o under a regular file": Case(batch_args("in", "-o", "{root}/file.txt/clean"), 1, "file.txt"),
    "batch into its own folder without --suffix": Case(batch_args("in", "-o", "{root}/in"), 1, "--suffix"),
    "batch two inputs onto one output": Case(batch_args("twins", "-o", "{root}/out", "--ext", "png"), 1,
                                             "x.jpg and "),
    "batch --json an existing folder": Case(batch_args("in", "-o", "{root}/clean", "--json", "{root}/out"), 1,
                                            "is a folder"),
    "batch --json under a regular file": Case(batch_args("in", "-o", "{root}/clean", "--json",
                                                         "{root}/file.txt/r.json"), 1, "file.txt"),
    "batch --steps 0": Case(batch_args("in", "-o", "{root}/clean", "--steps", "0"), 2, "--steps"),
    "batch --sampler euler": Case(batch_args("in", "-o", "{root}/clean", "--sampler", "euler"), 2, "euler"),
    # -- bench ----------------------------------------------------------------------------
    "bench a ground truth of another size": Case(
        lambda root, unet: ["bench", root / "lq", "--gt", root / "gt", "--score-only", "--no-lpips",
                            "--json", root / "report.json"], 1, "norain-001.png"),
    "bench a missing ground-truth folder": Case(
        lambda root, unet: ["bench", root / "lq", "--gt", root / "nogt", "--score-only", "--no-lpips"], 1, "nogt"),
}


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: sha256 of each file's bytes, 'dir' for folders."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def forbid_model_loading(monkeypatch) -> None:
    """Make resolving a model fail the test: the problem must be found before any model work."""
    def load(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr("derain_cli.resolve.load", load)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_malformed_command_fails_in_one_line_and_leaves_every_file_as_it_was(
        case, tmp_path, plain_unet_file, monkeypatch, capsys):
    make_tree(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({
        "schema": 1, "weights": {"tiny": {"path": str(plain_unet_file), "format": "safetensors", "license": "MIT"}},
        "models": {"tiny": {"unet": "tiny", "daclip": None, "sampler": "posterior", "steps": 3,
                            "sde": {"max_sigma": 10, "T": 100, "schedule": "cosine", "eps": 0.005}}}}))
    before = snapshot(tmp_path)
    if not case.loads_model:
        forbid_model_loading(monkeypatch)
    code, out, err = derain(*case.args(tmp_path, plain_unet_file), capsys=capsys)
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert case.message in lines[0] and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_an_unwritable_output_folder_is_refused_before_the_model_loads(tmp_path, plain_unet_file, monkeypatch,
                                                                       capsys):
    """os.access answers for the folder (root may write anywhere, so the answer is faked here)."""
    make_tree(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    def access(path, mode, **kwargs) -> bool:  # no write permission in `locked`, as for a user after chmod 0o500
        return not (Path(path) == locked and mode & os.W_OK) and real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    forbid_model_loading(monkeypatch)
    before = snapshot(tmp_path)
    for args in (["run", tmp_path / "in" / "cat.png", "-o", locked / "clean.png"],
                 ["run", tmp_path / "in" / "cat.png", "-o", locked / "new" / "clean.png"],
                 ["batch", tmp_path / "in", "-o", locked],
                 ["batch", tmp_path / "in", "-o", tmp_path / "clean", "--json", locked / "r.json"]):
        code, _, err = derain(*args, "--unet", plain_unet_file, capsys=capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error:"), err
        assert "locked" in err and "not writable" in err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions: root may write into a read-only folder, so there is nothing to refuse")
def test_a_read_only_output_folder_is_refused_for_real(tmp_path, plain_unet_file, monkeypatch, capsys):
    make_tree(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    forbid_model_loading(monkeypatch)
    try:
        code, _, err = derain("run", tmp_path / "in" / "cat.png", "-o", locked / "clean.png", "--unet",
                              plain_unet_file, capsys=capsys)
        assert code == 1 and err.startswith("error:") and "not writable" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_bench_refuses_a_ground_truth_of_another_size_before_restoring_anything(tmp_path, plain_unet_file,
                                                                               monkeypatch, capsys):
    from derain_cli.pipeline import DerainPipeline

    make_tree(tmp_path)
    write_rgb(tmp_path / "lq" / "rain-002.png", 40, 56, seed=8)  # a good pair before the bad one is reached
    write_rgb(tmp_path / "gt" / "norain-002.png", 40, 56, seed=9)
    write_rgb(tmp_path / "lq" / "rain-003.png", 40, 56, seed=10)
    write_rgb(tmp_path / "gt" / "norain-003.png", 30, 56, seed=11)

    def restore(*args, **kwargs):
        raise AssertionError("restored before the sizes were checked")

    monkeypatch.setattr(DerainPipeline, "restore", restore)
    before = snapshot(tmp_path)
    code, _, err = derain("bench", tmp_path / "lq", "--gt", tmp_path / "gt", "--unet", plain_unet_file, "--quiet",
                          "--device", "cpu", "--no-lpips", "-o", tmp_path / "restored", "--grid", tmp_path / "grid",
                          "--json", tmp_path / "report.json", capsys=capsys)
    assert code == 1 and err.count("error:") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'lq' / 'rain-001.png'} is 56x40 but its ground truth {tmp_path / 'gt' / 'norain-001.png'}" \
        " is 50x40 (1 more pair(s) differ in size)" in err
    assert snapshot(tmp_path) == before


def test_a_bad_output_path_is_refused_without_importing_torch(tmp_path):
    """Refusing `-o out.xyz` costs an interpreter start, not the seconds torch takes to import."""
    import subprocess
    import sys

    src = write_rgb(tmp_path / "cat.png")
    script = ("import sys; from derain_cli.cli import app\n"
              "try:\n"
              f"    app(args=['run', {str(src)!r}, '-o', 'out.xyz', '--model', 'universal'], standalone_mode=False)\n"
              "except Exception as error:\n"
              "    print(type(error).__name__, 'torch' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.stdout.split() == ["UsageError", "False"], done.stderr
