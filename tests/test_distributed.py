"""A batch split over torchrun processes (gloo on the CPU): each image once, one report, same files."""

import json
import os
import socket
import subprocess
import sys

from tests.conftest import REPO, write_rgb

from derain_cli.distributed import World


def test_a_world_shares_the_sorted_jobs_round_robin_and_a_lone_process_keeps_them_all():
    jobs = list(range(7))
    assert [World(rank, 3).share(jobs) for rank in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert World().share(jobs) == jobs and World().gather(["a"]) == ["a"]
    assert World(0, 2).device("cpu") == "cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(args: list, nproc: int) -> subprocess.CompletedProcess:
    """`derain batch ARGS`, alone or under torchrun with ``nproc`` CPU processes."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "derain_cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "derain_cli"]
    return subprocess.run([*launcher, "batch", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_splits_a_batch_writes_one_report_and_the_files_of_a_single_process_run(tmp_path, plain_unet_file):
    for i in range(5):
        write_rgb(tmp_path / "in" / f"{i}.png", 24, 32, seed=i)
    common = ["--unet", plain_unet_file, "--steps", "3", "--device", "cpu", "--seed", "4", "-q"]
    alone = _batch([tmp_path / "in", "-o", tmp_path / "alone", "--json", tmp_path / "alone.json", *common], 1)
    assert alone.returncode == 0, alone.stderr
    split = _batch([tmp_path / "in", "-o", tmp_path / "split", "--json", tmp_path / "split.json", *common], 2)
    assert split.returncode == 0, split.stderr
    for i in range(5):
        assert (tmp_path / "split" / f"{i}.png").read_bytes() == (tmp_path / "alone" / f"{i}.png").read_bytes()
    report = json.loads((tmp_path / "split.json").read_text())["images"]
    assert sorted(r["input"] for r in report) == sorted(str(tmp_path / "in" / f"{i}.png") for i in range(5))
    assert [r["status"] for r in report] == ["ok"] * 5
    assert split.stderr.count("5 restored") == 1  # one summary, from the first process
    (tmp_path / "split" / "3.png").unlink()  # resume: only the missing image is redone
    again = _batch([tmp_path / "in", "-o", tmp_path / "split", "--json", tmp_path / "split.json", *common], 2)
    assert again.returncode == 0, again.stderr
    statuses = {r["input"].rsplit("/", 1)[1]: r["status"] for r in json.loads((tmp_path / "split.json").read_text())["images"]}
    assert statuses == {"0.png": "skipped", "1.png": "skipped", "2.png": "skipped", "3.png": "ok", "4.png": "skipped"}
    assert (tmp_path / "split" / "3.png").read_bytes() == (tmp_path / "alone" / "3.png").read_bytes()
