"""benchmarks/gpu.py, the prepared GPU benchmark, smoke-tested on the CPU without the reference."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    """The benchmark script imported as a module."""
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_bench"]


def tiny_args(json_path: Path, *extra: str) -> list[str]:
    """Options of a run of a few seconds: a small U-Net, two tiny sizes (one tiled), one step."""
    return ["--device", "cpu", "--quick", "--nf", "16", "--sizes", "16x16,24x16", "--tile", "16",
            "--precisions", "fp32,bf16", "--steps", "1", "--json", str(json_path), *extra]


def test_quick_run_without_reference_gives_finite_derain_rows(gpu_bench, tmp_path):
    result = gpu_bench.main(tiny_args(tmp_path / "gpu.json"))
    assert json.loads((tmp_path / "gpu.json").read_text()) == result
    posterior = [r for r in result["rows"] if r["impl"] == "derain"]
    assert [(r["size"], r["precision"]) for r in posterior] == [
        ("16x16", "fp32"), ("16x16", "bf16"), ("24x16", "fp32"), ("24x16", "bf16")]
    assert all(r["impl"] != "reference" for r in result["rows"])
    for row in posterior:
        assert row["status"] == "ok", row["status"]
        for key in ("s_per_image", "tflop_per_image", "floor_s", "x_floor", "cpu_noise_s"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["speedup_vs_reference"] is None
    assert [r["tile"] for r in posterior] == [None, None, 16, 16]
    # two 16x16 tiles per step on the tiled size, one call per step otherwise
    assert [r["unet_calls"] for r in posterior] == [1, 1, 2, 2]
    for row in posterior:
        if row["precision"] == "bf16":
            assert row["psnr_vs_fp32"] > 30 and 0 < row["max_abs_vs_fp32"] < 0.5
    assert result["fairness"] is None


def test_spent_budget_skips_every_configuration_and_still_writes_json(gpu_bench, tmp_path):
    result = gpu_bench.main(tiny_args(tmp_path / "gpu.json", "--budget-s", "0"))
    assert result["rows"] and all(r["status"] == "skipped: budget spent" for r in result["rows"])
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"] == result["rows"]


def test_tiled_configuration_counts_its_tiles_and_sampler_calls(gpu_bench):
    cfg = gpu_bench.Config("derain", 48, 16, 32, "fp32", False, "posterior", 5)
    assert gpu_bench.tile_windows(cfg) == (2, 32, 16)
    assert gpu_bench.sampler_calls(cfg, None) == 5
    whole = gpu_bench.Config("derain", 48, 16, None, "fp32", False, "posterior", 5)
    assert gpu_bench.tile_windows(whole) == (1, 48, 16)


def test_missing_reference_checkout_is_reported_in_the_notes(gpu_bench, tmp_path):
    result = gpu_bench.main(tiny_args(tmp_path / "gpu.json", "--budget-s", "0", "--reference",
                                      str(tmp_path / "nowhere")))
    assert any(n.startswith("reference not loaded:") and "nowhere" in n for n in result["notes"])
