"""`derain train` end to end: option names, resume refusals and stopping by signal, through cli.main()."""

import json
import os
import signal

import pytest
import torch

from derain_cli.train import Trainer

from tests.conftest import write_rgb
from tests.test_cli import derain


@pytest.fixture
def pairs(tmp_path):
    for i in range(3):
        write_rgb(tmp_path / "data" / "GT" / f"{i}.png", 40, 40, seed=i)
        write_rgb(tmp_path / "data" / "LQ" / f"{i}.png", 40, 40, seed=i + 10)
    return tmp_path / "data"


def tiny_args(data, *more) -> list:
    return ["train", "--data", data, "--nf", "8", "--ch-mult", "1,2", "--patch-size", "16", "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "--quiet", *more]


def test_train_takes_output_and_sde_steps_and_their_old_names_and_refuses_another_architecture(
        tmp_path, pairs, capsys):
    run = tmp_path / "run"
    code, _, err = derain(*tiny_args(pairs, "-o", run, "--sde-steps", "100", "--steps", "2"), capsys=capsys)
    assert code == 0, err
    sidecar = json.loads((run / "last" / "unet.json").read_text())
    assert (sidecar["sde"]["T"], sidecar.get("steps"), sidecar.get("sampler")) == (100, None, None)
    code, _, err = derain(*tiny_args(pairs, "--out", run, "--T", "100", "--steps", "3", "--resume"), capsys=capsys)
    assert code == 0, err
    assert torch.load(run / "last" / "state.pt", weights_only=True)["step"] == 3
    for flag, value, message in [("--sde-steps", "50", "--sde-steps 100 in the run, 50 given"),
                                 ("--nf", "16", "--nf 8 in the run, 16 given")]:
        code, _, err = derain(*tiny_args(pairs, "--output", run, flag, value, "--steps", "4", "--resume"),
                              capsys=capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_train_stopped_by_a_signal_saves_says_so_in_one_line_and_exits_with_the_signal_code(
        tmp_path, pairs, capsys, monkeypatch, signum, code):
    step = Trainer.train_step

    def signalled_step(self, batch, number):
        if number == 3:
            os.kill(os.getpid(), signum)  # as Ctrl-C or `kill` would, in the middle of step 3
        return step(self, batch, number)

    monkeypatch.setattr(Trainer, "train_step", signalled_step)
    previous = signal.getsignal(signum)
    run = tmp_path / "run"
    exit_code, _, err = derain(*tiny_args(pairs, "-o", run, "--steps", "100"), capsys=capsys)
    assert exit_code == code
    assert err.strip() == f"stopped at step 3 (saved in {run / 'last'}); --resume continues"
    assert torch.load(run / "last" / "state.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signum) is previous and "stopped by" in (run / "train.log").read_text()


def test_a_cli_run_records_no_sampler_it_was_not_given(tmp_path, capsys):
    for i in range(2):
        write_rgb(tmp_path / "data" / "GT" / f"{i}.png", 40, 40, seed=i)
        write_rgb(tmp_path / "data" / "LQ" / f"{i}.png", 40, 40, seed=i + 10)
    args = ["train", "--data", tmp_path / "data", "-o", tmp_path / "run", "--nf", "8", "--ch-mult", "1,2", "--steps", "1",
            "--patch-size", "32", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--quiet"]
    code, _, err = derain(*args, capsys=capsys)
    assert code == 0, err
    sidecar = json.loads((tmp_path / "run" / "last" / "unet.json").read_text())
    assert "sampler" not in sidecar and "steps" not in sidecar  # the weights keep the card's defaults (T steps)
    code, _, err = derain(*args[:4], tmp_path / "run2", *args[5:], "--val-sampler", "euler", capsys=capsys)
    assert code == 2 and "euler" in err
