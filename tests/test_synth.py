"""Synthetic rain: reproducibility, screen blending, presets, streak geometry and folder output."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derain_cli.errors import DerainError, ImageError
from derain_cli.synth import PRESETS, RainConfig, image_rng, render_rain, streak_kernel, synth_folder

# One plain streak layer in pixel units, nothing else: the geometry is what the test sets.
SINGLE = RainConfig(layers=(1, 1), angle=(0.0, 0.0), angle_spread=0.0, length=(30.0, 30.0),
                    width=(2.0, 2.0), density=(0.002, 0.002), intensity=(0.8, 0.8),
                    reference_side=None)


def clean_image(h: int = 64, w: int = 96) -> np.ndarray:
    """A smooth colour gradient with mid-range values, float32 HxWx3 in [0, 1]."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([0.2 + 0.5 * x / w, 0.3 + 0.4 * y / h, 0.5 - 0.3 * x / w + 0.0 * y], axis=2)
    return img.astype(np.float32)


def streak_orientation(layer: np.ndarray) -> float:
    """Angle from vertical (degrees, positive = falling to the right) along which the layer is flattest.

    Structure tensor from the power spectrum (exact derivatives, no finite-difference bias) of the
    Hann-windowed layer (no wrap-around edges).
    """
    h, w = layer.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((layer - layer.mean()) * window)) ** 2
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    tensor = np.array([[np.sum(power * kx * kx), np.sum(power * kx * ky)],
                       [np.sum(power * kx * ky), np.sum(power * ky * ky)]])
    _, vectors = np.linalg.eigh(tensor)
    vx, vy = vectors[:, 0]  # smallest eigenvalue: the direction along the streaks
    if vy < 0:
        vx, vy = -vx, -vy
    return math.degrees(math.atan2(vx, vy))


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    img = clean_image()
    a, ra = render_rain(img, PRESETS["heavy"], np.random.default_rng(7))
    b, rb = render_rain(img, PRESETS["heavy"], np.random.default_rng(7))
    c, _ = render_rain(img, PRESETS["heavy"], np.random.default_rng(8))
    assert a.tobytes() == b.tobytes() and ra.tobytes() == rb.tobytes()
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_render_returns_float32_images_of_input_shape_in_unit_range(preset):
    img = clean_image(50, 70)
    rainy, rain = render_rain(img, PRESETS[preset], np.random.default_rng(0))
    for out in (rainy, rain):
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_rain_is_screen_blended_so_it_only_brightens():
    img = clean_image()
    config = dataclasses.replace(PRESETS["heavy"], haze=(0.0, 0.0), splash_prob=1.0)
    rainy, rain = render_rain(img, config, np.random.default_rng(3))
    np.testing.assert_allclose(rainy, 1 - (1 - img) * (1 - rain), atol=1e-6)
    assert np.all(rainy >= img - 1e-6)
    assert (rainy > img + 1e-3).mean() > 0.2


def test_additive_blend_adds_the_rain_layer_and_clips_to_white():
    img = clean_image()
    config = dataclasses.replace(PRESETS["torrent"], haze=(0.0, 0.0))
    rainy, rain = render_rain(img, config, np.random.default_rng(3))
    np.testing.assert_allclose(rainy, np.minimum(img + rain, 1.0), atol=1e-6)
    screened, _ = render_rain(img, dataclasses.replace(config, blend="screen"), np.random.default_rng(3))
    assert (rainy == 1.0).mean() > (screened >= 1.0 - 1e-6).mean() + 0.01  # adding saturates more
    assert np.all(rainy >= screened - 1e-6)


def test_haze_lifts_dark_pixels_towards_the_atmospheric_light():
    dark = np.full((40, 60, 3), 0.05, np.float32)
    config = dataclasses.replace(SINGLE, density=(0.0, 0.0), haze=(0.3, 0.3), haze_light=(0.9, 0.9))
    rainy, rain = render_rain(dark, config, np.random.default_rng(0))
    assert rain.max() == 0.0
    assert 0.05 < rainy.min() and rainy.max() < 0.9
    assert abs(rainy.mean() - (0.05 * 0.7 + 0.9 * 0.3)) < 0.05


def test_heavy_preset_has_more_rain_and_lower_psnr_than_light():
    img = clean_image(96, 128)
    means = {}
    for name in ("light", "medium", "heavy", "storm"):
        layers = [render_rain(img, PRESETS[name], np.random.default_rng(s))[1].mean() for s in range(3)]
        means[name] = float(np.mean(layers))
    assert means["light"] < means["medium"] < means["heavy"] < means["storm"]
    heavy, _ = render_rain(img, PRESETS["heavy"], np.random.default_rng(0))
    light, _ = render_rain(img, PRESETS["light"], np.random.default_rng(0))
    assert np.mean((heavy - img) ** 2) > 4 * np.mean((light - img) ** 2)


@pytest.mark.parametrize("angle", [-30.0, 0.0, 20.0, 60.0])
def test_streaks_follow_the_configured_angle(angle):
    config = dataclasses.replace(SINGLE, angle=(angle, angle))
    _, rain = render_rain(clean_image(96, 96), config, np.random.default_rng(1))
    assert abs(streak_orientation(rain[..., 0]) - angle) < 2.5


def test_positive_angle_falls_towards_the_right():
    kernel = streak_kernel(length=20.0, width=2.0, angle=30.0)
    c = kernel.shape[0] // 2
    assert kernel[c + 8, c + 5] > 0.5 > kernel[c + 8, c - 5]


def test_streak_kernel_has_the_requested_length_and_unit_peak():
    kernel = streak_kernel(length=21.0, width=3.0, angle=0.0)
    centre_column = kernel[:, kernel.shape[1] // 2]
    assert 0.95 < kernel.max() <= 1.0
    assert abs((centre_column > 0.5).sum() - 21) <= 1


def test_a_crop_gets_the_streak_sizes_of_its_whole_photograph():
    crop = clean_image(64, 96)
    light = PRESETS["light"]  # no haze: only the streak sizes depend on the scale
    as_crop_of_640 = render_rain(crop, light, np.random.default_rng(4), full_side=640)[1]
    # the same scale, spelled as a reference side: 320 px at 640 is 32 px at 64
    scaled = render_rain(crop, dataclasses.replace(light, reference_side=32.0), np.random.default_rng(4))[1]
    np.testing.assert_array_equal(as_crop_of_640, scaled)
    as_own_image = render_rain(crop, light, np.random.default_rng(4))[1]
    assert not np.array_equal(as_own_image, as_crop_of_640)
    with pytest.raises(ValueError, match="full_side"):
        render_rain(crop, light, np.random.default_rng(4), full_side=32)


@pytest.mark.parametrize("field,value", [("length", (10.0, 5.0)), ("density", (0.0, 2.0)),
                                         ("layers", (0, 2)), ("haze", (-0.1, 0.1)), ("blend", "multiply")])
def test_config_rejects_reversed_or_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=field):
        RainConfig(**{field: value})


def write_clean(folder: Path, names: list[str], size: tuple[int, int] = (40, 30)) -> None:
    """Write small clean images under folder, their pixels a function of the name only."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        rng = np.random.default_rng(list(name.encode()))
        Image.fromarray(rng.integers(0, 200, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)


def test_synth_folder_writes_lq_gt_pairs_with_gt_pixels_unchanged(tmp_path):
    write_clean(tmp_path / "clean", ["a.png", "b.jpg"])
    (tmp_path / "clean" / "notes.txt").write_text("not an image")
    pairs = synth_folder(tmp_path / "clean", tmp_path / "out", preset="medium", seed=1)
    assert [(lq.name, gt.name) for lq, gt in pairs] == [("a.png", "a.png"), ("b.png", "b.png")]
    for lq, gt in pairs:
        assert lq.parent == tmp_path / "out" / "LQ" and gt.parent == tmp_path / "out" / "GT"
    src = np.asarray(Image.open(tmp_path / "clean" / "a.png"))
    assert np.array_equal(np.asarray(Image.open(pairs[0][1])), src)
    assert not np.array_equal(np.asarray(Image.open(pairs[0][0])), src)
    assert not list((tmp_path / "out" / "LQ").glob("*.tmp"))


def test_synth_folder_copies_get_suffixes_and_distinct_rain(tmp_path):
    write_clean(tmp_path / "clean", ["x.png"])
    pairs = synth_folder(tmp_path / "clean", tmp_path / "out", copies=2)
    assert [lq.name for lq, _ in pairs] == ["x_s0.png", "x_s1.png"]
    assert pairs[0][0].read_bytes() != pairs[1][0].read_bytes()


def test_synth_folder_output_depends_on_name_and_seed_not_on_other_files(tmp_path):
    write_clean(tmp_path / "all", ["a.png", "b.png", "c.png"])
    write_clean(tmp_path / "one", ["b.png"])
    synth_folder(tmp_path / "all", tmp_path / "out_all", seed=5)
    synth_folder(tmp_path / "one", tmp_path / "out_one", seed=5)
    synth_folder(tmp_path / "one", tmp_path / "out_other", seed=6)
    b_all = (tmp_path / "out_all" / "LQ" / "b.png").read_bytes()
    assert (tmp_path / "out_one" / "LQ" / "b.png").read_bytes() == b_all
    assert (tmp_path / "out_other" / "LQ" / "b.png").read_bytes() != b_all


def test_image_rng_is_a_function_of_seed_name_and_copy():
    draw = lambda *key: image_rng(*key).random()  # noqa: E731
    assert draw(0, "a.png", 0) == draw(0, "a.png", 0)
    assert len({draw(0, "a.png", 0), draw(1, "a.png", 0), draw(0, "b.png", 0), draw(0, "a.png", 1)}) == 4


def test_synth_folder_reports_bad_inputs(tmp_path):
    write_clean(tmp_path / "clean", ["a.png"])
    with pytest.raises(ValueError, match="heavy"):
        synth_folder(tmp_path / "clean", tmp_path / "out", preset="monsoon")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images"):
        synth_folder(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "clean" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        synth_folder(tmp_path / "clean", tmp_path / "out")


def test_synth_folder_refuses_two_sources_with_one_output_name(tmp_path):
    write_clean(tmp_path / "clean", ["a.png", "a.jpg"])
    with pytest.raises(DerainError, match="a.jpg"):
        synth_folder(tmp_path / "clean", tmp_path / "out")
