"""The `derain` command line end to end, through the same entry point users run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derain_cli import cli
from derain_cli.errors import DerainError

from tests.conftest import write_rgb

FAST = ["--steps", "3", "--device", "cpu", "--quiet"]


def derain(*args, capsys) -> tuple[int, str, str]:
    """Run `derain ARGS` in-process via the console-script entry point; (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["derain", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- run ----------------------------------------------------------------------------------------

def test_run_writes_an_output_of_the_input_size(tmp_path, plain_unet_file, capsys):
    src = write_rgb(tmp_path / "rainy.png", 37, 50)
    code, _, err = derain("run", src, "-o", tmp_path / "clean.png", "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "clean.png").size == (50, 37)


def test_run_with_the_same_seed_gives_identical_files(tmp_path, plain_unet_file, capsys):
    src = write_rgb(tmp_path / "rainy.png")
    for name, seed in (("a.png", 1), ("b.png", 1), ("c.png", 2)):
        derain("run", src, "-o", tmp_path / name, "--unet", plain_unet_file, "--seed", seed, *FAST, capsys=capsys)
    a, b, c = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png", "c.png"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_run_passes_runs_the_model_again_on_its_output(tmp_path, plain_unet_file, capsys):
    src = write_rgb(tmp_path / "rainy.png")
    for name, passes in (("one.png", "1"), ("auto.png", "auto"), ("two.png", "2")):
        code, _, err = derain("run", src, "-o", tmp_path / name, "--unet", plain_unet_file, "--passes", passes, *FAST,
                              capsys=capsys)
        assert code == 0, err
    once = np.asarray(Image.open(tmp_path / "one.png"))
    assert np.array_equal(once, np.asarray(Image.open(tmp_path / "auto.png")))  # a bare file: one pass
    code, _, err = derain("run", tmp_path / "one.png", "-o", tmp_path / "again.png", "--unet", plain_unet_file, *FAST,
                          capsys=capsys)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "two.png")), np.asarray(Image.open(tmp_path / "again.png")))
    code, _, err = derain("run", src, "-o", tmp_path / "x.png", "--unet", plain_unet_file, "--passes", "0", *FAST,
                          capsys=capsys)
    assert code == 2 and "--passes" in err and not (tmp_path / "x.png").exists()


def test_run_ensemble_averages_over_mirror_images_and_refuses_other_sizes(tmp_path, plain_unet_file, capsys):
    src = write_rgb(tmp_path / "rainy.png", 40, 56)
    for name, size in (("one.png", "1"), ("two.png", "2"), ("two_again.png", "2")):
        code, _, err = derain("run", src, "-o", tmp_path / name, "--unet", plain_unet_file, "--ensemble", size, *FAST,
                              capsys=capsys)
        assert code == 0, err
    one, two, again = (np.asarray(Image.open(tmp_path / n)) for n in ("one.png", "two.png", "two_again.png"))
    assert np.array_equal(two, again) and not np.array_equal(one, two)
    code, _, err = derain("run", src, "-o", tmp_path / "x.png", "--unet", plain_unet_file, "--ensemble", "8", *FAST,
                          capsys=capsys)
    assert code == 2 and "--ensemble 8" in err and not (tmp_path / "x.png").exists()


def test_tile_auto_uses_the_tile_size_the_model_asks_for(tmp_path, plain_unet_file, capsys):
    model = tmp_path / "m.safetensors"
    model.write_bytes(plain_unet_file.read_bytes())
    sidecar = json.loads(plain_unet_file.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**sidecar, "tile": 64}))
    src = write_rgb(tmp_path / "rainy.png", 90, 120)
    for name, tile in (("auto.png", "auto"), ("t64.png", "64"), ("whole.png", "0")):
        code, _, err = derain("run", src, "-o", tmp_path / name, "--unet", model, "--tile", tile, *FAST, capsys=capsys)
        assert code == 0, err
    auto, t64, whole = (np.asarray(Image.open(tmp_path / n)) for n in ("auto.png", "t64.png", "whole.png"))
    assert np.array_equal(auto, t64) and not np.array_equal(auto, whole)


def test_run_with_daclip_checkpoints_in_the_official_formats(tmp_path, daclip_model_files, capsys):
    unet_path, daclip_path = daclip_model_files
    src = write_rgb(tmp_path / "rainy.jpg")
    code, _, err = derain("run", src, "-o", tmp_path / "clean.webp", "--unet", unet_path, "--daclip", daclip_path,
                          "--sampler", "sde", *FAST, capsys=capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "clean.webp").size == (56, 40)


def test_missing_input_is_one_line_error_with_exit_1(tmp_path, plain_unet_file, capsys):
    code, _, err = derain("run", tmp_path / "nope.png", "-o", tmp_path / "x.png", "--unet", plain_unet_file,
                          *FAST, capsys=capsys)
    assert code == 1
    assert err.strip() == f"error: {tmp_path / 'nope.png'}: no such file"
    code, _, err = derain("run", tmp_path, "-o", tmp_path / "x.png", "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 1 and err.strip() == f"error: {tmp_path}: is a folder; `derain batch` derains a folder"


def test_corrupt_input_names_the_file_and_has_no_traceback(tmp_path, plain_unet_file, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    code, _, err = derain("run", bad, "-o", tmp_path / "x.png", "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 1
    assert "broken.png" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_debug_lets_the_traceback_through(tmp_path, plain_unet_file, capsys):
    with pytest.raises(DerainError):
        derain("--debug", "run", tmp_path / "nope.png", "-o", tmp_path / "x.png", "--unet", plain_unet_file,
               *FAST, capsys=capsys)


def test_refuses_to_overwrite_the_input(tmp_path, plain_unet_file, capsys):
    src = write_rgb(tmp_path / "rainy.png")
    before = src.read_bytes()
    code, _, err = derain("run", src, "-o", src, "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 1 and "input" in err
    assert src.read_bytes() == before


def test_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    src = write_rgb(tmp_path / "rainy.png")
    fake = tmp_path / "model.pth"
    fake.write_text("not a checkpoint")
    code, _, err = derain("run", src, "-o", tmp_path / "x.png", "--unet", fake, *FAST, capsys=capsys)
    assert code == 1 and "model.pth" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--tile", "banana"], ["--steps", "0"], ["--bogus"]])
def test_usage_errors_exit_2(tmp_path, plain_unet_file, args, capsys):
    src = write_rgb(tmp_path / "rainy.png")
    code, _, _ = derain("run", src, "-o", tmp_path / "x.png", "--unet", plain_unet_file, *args, capsys=capsys)
    assert code == 2


# -- batch --------------------------------------------------------------------------------------

def make_folder(root: Path) -> Path:
    """Two good images, a corrupt one, a non-image file and a sub-folder image."""
    write_rgb(root / "a.png", seed=1)
    write_rgb(root / "b.jpg", seed=2)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 3)
    (root / "notes.txt").write_text("not an image")
    write_rgb(root / "sub" / "c.png", seed=3)
    return root


def test_batch_continues_past_a_bad_file_reports_it_and_exits_1(tmp_path, plain_unet_file, capsys):
    src, dst = make_folder(tmp_path / "in"), tmp_path / "out"
    report = tmp_path / "report.json"
    code, _, err = derain("batch", src, "-o", dst, "--unet", plain_unet_file, "--json", report, *FAST, capsys=capsys)
    assert code == 1
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "b.jpg"]
    assert "corrupt.png" in err and "2 restored" in err and "1 failed" in err
    rows = {Path(r["input"]).name: r for r in json.loads(report.read_text())["images"]}
    assert set(rows) == {"a.png", "b.jpg", "corrupt.png"}
    assert rows["corrupt.png"]["status"] == "failed" and "corrupt.png" in rows["corrupt.png"]["error"]
    assert rows["a.png"]["status"] == "ok" and rows["a.png"]["seconds"] > 0


def test_batch_resumes_skipping_existing_outputs_unless_overwrite(tmp_path, plain_unet_file, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    write_rgb(src / "a.png", seed=1)
    write_rgb(src / "b.png", seed=2)
    assert derain("batch", src, "-o", dst, "--unet", plain_unet_file, *FAST, capsys=capsys)[0] == 0
    first = (dst / "a.png").stat().st_mtime_ns
    (dst / "b.png").unlink()  # as if the batch had been interrupted
    code, _, err = derain("batch", src, "-o", dst, "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 0 and "1 restored, 1 skipped" in err
    assert (dst / "a.png").stat().st_mtime_ns == first and (dst / "b.png").exists()
    code, _, err = derain("batch", src, "-o", dst, "--unet", plain_unet_file, "--overwrite", *FAST, capsys=capsys)
    assert code == 0 and "2 restored" in err


def test_batch_recursive_mirrors_folders_with_suffix_and_ext(tmp_path, plain_unet_file, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    write_rgb(src / "a.png")
    write_rgb(src / "sub" / "deeper" / "c.png")
    code, _, err = derain("batch", src, "-o", dst, "--recursive", "--suffix", "_clean", "--ext", "jpg",
                          "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 0, err
    assert (dst / "a_clean.jpg").is_file() and (dst / "sub" / "deeper" / "c_clean.jpg").is_file()


def test_batch_into_its_own_folder_without_suffix_is_refused(tmp_path, plain_unet_file, capsys):
    src = tmp_path / "in"
    write_rgb(src / "a.png")
    before = (src / "a.png").read_bytes()
    code, _, err = derain("batch", src, "-o", src, "--overwrite", "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 1 and "overwrite an input" in err
    assert (src / "a.png").read_bytes() == before


@pytest.mark.parametrize("out, extra", [("IN/clean", ["-r"]), ("IN", ["--suffix", "_clean"]),
                                        ("IN", ["-r", "--suffix", "_clean", "--ext", "jpg"])])
def test_batch_with_outputs_inside_the_input_folder_resumes_on_a_rerun(out, extra, tmp_path, plain_unet_file,
                                                                       monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths, as typed
    write_rgb(Path("IN") / "a.png", seed=1)
    write_rgb(Path("IN") / "b.png", seed=2)
    args = ["batch", "IN", "-o", out, *extra, "--unet", plain_unet_file, *FAST]
    code, _, err = derain(*args, capsys=capsys)
    assert code == 0 and "2 restored, 0 skipped" in err, err
    written = sorted(str(p) for p in Path("IN").rglob("*") if p.is_file())
    first = {p: Path(p).stat().st_mtime_ns for p in written}
    code, _, err = derain(*args, capsys=capsys)
    assert code == 0 and "0 restored, 2 skipped, 0 failed" in err, err
    assert {p: Path(p).stat().st_mtime_ns for p in written} == first
    assert sorted(str(p) for p in Path("IN").rglob("*") if p.is_file()) == written  # nothing new


def test_batch_interrupted_writes_the_report_of_the_images_done_and_exits_130(tmp_path, plain_unet_file,
                                                                                monkeypatch, capsys):
    from derain_cli import jobs

    src, dst, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write_rgb(src / name, seed=i)
    real, calls = jobs.derain_file, []

    def ctrl_c_on_the_second(*args, **kwargs):
        calls.append(args[1].name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "derain_file", ctrl_c_on_the_second)
    code, _, err = derain("batch", src, "-o", dst, "--json", report, "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 130 and "interrupted after 1 of 3 image(s)" in err and str(report) in err
    data = json.loads(report.read_text())
    assert data["interrupted"] is True
    assert [(Path(r["input"]).name, r["status"]) for r in data["images"]] == [("a.png", "ok")]
    assert [p.name for p in dst.iterdir()] == ["a.png"]  # no partial or temporary file of b.png
    monkeypatch.setattr(jobs, "derain_file", real)
    code, _, err = derain("batch", src, "-o", dst, "--json", report, "--unet", plain_unet_file, *FAST, capsys=capsys)
    assert code == 0 and "2 restored, 1 skipped" in err
    assert json.loads(report.read_text())["interrupted"] is False


def test_batch_progress_names_the_image_being_restored(tmp_path, plain_unet_file, monkeypatch, capsys):
    import io

    from rich.console import Console

    src = tmp_path / "in"
    write_rgb(src / "first.png", seed=1)
    write_rgb(src / "sub" / "second.png", seed=2)
    screen = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=screen, force_terminal=True, width=120))
    code, _, _ = derain("batch", src, "-o", tmp_path / "out", "-r", "--unet", plain_unet_file, "--steps", "2",
                        "--device", "cpu", capsys=capsys)
    assert code == 0, screen.getvalue()
    assert "first.png" in screen.getvalue() and str(Path("sub") / "second.png") in screen.getvalue()


# -- bench --------------------------------------------------------------------------------------

def test_bench_score_only_pairs_by_name_and_writes_json_and_csv(tmp_path, capsys):
    gt, lq = tmp_path / "gt", tmp_path / "lq"
    for i in (1, 2, 3):
        write_rgb(gt / f"norain-{i:03d}.png", seed=i)
        clean = np.asarray(Image.open(gt / f"norain-{i:03d}.png")).astype(int)
        noisy = np.clip(clean + np.random.default_rng(i).integers(-20, 20, clean.shape), 0, 255).astype(np.uint8)
        lq.mkdir(exist_ok=True)
        Image.fromarray(noisy).save(lq / f"rain-{i:03d}.png")
    write_rgb(lq / "rain-009.png")  # no ground truth
    report, table = tmp_path / "r.json", tmp_path / "r.csv"
    code, out, err = derain("bench", lq, "--gt", gt, "--score-only", "--json", report, "--csv", table,
                            "--per-image", "--no-lpips", "--quiet", capsys=capsys)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert [img["name"] for img in data["images"]] == ["rain-001.png", "rain-002.png", "rain-003.png"]
    assert set(data["mean"]) >= {"psnr", "ssim", "psnr_y", "ssim_y"}
    assert all(set(img) >= {"name", "psnr", "ssim", "psnr_y", "ssim_y"} for img in data["images"])
    assert not any("seconds" in img for img in data["images"]) and "seconds" not in out  # nothing was timed
    assert 20 < data["mean"]["psnr"] < 40 and data["crop_border"] == 0
    assert data["unpaired_inputs"] == ["rain-009.png"]
    assert "rain-009.png" in err and "crop_border=0" in out
    assert table.read_text().splitlines()[0].startswith("name,gt,psnr,ssim,psnr_y,ssim_y")


def test_bench_restores_saves_outputs_and_grid(tmp_path, plain_unet_file, capsys):
    gt, lq = tmp_path / "gt", tmp_path / "lq"
    write_rgb(gt / "001.png", seed=1)
    write_rgb(lq / "001.png", seed=5)
    code, _, err = derain("bench", lq, "--gt", gt, "-o", tmp_path / "out", "--grid", tmp_path / "grid",
                          "--unet", plain_unet_file, "--no-lpips", "--json", tmp_path / "r.json", *FAST, capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "001.png").is_file()
    width, height = Image.open(tmp_path / "grid" / "001.png").size
    assert width == 3 * 56 + 8 and height > 40  # three panels under a band of labels
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["device"] == "cpu"


# -- synth / weights ----------------------------------------------------------------------------

def test_synth_writes_training_pairs(tmp_path, capsys):
    write_rgb(tmp_path / "clean" / "x.png", 64, 64)
    code, _, err = derain("synth", tmp_path / "clean", "-o", tmp_path / "pairs", "--preset", "light", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "pairs" / "LQ" / "x.png").is_file() and (tmp_path / "pairs" / "GT" / "x.png").is_file()


def test_weights_list_and_path_with_a_bundled_entry(tmp_path, plain_unet_file, capsys):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "schema": 1,
        "weights": {"tiny": {"path": str(plain_unet_file), "format": "safetensors", "license": "MIT"}},
        "models": {"tiny": {"unet": "tiny", "daclip": None, "sampler": "posterior", "steps": 3,
                            "sde": {"max_sigma": 10, "T": 100, "schedule": "cosine", "eps": 0.005}}},
    }))
    code, out, _ = derain("weights", "list", "--manifest", manifest, capsys=capsys)
    assert code == 0 and "tiny" in out and "bundled" in out
    code, out, _ = derain("weights", "path", "tiny", "--manifest", manifest, capsys=capsys)
    assert code == 0 and out.strip() == str(plain_unet_file)
    src = write_rgb(tmp_path / "rainy.png")
    code, _, err = derain("run", src, "-o", tmp_path / "c.png", "--manifest", manifest, "--model", "tiny",
                          "--device", "cpu", capsys=capsys)
    assert code == 0 and "model 'tiny'" in err
    code, _, err = derain("run", src, "-o", tmp_path / "c.png", "--manifest", manifest, "--model", "nope",
                          capsys=capsys)
    assert code == 1 and "choose from ['tiny']" in err


def test_weights_convert_writes_safetensors_and_config(tmp_path, daclip_model_files, capsys):
    unet_path, _ = daclip_model_files
    dst = tmp_path / "converted.safetensors"
    code, _, err = derain("weights", "convert", unet_path, dst, capsys=capsys)
    assert code == 0, err
    assert dst.is_file() and json.loads(dst.with_suffix(".json").read_text())["unet"]["nf"] == 32


def test_train_renders_rain_on_clean_photos_and_refuses_unknown_presets(tmp_path, capsys):
    for i in range(2):
        write_rgb(tmp_path / "clean" / f"{i}.png", 40, 40, seed=i)
    args = ["train", "--synth", tmp_path / "clean", "--out", tmp_path / "run", "--nf", "8", "--ch-mult", "1,2",
            "--steps", "2", "--patch-size", "32", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    code, _, err = derain(*args, "--synth-preset", "heavy:3", "--synth-preset", "light", capsys=capsys)
    assert code == 0, err
    assert "8 pairs" in err and (tmp_path / "run" / "last" / "unet.safetensors").is_file()
    code, _, err = derain(*args, "--synth-preset", "drizzle:2", capsys=capsys)
    assert code == 2 and "drizzle:2" in err and "torrent" in err
    code, _, err = derain(*args, "--synth-preset", "heavy:0", capsys=capsys)
    assert code == 2 and "heavy:0" in err


def test_train_writes_a_loadable_run_and_refuses_to_clobber_it(tmp_path, capsys):
    from derain_cli.checkpoints import load_unet

    for i in range(3):
        write_rgb(tmp_path / "data" / "GT" / f"{i}.png", 40, 40, seed=i)
        write_rgb(tmp_path / "data" / "LQ" / f"{i}.png", 40, 40, seed=i + 10)
    args = ["train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--nf", "8", "--ch-mult", "1,2",
            "--steps", "6", "--patch-size", "32", "--batch-size", "2", "--workers", "0", "--ckpt-every", "2",
            "--keep", "2", "--max-sigma", "10", "--device", "cpu", "--quiet"]
    code, _, err = derain(*args, capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*")) == ["step-00000004", "step-00000006"]
    weights = tmp_path / "run" / "last" / "unet.safetensors"
    assert load_unet(weights).config["nf"] == 8
    assert json.loads(weights.with_suffix(".json").read_text())["sde"]["max_sigma"] == 10
    code, _, err = derain(*args, capsys=capsys)
    assert code == 1 and "resume" in err
    src = write_rgb(tmp_path / "rainy.png")
    code, _, err = derain("run", src, "-o", tmp_path / "out.png", "--unet", weights, *FAST, capsys=capsys)
    assert code == 0, err


# -- fast sampling --------------------------------------------------------------------------------

def test_fast_runs_mars_at_twenty_calls_and_mr_settings_reach_the_sampler(tmp_path, plain_unet_file, capsys,
                                                                           monkeypatch):
    from derain_cli import mars

    calls = []
    real = mars.sample_mars

    def spy(denoiser, mu, x_T, tables, steps, options, *args, **kwargs):
        calls.append((steps, options))
        return real(denoiser, mu, x_T, tables, steps, options, *args, **kwargs)

    monkeypatch.setattr(mars, "sample_mars", spy)
    src = write_rgb(tmp_path / "rainy.png", 24, 24)
    common = ["--unet", plain_unet_file, "--device", "cpu", "--quiet"]
    code, _, err = derain("run", src, "-o", tmp_path / "fast.png", "--fast", *common, capsys=capsys)
    assert code == 0, err
    code, _, err = derain("run", src, "-o", tmp_path / "mr.png", "--sampler", "mr", "--steps", "20", *common,
                          capsys=capsys)
    assert code == 0, err
    code, _, err = derain("run", src, "-o", tmp_path / "sde.png", "--fast", "--mr", "solver=sde", "--mr", "order=1",
                          *common, capsys=capsys)
    assert code == 0, err
    assert [c[0] for c in calls] == [20, 20, 20]
    assert calls[0][1] == calls[1][1] == mars.MarsOptions()
    assert (calls[2][1].solver, calls[2][1].order) == ("sde", 1)
    fast, mr = (np.asarray(Image.open(tmp_path / n)) for n in ("fast.png", "mr.png"))
    assert np.array_equal(fast, mr)


@pytest.mark.parametrize(("args", "message"), [
    (["--fast", "--steps", "5"], "give --fast or --steps/--sampler, not both"),
    (["--mr", "order=2"], "--mr settings need --sampler mr or --fast"),
    (["--fast", "--mr", "order=3"], "unknown MaRS order 3; choose from [1, 2]"),
    (["--fast", "--mr", "speed=9"], "expected KEY=VALUE with KEY one of solver"),
    (["--fast", "--mr", "thresholding=maybe"], "expected true or false"),
])
def test_fast_and_mr_misuse_is_a_one_line_usage_error(tmp_path, plain_unet_file, capsys, args, message):
    src = write_rgb(tmp_path / "rainy.png", 24, 24)
    code, _, err = derain("run", src, "-o", tmp_path / "x.png", "--unet", plain_unet_file, "--device", "cpu", *args,
                          capsys=capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()
