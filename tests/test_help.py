"""`derain --help`: readable placeholders, shown defaults, and no torch import (so it is fast)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_cli import derain

COMMANDS = [[], ["run"], ["batch"], ["bench"], ["synth"], ["train"], ["weights"], ["weights", "list"],
            ["weights", "download"], ["weights", "verify"], ["weights", "path"], ["weights", "convert"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "derain")
def test_help_shows_plain_placeholders_not_python_types(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = derain(*command, "--help", capsys=capsys)
    assert code == 0, err
    for label in ("<bool>", "<str>", "<path>", "<int", "<float>", "<list", "{"):
        assert label not in out, f"{label} in `derain {' '.join(command)} --help`"


def test_help_names_arguments_in_capitals_and_shows_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = derain("run", "--help", capsys=capsys)
    assert code == 0
    assert "derain run [OPTIONS] RAINY" in out
    assert "PX|auto|0" in out and "posterior|sde|ode|mr" in out
    assert "[default: 32]" in out and "[default: auto]" in out
    code, out, _ = derain("weights", "download", "--help", capsys=capsys)
    assert "NAMES..." in out


def test_help_does_not_import_torch():
    script = ("import sys; sys.argv = ['derain', '--help']\n"
              "from derain_cli import cli\n"
              "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
              "print('torch' in sys.modules, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "False", done.stderr
