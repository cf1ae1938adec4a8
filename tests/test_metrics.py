"""Tests of derain_cli.metrics: golden numbers from the reference functions, conventions, errors."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derain_cli.metrics import finite_or_none, psnr, rgb_to_y, score_pair, ssim

GOLDEN = json.loads((Path(__file__).parent / "golden" / "metrics_golden.json").read_text())
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOLERANCE = 1e-6


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round and clip a float image on 0–255 to uint8."""
    return np.clip(img.round(), 0, 255).astype(np.uint8)


def make_pair(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Regenerate a golden (output, ground truth) uint8 RGB or gray pair from its recorded spec."""
    shape = tuple(spec["shape"])
    rng = np.random.default_rng(spec.get("seed", 0))
    if spec["kind"] == "independent":
        output = rng.integers(0, 256, shape, dtype=np.uint8)
        return output, rng.integers(0, 256, shape, dtype=np.uint8)
    if spec["kind"] == "gradient":
        height, width = shape[:2]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        planes = [xx * 255.0 / (width - 1), yy * 255.0 / (height - 1)]
        gt = np.stack(planes + [(xx + yy) * 127.0 / (height + width)], axis=-1)
        output = gt + np.array(spec["offset"], dtype=np.float64) + 6.0 * np.sin(xx / 3.0)[..., None]
        return to_uint8(output), to_uint8(gt)
    if spec["kind"] == "blocks_noisy":
        cells = rng.integers(0, 256, (shape[0] // 4, shape[1] // 4) + shape[2:]).astype(np.float64)
        gt = np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1)
        output = gt + rng.normal(0.0, spec["sigma"], gt.shape)
        return to_uint8(output), gt.astype(np.uint8)
    if spec["kind"] == "noisy":
        gt = rng.integers(0, 256, shape, dtype=np.uint8)
        output = gt.astype(np.float64) + rng.normal(0.0, spec["sigma"], shape)
        return to_uint8(output), gt
    raise ValueError(f"unknown golden case kind {spec['kind']!r}")


def load_pair(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """Return a golden case's (output, gt) arrays: regenerated, or read with PIL from ../shared."""
    if "files" not in case:
        output, gt = make_pair(case["spec"])
        digests = [hashlib.sha256(img.tobytes()).hexdigest() for img in (output, gt)]
        assert digests == case["sha256"], "regenerated images differ from the golden ones"
        return output, gt
    paths = [SHARED_DATA / name for name in case["files"]]
    if not all(p.is_file() for p in paths):
        pytest.skip("../shared/data is absent")
    return tuple(np.asarray(Image.open(p).convert("RGB")) for p in paths)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_score_pair_matches_reference_test_loop_numbers(case: dict) -> None:
    output, gt = load_pair(case)
    for crop, expected in case["expected"].items():
        scores = score_pair(output, gt, crop_border=int(crop))
        for key, value in expected.items():
            error = abs(scores[key] - value)
            assert error <= TOLERANCE, (case["name"], crop, key, scores[key], value)


def test_identical_images_score_infinite_psnr_and_unit_ssim() -> None:
    img = np.random.default_rng(5).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    scores = score_pair(img, img.copy())
    assert scores["psnr"] == math.inf and scores["psnr_y"] == math.inf
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert scores["ssim_y"] == pytest.approx(1.0, abs=1e-12)


def test_finite_or_none_maps_inf_and_nan_to_none_and_keeps_numbers() -> None:
    assert finite_or_none(math.inf) is None
    assert finite_or_none(float("nan")) is None
    assert finite_or_none(31.5) == 31.5
    assert json.dumps({"psnr": finite_or_none(math.inf)}) == '{"psnr": null}'


def test_psnr_of_uniform_error_is_closed_form() -> None:
    gt = np.full((16, 16, 3), 100, dtype=np.uint8)
    output = gt + np.uint8(5)
    assert psnr(output, gt) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)
    assert psnr(output, gt, max_val=1.0) == pytest.approx(20 * math.log10(1 / 5), abs=1e-12)


def test_crop_border_ignores_errors_in_the_border() -> None:
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 256, (32, 36, 3), dtype=np.uint8)
    output = gt.copy()
    output[:4] = 0
    output[:, -4:] = 255
    assert psnr(output, gt, crop_border=4) == math.inf
    assert psnr(output, gt, crop_border=3) < 40
    assert ssim(output, gt, crop_border=4) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_equals_scoring_the_cropped_images() -> None:
    output, gt = make_pair({"kind": "noisy", "seed": 11, "shape": [30, 34, 3], "sigma": 12.0})
    inner = (slice(3, -3), slice(3, -3))
    assert score_pair(output, gt, crop_border=3) == score_pair(output[inner], gt[inner])


@pytest.mark.parametrize(
    ("rgb", "luma"),
    [((0, 0, 0), 16.0), ((255, 255, 255), 235.0), ((255, 0, 0), 81.481),
     ((0, 255, 0), 144.553), ((0, 0, 255), 40.966), ((128, 128, 128), 16.0 + 219.0 * 128 / 255)],
)
def test_rgb_to_y_is_matlab_bt601_luma_of_known_colours(rgb: tuple[int, ...], luma: float) -> None:
    img = np.array(rgb, dtype=np.uint8).reshape(1, 1, 3)
    y = rgb_to_y(img)
    assert y.dtype == np.float64 and y.shape == (1, 1)
    assert y[0, 0] == pytest.approx(luma, abs=1e-9)


def test_y_scores_weight_green_most_and_blue_least() -> None:
    gt = np.full((20, 20, 3), 128, dtype=np.uint8)
    errors = {}
    for channel in range(3):
        output = gt.copy()
        output[..., channel] += 20
        errors[channel] = score_pair(output, gt)["psnr_y"]
    assert errors[1] < errors[0] < errors[2]


def test_grayscale_pairs_score_the_single_channel_for_rgb_and_y() -> None:
    output, gt = make_pair({"kind": "noisy", "seed": 3, "shape": [24, 28], "sigma": 9.0})
    scores = score_pair(output, gt)
    assert scores["psnr_y"] == scores["psnr"] and scores["ssim_y"] == scores["ssim"]
    assert score_pair(output[..., None], gt[..., None]) == scores


def test_ssim_is_mean_of_per_channel_ssims() -> None:
    output, gt = make_pair({"kind": "noisy", "seed": 4, "shape": [22, 26, 3], "sigma": 15.0})
    per_channel = [ssim(output[..., c], gt[..., c]) for c in range(3)]
    assert ssim(output, gt) == pytest.approx(np.mean(per_channel), abs=1e-15)
    assert len(set(per_channel)) == 3


def test_shape_mismatch_raises_value_error_naming_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(20, 30, 3\).*\(30, 20, 3\)"):
        score_pair(np.zeros((20, 30, 3), np.uint8), np.zeros((30, 20, 3), np.uint8))


def test_score_pair_rejects_non_8bit_and_four_channel_images() -> None:
    with pytest.raises(ValueError, match="8-bit"):
        score_pair(np.zeros((20, 20, 3), np.float32), np.zeros((20, 20, 3), np.float32))
    with pytest.raises(ValueError, match="grayscale or RGB"):
        score_pair(np.zeros((20, 20, 4), np.uint8), np.zeros((20, 20, 4), np.uint8))


def test_too_large_crop_or_too_small_image_raises() -> None:
    img = np.zeros((20, 20), np.uint8)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(img, img, crop_border=10)
    with pytest.raises(ValueError, match="11x11"):
        ssim(img, img, crop_border=5)
    with pytest.raises(ValueError, match=">= 0"):
        psnr(img, img, crop_border=-1)
