"""The compact model shipped inside the package: registered, intact, small, and it derains offline."""

import hashlib
import stat
from dataclasses import replace

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

from derain_cli.imageio import read_rgb8
from derain_cli.metrics import score_pair
from derain_cli.resolve import ModelSpec, load
from derain_cli.pipeline import SampleOptions
from derain_cli.resolve import read_card
from derain_cli.weights import FALLBACK_MODEL, get_weights, load_manifest, resolve_model

from tests.conftest import REPO
from tests.test_cli import derain

MAX_BYTES = 20 * 1024 * 1024
# On the centre of examples/rainy/cat.png the bundled model gains 8.3 dB PSNR_Y with its default
# further passes (16.0 -> 24.4 dB; 26.2 with one pass); the input itself gains 0, an untrained U-Net loses.
MIN_GAIN_DB = 4.0
EXAMPLES = REPO / "examples"


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache and offline mode: only the bundled model is available."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_the_bundled_model_is_registered_pinned_and_small():
    manifest = load_manifest()
    model = resolve_model(manifest, FALLBACK_MODEL)
    weights, repeat = get_weights(manifest, model.unet), get_weights(manifest, model.repeat_unet)
    card = model.card
    assert model.daclip is None
    assert card.prediction == "x0" and card.steps is not None
    assert card.cascade.passes == 3 and card.cascade.repeat_above == (23.4, 14.5)  # further passes on heavy rain only
    assert card.tile is not None  # run in tiles of the size it was chosen with
    for entry in (weights, repeat):  # the first pass's U-Net and the further passes' one
        assert entry.bundled and entry.format == "safetensors"
        data = entry.path.read_bytes()
        assert len(data) == entry.size
        assert hashlib.sha256(data).hexdigest() == entry.sha256
        assert entry.path.stat().st_mode & stat.S_IROTH, "installed copies must be readable by every user"
    assert weights.size + repeat.size <= MAX_BYTES
    # The card beside the bundled file is the manifest's card (the further passes' U-Net named as a file beside it).
    sidecar = read_card(weights.path)
    assert sidecar.cascade.unet == repeat.path.name and repeat.path.parent == weights.path.parent
    assert sidecar == replace(card, cascade=replace(card.cascade, unet=repeat.path.name), description="")
    assert card.precision == "fp32"  # as exact as on the CPU, and faster than fp16 autocast on a GPU


def _centre(image: np.ndarray, size: int = 128) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def test_the_bundled_model_removes_rain_from_an_example(empty_hub_cache):
    loaded = load(ModelSpec(model="auto"), device="cpu")
    assert loaded.notes and f"bundled model {FALLBACK_MODEL!r}" in loaded.notes[-1].text
    rainy = _centre(read_rgb8(EXAMPLES / "rainy" / "cat.png"))
    clean = _centre(read_rgb8(EXAMPLES / "clean" / "cat.png"))
    out = loaded.restorer(Image.fromarray(rainy))  # the model's own defaults (steps, tile, passes)
    before = score_pair(rainy, clean)["psnr_y"]
    after = score_pair(np.asarray(out), clean)["psnr_y"]
    assert after > before + MIN_GAIN_DB, (before, after)


@pytest.mark.filterwarnings("ignore:fp16 on the CPU")  # slow there, and warned about: still exact
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_bundled_model_in_half_precision_gives_its_fp32_output(empty_hub_cache, precision):
    # Autocast as on a GPU (fp16 is `--precision auto` there). With the reference's half-precision
    # layer-norm eps the outputs were only ~38 dB from fp32 ones (on a GPU: -1.1 dB on Rain100H).
    rainy = _centre(read_rgb8(EXAMPLES / "rainy" / "cat.png"), size=64)
    image = torch.from_numpy(rainy).permute(2, 0, 1)[None].float() / 255
    outputs = {}
    for name in ("fp32", precision):
        loaded = load(ModelSpec(model="compact"), device="cpu", precision=name, passes=1)
        outputs[name] = loaded.restorer.restore(image, SampleOptions(tile=None))
    mse = float(((outputs[precision] - outputs["fp32"]) ** 2).mean())
    assert 10 * np.log10(1 / mse) > 45, 10 * np.log10(1 / mse)


def test_derain_run_works_offline_with_no_download(tmp_path, empty_hub_cache, capsys):
    src = tmp_path / "rainy.png"
    Image.fromarray(_centre(read_rgb8(EXAMPLES / "rainy" / "coffee.png"), 96)).save(src)
    code, _, err = derain("run", src, "-o", tmp_path / "clean.png", "--device", "cpu", capsys=capsys)
    assert code == 0, err
    assert f"model '{FALLBACK_MODEL}'" in err
    assert Image.open(tmp_path / "clean.png").size == (96, 96)


def _recipe_commands() -> str:
    """The recipe's shell code with comments removed."""
    lines = (REPO / "recipes" / "compact.sh").read_text().splitlines()
    return "\n".join(line.split("#", 1)[0] for line in lines)


def test_the_recipe_never_uses_the_benchmark_or_its_photographs():
    # Rain100H is the held-out benchmark, and Rain100L's clean images are Rain100H's (next test):
    # neither may feed training, synthetic rain or validation.
    code = _recipe_commands().lower()
    assert "raincityscapes" in code
    assert "rain100" not in code
    photos = (REPO / "recipes" / "photos.py").read_text().lower()
    assert "rain100" not in photos.split('"""', 2)[2]
    for example in ("chelsea", "coffee", "rocket"):  # the sources of examples/
        assert f'"{example}"' not in photos


def test_rain100l_clean_images_are_rain100h_clean_images(shared_data):
    # Why the recipe avoids Rain100L: every Rain100H ground truth is the Rain100L ground truth of
    # the same number plus a 1-pixel border (the same 100 BSD photographs).
    for i in range(1, 101):
        name = f"{i:03d}.png"
        heavy = read_rgb8(shared_data / "rain100h" / "GT" / name)
        light = read_rgb8(shared_data / "rain100l" / "GT" / name)
        crops = [heavy[dy:dy + light.shape[0], dx:dx + light.shape[1]] for dy in (0, 1) for dx in (0, 1)]
        assert any(np.array_equal(c, light) for c in crops), name


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "10"], "--steps 10: this model supports 1..1 steps"),
    (["--sampler", "ode"], "--sampler ode: this model supports posterior"),
])
def test_the_bundled_model_refuses_sampling_it_does_not_support_before_reading_anything(
        tmp_path, empty_hub_cache, capsys, monkeypatch, args, message):
    # At 10 steps it wrote a black image, at 100 a NaN traceback (the card now declares 1 step, posterior).
    import derain_cli.resolve

    monkeypatch.setattr(derain_cli.resolve, "load_unet", lambda *a, **k: pytest.fail("weights were read"))
    code, _, err = derain("run", EXAMPLES / "rainy" / "cat.png", "-o", tmp_path / "x.png", *args, capsys=capsys)
    assert code == 2 and err.strip() == f"error: {message}"
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_bundled_model_does_not_turn_tiny_images_black(empty_hub_cache, size):
    # They were edge-padded to the U-Net's multiple (16) with their own noise repeated, and the
    # model turned a 4x4 crop of the cat black (mean 0.007 for an input of 0.46).
    rainy = read_rgb8(EXAMPLES / "rainy" / "cat.png")[100:100 + size, 100:100 + size]
    image = torch.from_numpy(np.ascontiguousarray(rainy)).permute(2, 0, 1)[None].float() / 255
    out = load(ModelSpec(model="compact"), device="cpu").restorer.restore(image)
    assert out.shape == image.shape
    assert abs(float(out.mean() - image.mean())) < 0.15, (float(out.mean()), float(image.mean()))
