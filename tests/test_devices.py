"""CPU threads: `--threads`, and a default that never asks for more CPUs than the process may use."""

import pytest
import torch

from derain_cli import devices
from derain_cli.errors import UsageError

from tests.test_cli import FAST, derain
from tests.conftest import write_rgb


@pytest.fixture
def restore_threads():
    """Put torch back to the one thread the tests run with."""
    yield
    torch.set_num_threads(1)


def test_the_default_caps_torchs_thread_count_at_the_usable_cpus(monkeypatch, restore_threads):
    torch.set_num_threads(2)
    monkeypatch.setattr(devices, "usable_cpus", lambda: 1)
    assert devices.set_threads() == 1 and torch.get_num_threads() == 1


def test_the_default_never_raises_torchs_thread_count(monkeypatch, restore_threads):
    monkeypatch.setattr(devices, "usable_cpus", lambda: 64)
    assert devices.set_threads() == 1 and torch.get_num_threads() == 1


def test_an_explicit_thread_count_is_set(restore_threads):
    assert devices.set_threads(2) == 2 and torch.get_num_threads() == 2
    with pytest.raises(UsageError, match="--threads 0"):
        devices.set_threads(0)


@pytest.mark.parametrize("cpu_max, want", [("150000 100000\n", 1.5), ("max 100000\n", None), ("garbage", None)])
def test_a_cgroup_quota_limits_the_usable_cpus(tmp_path, cpu_max, want):
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert devices._cgroup_cpu_quota(tmp_path) == want


def test_derain_run_threads_sets_torchs_threads_before_the_model_runs(tmp_path, plain_unet_file, capsys,
                                                                       monkeypatch, restore_threads):
    seen = []
    original = devices.set_threads
    monkeypatch.setattr(devices, "set_threads", lambda count=None: seen.append(count) or original(count))
    src = write_rgb(tmp_path / "rainy.png", 24, 24)
    code, _, err = derain("run", src, "-o", tmp_path / "a.png", "--unet", plain_unet_file, "--threads", "2", *FAST,
                          capsys=capsys)
    assert code == 0, err
    assert seen == [2] and torch.get_num_threads() == 2
    code, _, err = derain("run", src, "-o", tmp_path / "b.png", "--unet", plain_unet_file, "--threads", "0", *FAST,
                          capsys=capsys)
    assert code == 2 and "--threads" in err and "Traceback" not in err
