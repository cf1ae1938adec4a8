"""A converted or exported checkpoint runs as its source does: the card travels with the weights."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from derain_cli.checkpoints import save_safetensors
from derain_cli.unet import ConditionalUNet

from tests.conftest import TINY_PLAIN_UNET, write_rgb
from tests.test_cli import derain

RUN = ["--device", "cpu", "--quiet"]  # no --steps, --tile or --passes: the card's own settings
# A clean-image model run as the bundled one is: 1 step in 64-px tiles, a second pass by its own U-Net.
CARD = {"sde": {"max_sigma": 10.0, "T": 100, "schedule": "cosine", "eps": 0.005}, "prediction": "x0",
        "sampler": "posterior", "steps": 1, "tile": 64, "passes": 2, "repeat_above": 0.0, "precision": "fp32",
        "repeat_unet": "model_repeat.safetensors"}


@pytest.fixture
def carded_model(tmp_path):
    """A tiny x0 U-Net with its card as model.json and a further passes' U-Net beside it."""
    folder = tmp_path / "source"
    torch.manual_seed(3)
    first, second = ConditionalUNet(**TINY_PLAIN_UNET), ConditionalUNet(**TINY_PLAIN_UNET)
    save_safetensors(second.state_dict(), folder / "model_repeat.safetensors")
    path = folder / "model.safetensors"
    save_safetensors(first.state_dict(), path)  # weights only: the card is the JSON beside
    path.with_suffix(".json").write_text(json.dumps({**CARD, "unet": first.config}))
    return path


def _run(model, image, output, capsys):
    code, _, err = derain("run", image, "-o", output, "--unet", model, *RUN, capsys=capsys)
    assert code == 0, err
    return output.read_bytes()


def test_a_converted_checkpoint_gives_the_same_output_file_as_its_source(tmp_path, carded_model, capsys):
    image = write_rgb(tmp_path / "rainy.png", 90, 120)
    original = _run(carded_model, image, tmp_path / "original.png", capsys)
    dst = tmp_path / "converted" / "x.safetensors"
    code, out, err = derain("weights", "convert", carded_model, dst, capsys=capsys)
    assert code == 0, err
    assert "x_repeat.safetensors" in out
    assert _run(dst, image, tmp_path / "converted.png", capsys) == original
    card = json.loads(dst.with_suffix(".json").read_text())
    assert {key: card[key] for key in CARD} == {**CARD, "repeat_unet": "x_repeat.safetensors"}
    assert card["unet"]["nf"] == TINY_PLAIN_UNET["nf"]


def test_a_converted_checkpoint_without_its_json_still_runs_from_its_embedded_card(tmp_path, carded_model, capsys):
    image = write_rgb(tmp_path / "rainy.png", 90, 120)
    original = _run(carded_model, image, tmp_path / "original.png", capsys)
    dst = tmp_path / "converted" / "x.safetensors"
    assert derain("weights", "convert", carded_model, dst, capsys=capsys)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("x.safetensors", "x_repeat.safetensors"):  # the weights, not the JSON
        shutil.copy(dst.parent / name, elsewhere / name)
    assert _run(elsewhere / "x.safetensors", image, tmp_path / "alone.png", capsys) == original


def test_training_exports_carry_their_card_inside_the_weights_file(tmp_path, carded_model, capsys):
    # A run folder's unet.safetensors is written by save_safetensors with its unet.json as config.
    sidecar = {key: value for key, value in json.loads(carded_model.with_suffix(".json").read_text()).items()
               if key not in ("passes", "repeat_above", "repeat_unet")}
    run_weights = tmp_path / "run" / "best" / "unet.safetensors"
    save_safetensors(load_file(carded_model), run_weights, {**sidecar, "training": {"step": 7}})
    image = write_rgb(tmp_path / "rainy.png", 90, 120)
    with_json = _run(run_weights, image, tmp_path / "with_json.png", capsys)
    run_weights.with_suffix(".json").unlink()
    assert _run(run_weights, image, tmp_path / "without_json.png", capsys) == with_json


def test_a_training_resume_state_given_as_unet_is_refused_naming_the_exported_weights(tmp_path, capsys):
    unet = ConditionalUNet(**TINY_PLAIN_UNET)
    state = tmp_path / "run" / "last" / "state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"format": 1, "step": 3, "model": unet.state_dict(), "ema": unet.state_dict()}, state)
    image = write_rgb(tmp_path / "rainy.png")
    code, _, err = derain("run", image, "-o", tmp_path / "clean.png", "--unet", state, *RUN, capsys=capsys)
    assert code == 1
    assert "resume state, not weights to run" in err and str(state.with_name("unet.safetensors")) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "clean.png").exists()
