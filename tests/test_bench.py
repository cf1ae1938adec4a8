"""`derain bench`: the report records what its numbers depend on; grid strips are labelled."""

import json

import numpy as np
from PIL import Image

from derain_cli import __version__, bench
from derain_cli.pipeline import SampleOptions

from tests.conftest import write_rgb
from tests.test_cli import FAST, derain


def _pair(tmp_path):
    gt, lq = tmp_path / "gt", tmp_path / "lq"
    write_rgb(gt / "001.png", seed=1)
    write_rgb(lq / "001.png", seed=5)
    return lq, gt


def test_bench_json_records_model_sampling_device_and_version(tmp_path, plain_unet_file, capsys):
    lq, gt = _pair(tmp_path)
    code, _, err = derain("bench", lq, "--gt", gt, "--unet", plain_unet_file, "--no-lpips", "--seed", "4",
                          "--json", tmp_path / "r.json", *FAST, capsys=capsys)
    assert code == 0, err
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert settings == {"model": f"U-Net {plain_unet_file}", "steps": 3, "sampler": "posterior", "seed": 4,
                        "passes": 1, "repeat_above": None, "precision": "float32", "device": "cpu",
                        "tile": "auto (free memory)", "tile_overlap": 32, "ensemble": 1, "derain_version": __version__}


def test_bench_settings_spell_out_a_cascades_passes_and_the_cards_defaults(tmp_path):
    from derain_cli.resolve import ModelSpec, load

    loaded = load(ModelSpec(model="compact"), device="cpu")
    settings = bench.restorer_settings(loaded.restorer, loaded.description, SampleOptions())
    assert (settings["steps"], settings["passes"], settings["repeat_above"], settings["tile"]) == (1, 3, [23.4, 14.5], 128)
    assert bench.restorer_settings(None, None, None)["model"] is None


def test_grid_strips_carry_a_label_above_each_panel_with_psnr_y(tmp_path, plain_unet_file, monkeypatch):
    from derain_cli.checkpoints import load_unet
    from derain_cli.pipeline import DerainPipeline

    lq, gt = _pair(tmp_path)
    seen = []
    draw = bench._grid
    monkeypatch.setattr(bench, "_grid", lambda strip, labels, path: seen.append(labels) or draw(strip, labels, path))
    pipeline = DerainPipeline(load_unet(plain_unet_file))
    report = bench.run_bench(lq, gt, pipeline, SampleOptions(steps=2), grid_dir=tmp_path / "grid", with_lpips=False)
    row = report.images[0]
    assert seen[0][1] == f"output\nPSNR_Y {row['psnr_y']:.2f} dB"
    assert seen[0][0].startswith("input\nPSNR_Y ") and seen[0][2] == "ground truth"
    strip = np.asarray(Image.open(tmp_path / "grid" / "001.png"))
    band = strip.shape[0] - 40  # the panels are 40 px tall, under the labels
    assert band > 10 and strip.shape[1] == 3 * 56 + 8
    for left in (0, 60, 120):  # some dark text above each panel
        assert (strip[:band, left:left + 56] < 128).any()
    assert np.array_equal(strip[band:, 120:176], np.asarray(Image.open(gt / "001.png").convert("RGB")))
