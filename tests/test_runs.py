"""Run folders: atomic checkpoint replacement, recovery of a cut-short replacement, pruning, fixed settings."""

import json

import pytest
import torch

from derain_cli.errors import DerainError
from derain_cli.runs import STATE_FORMAT, RunFolder, check_fixed_settings, step_name


def write(run: RunFolder, name: str, step: int):
    return run.write(name, {"w": torch.full((2,), float(step))}, {"step": step},
                     {"format": STATE_FORMAT, "step": step})


def test_a_checkpoint_replaces_the_old_one_whole_and_leaves_no_temporary_folders(tmp_path):
    run = RunFolder(tmp_path)
    write(run, "last", 1)
    folder = write(run, "last", 2)
    assert sorted(p.name for p in folder.iterdir()) == ["state.pt", "unet.json", "unet.safetensors"]
    assert json.loads((folder / "unet.json").read_text()) == {"step": 2}
    assert run.read_state()["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_a_replacement_cut_short_between_its_renames_is_recovered(tmp_path):
    run = RunFolder(tmp_path)
    write(run, "last", 3)
    (tmp_path / "last").rename(tmp_path / ".last.old")  # died after moving the old one aside
    run.recover()
    assert run.read_state()["step"] == 3 and not (tmp_path / ".last.old").exists()


def test_pruning_keeps_the_newest_numbered_checkpoints_and_export_prefers_best(tmp_path):
    run = RunFolder(tmp_path)
    for step in (5, 10, 15):
        write(run, step_name(step), step)
    write(run, "last", 15)
    run.prune(2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000010", "step-00000015"]
    assert run.exported_weights() == tmp_path / "last" / "unet.safetensors"
    write(run, "best", 10)
    assert run.exported_weights() == tmp_path / "best" / "unet.safetensors"


def test_a_state_of_another_format_is_refused(tmp_path):
    run = RunFolder(tmp_path)
    run.write("last", {"w": torch.zeros(1)}, {}, {"format": STATE_FORMAT + 1})
    with pytest.raises(DerainError, match="unknown training state format"):
        run.read_state()


def test_fixed_settings_that_differ_are_all_named_on_one_line(tmp_path):
    check_fixed_settings(tmp_path, {"--nf": "8"}, {"--nf": "8"})
    with pytest.raises(DerainError) as refused:
        check_fixed_settings(tmp_path, {"--nf": "8", "--seed": "0", "--eps": "0.005"},
                             {"--nf": "16", "--seed": "0", "--eps": "0.01"})
    assert str(refused.value).startswith(f"cannot resume {tmp_path} with other settings: "
                                         "--nf 8 in the run, 16 given; --eps 0.005 in the run, 0.01 given")
    assert "\n" not in str(refused.value)
