"""Tests of derain_cli.jobs: planning a batch (resumable from any layout, collisions found up front)."""

from __future__ import annotations

from pathlib import Path

import pytest

from derain_cli.errors import DerainError, UsageError
from derain_cli.jobs import plan_batch

from tests.conftest import write_rgb


def touch_images(root: Path, *names: str) -> None:
    """Small image files at ``names`` under ``root``."""
    for name in names:
        write_rgb(root / name, 8, 8)


def names(jobs, root: Path) -> list[tuple[str, str]]:
    """(input, output) of each job, relative to ``root``."""
    return [(str(j.src.relative_to(root)), str(j.dst.relative_to(root))) for j in jobs]


def finish(plan) -> None:
    """Write every planned output, as a completed run would."""
    for job in plan.todo:
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        job.dst.write_bytes(job.src.read_bytes())


def test_an_output_folder_inside_the_input_folder_is_not_read_as_input_on_a_rerun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, as typed
    touch_images(Path("IN"), "a.png", "sub/b.jpg")
    first = plan_batch(Path("IN"), Path("IN/clean"), recursive=True)
    assert names(first.todo, Path(".")) == [("IN/a.png", "IN/clean/a.png"), ("IN/sub/b.jpg", "IN/clean/sub/b.jpg")]
    finish(first)
    again = plan_batch(Path("IN"), Path("IN/clean"), recursive=True)
    assert again.todo == [] and names(again.skipped, Path(".")) == names(first.todo, Path("."))
    assert sorted(map(str, again.left_out)) == ["IN/clean/a.png", "IN/clean/sub/b.jpg"]
    also = plan_batch(Path("IN"), Path("./IN/../IN/clean"), recursive=True)  # another spelling of the folder
    assert also.todo == [] and len(also.skipped) == 2


def test_outputs_beside_their_inputs_with_a_suffix_are_skipped_on_a_rerun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch_images(Path("IN"), "a.png", "b.jpg", "sub/c.png")
    first = plan_batch(Path("IN"), Path("IN"), recursive=True, suffix="_clean")
    assert [dst for _, dst in names(first.todo, Path("IN"))] == ["a_clean.png", "b_clean.jpg", "sub/c_clean.png"]
    finish(first)
    again = plan_batch(Path("IN"), Path("IN"), recursive=True, suffix="_clean")
    assert again.todo == [] and len(again.skipped) == 3 and len(again.left_out) == 3
    (Path("IN") / "a_clean.png").unlink()  # as if stopped before it
    resumed = plan_batch(Path("IN"), Path("IN"), recursive=True, suffix="_clean")
    assert names(resumed.todo, Path("IN")) == [("a.png", "a_clean.png")] and len(resumed.skipped) == 2
    redo = plan_batch(Path("IN"), Path("IN"), recursive=True, suffix="_clean", overwrite=True)
    assert [src for src, _ in names(redo.todo, Path("IN"))] == ["a.png", "b.jpg", "sub/c.png"]


def test_the_input_folder_as_output_without_a_suffix_is_refused(tmp_path):
    touch_images(tmp_path, "a.png")
    for ext in (None, "jpg"):  # a.jpg could not be told from an input on the rerun
        with pytest.raises(DerainError, match="--suffix"):
            plan_batch(tmp_path, tmp_path, ext=ext)


def test_two_inputs_onto_one_output_are_refused_naming_both(tmp_path):
    touch_images(tmp_path / "in", "x.png", "x.jpg", "y.png")
    with pytest.raises(DerainError) as caught:
        plan_batch(tmp_path / "in", tmp_path / "out", ext="png")
    message = str(caught.value)
    assert "x.jpg and " in message and "x.png would both be written to" in message and "--ext" in message
    assert not (tmp_path / "out").exists()
    assert len(plan_batch(tmp_path / "in", tmp_path / "out").todo) == 3  # each keeps its own extension


def test_an_output_onto_an_input_is_refused(tmp_path):
    touch_images(tmp_path / "top", "sub/a.png", "sub/sub/a.png")
    with pytest.raises(DerainError, match="overwrite an input"):  # top/sub/sub/a.png -> top/sub/a.png
        plan_batch(tmp_path / "top" / "sub", tmp_path / "top", recursive=True)


@pytest.mark.parametrize("ext", ["xyz", ".xyz", "", "png.bak"])
def test_an_unknown_ext_is_a_usage_error_before_the_folder_is_read(tmp_path, ext):
    with pytest.raises(UsageError, match="--ext"):
        plan_batch(tmp_path / "missing", tmp_path / "out", ext=ext)


@pytest.mark.parametrize("ext, suffix", [("PNG", ".png"), (".jpg", ".jpg"), ("webp", ".webp")])
def test_ext_takes_any_case_with_or_without_its_dot(tmp_path, ext, suffix):
    touch_images(tmp_path / "in", "a.bmp")
    assert plan_batch(tmp_path / "in", tmp_path / "out", ext=ext).todo[0].dst.name == f"a{suffix}"


def test_a_folder_with_images_only_in_sub_folders_hints_recursive(tmp_path):
    touch_images(tmp_path / "in", "sub/a.png", "sub/deeper/b.png")
    with pytest.raises(DerainError, match=r"but 2 in sub-folders; add -r"):
        plan_batch(tmp_path / "in", tmp_path / "out")
    assert len(plan_batch(tmp_path / "in", tmp_path / "out", recursive=True).todo) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DerainError, match="no image files"):
        plan_batch(tmp_path / "empty", tmp_path / "out")


class _Broken:
    """A restorer whose ``restore`` raises ``error`` for the image named ``bad``."""

    def __init__(self, error: BaseException, bad: str) -> None:
        self.error, self.bad = error, bad

    def restore(self, lq, options=None, callback=None):
        if lq.shape[-1] == 9:  # the bad image is 9 pixels wide
            raise self.error
        return lq


def test_a_bad_image_fails_alone_but_a_bug_stops_the_batch(tmp_path):
    from derain_cli.errors import NonFiniteError
    from derain_cli.jobs import iter_batch

    write_rgb(tmp_path / "in" / "a.png", 8, 8)
    write_rgb(tmp_path / "in" / "b.png", 8, 9)
    write_rgb(tmp_path / "in" / "c.png", 8, 8)
    plan = plan_batch(tmp_path / "in", tmp_path / "out")
    results = list(iter_batch(_Broken(NonFiniteError("b.png: the sampler gave non-finite values"), "b"), plan.todo, None))
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert not (tmp_path / "out" / "b.png").exists()
    with pytest.raises(RuntimeError, match="a bug"):  # not hidden as one image's failure (it was)
        list(iter_batch(_Broken(RuntimeError("a bug"), "b"), plan_batch(tmp_path / "in", tmp_path / "out2").todo, None))
