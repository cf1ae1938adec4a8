"""The bundled model's default path, pinned pixel for pixel: restructuring must not change an output."""

import numpy as np
import pytest
import torch

from derain_cli.imageio import read_image, read_rgb8, to_uint8
from derain_cli.resolve import ModelSpec, load

from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "compact_default"
EXAMPLES = REPO / "examples" / "rainy"
# name -> (example, rows, columns): crops exercise odd sizes, a single tile and the passes' thresholds.
CASES = {
    "cat": ("cat", slice(None), slice(None)),
    "coffee": ("coffee", slice(None), slice(None)),
    "rocket": ("rocket", slice(None), slice(None)),
    "cat_crop_97x61": ("cat", slice(10, 71), slice(20, 117)),
    "rocket_crop_64": ("rocket", slice(0, 64), slice(0, 64)),
    "coffee_crop_200x130": ("coffee", slice(100, 230), slice(150, 350)),
}


@pytest.fixture(scope="module")
def compact():
    """The bundled model with its own defaults, on the CPU (outputs pinned with one thread)."""
    assert torch.get_num_threads() == 1, "the golden outputs were made with one thread"
    return load(ModelSpec(model="compact"), device="cpu")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bundled_default_output_is_unchanged_bit_for_bit(compact, name):
    example, rows, cols = CASES[name]
    rgb = read_image(EXAMPLES / f"{example}.png").rgb[:, :, rows, cols].contiguous()
    got = to_uint8(compact.restorer.restore(rgb).cpu())  # the defaults travel with the model
    want = read_rgb8(GOLDEN / f"{name}.png")
    assert got.shape == want.shape
    differing = int((got != want).any(-1).sum())
    assert differing == 0, f"{differing} pixels differ (max {np.abs(got.astype(int) - want).max()})"
