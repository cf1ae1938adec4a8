"""Image I/O: orientation, ICC/EXIF, alpha, grayscale, 16 bits, errors, atomic writes, padding."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from derain_cli import imageio
from derain_cli.errors import ImageError
from derain_cli.imageio import (
    IMAGE_EXTENSIONS,
    LoadedImage,
    is_image_file,
    read_image,
    write_image,
)

MAKE, DATE_ORIGINAL, GPS_LAT_REF = 0x010F, 0x9003, 0x0001
EXIF_IFD, GPS_IFD, ORIENTATION = 0x8769, 0x8825, 0x0112
# The transpose that undoes each orientation, i.e. how a camera would have stored an upright scene.
STORED_AS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
             7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def rng_image(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """Random samples spanning the dtype's range."""
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def srgb_icc() -> bytes:
    """An sRGB ICC profile made by LittleCMS."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_exif(orientation: int, sub_ifds: bool = True) -> Image.Exif:
    """EXIF with an orientation, a camera make and (optionally) an Exif-IFD date and a GPS tag."""
    exif = Image.Exif()
    exif[MAKE] = "RainCam"
    exif[ORIENTATION] = orientation
    if sub_ifds:  # Pillow's libtiff writer cannot store these
        exif[EXIF_IFD] = {DATE_ORIGINAL: "2024:05:06 07:08:09"}
        exif[GPS_IFD] = {GPS_LAT_REF: "N"}
    return exif


def samples(loaded: LoadedImage) -> np.ndarray:
    """[H, W, 3] integer samples of a loaded image at its bit depth."""
    scale = 2**loaded.bit_depth - 1
    return np.round(loaded.rgb[0].permute(1, 2, 0).numpy() * scale).astype(np.int64)


def png16(path: Path, values: np.ndarray, interlace: bool = False) -> None:
    """A 16-bit gray/GA/RGB/RGBA PNG written from scratch (filter 0, optional Adam7), not by imageio."""
    values = values if values.ndim == 3 else values[..., None]
    height, width, channels = values.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    images = [values[y::dy, x::dx] for x, y, dx, dy in passes] if interlace else [values]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for image in images if image.size for row in image)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, int(interlace))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------ orientation, ICC, EXIF


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_deflate"})])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_read(tmp_path: Path, orientation: int, fmt: str, options: dict) -> None:
    upright = rng_image((5, 8, 3))
    stored = Image.fromarray(upright)
    stored = stored if STORED_AS[orientation] is None else stored.transpose(STORED_AS[orientation])
    path = tmp_path / f"in.{fmt.lower()}"
    stored.save(path, fmt, exif=camera_exif(orientation, sub_ifds=not options).tobytes(), **options)

    loaded = read_image(path)

    assert loaded.size == (5, 8)
    np.testing.assert_array_equal(samples(loaded), upright)
    exif = Image.Exif()
    exif.load(loaded.exif)
    assert exif[ORIENTATION] == 1 and exif[MAKE] == "RainCam"


@pytest.mark.parametrize("out_ext", [".jpg", ".png", ".webp", ".tif"])
def test_rotated_jpeg_with_icc_is_written_upright_with_orientation_1_icc_and_exif_kept(
        tmp_path: Path, out_ext: str) -> None:
    stored = Image.fromarray(rng_image((6, 10, 3))).resize((40, 24))  # smooth enough for JPEG
    src, icc = tmp_path / "rotated.jpg", srgb_icc()  # the profile embeds its creation time: make it once
    stored.save(src, quality=95, icc_profile=icc, exif=camera_exif(6).tobytes())

    loaded = read_image(src)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(src)))
    np.testing.assert_array_equal(samples(loaded), expected)
    source_exif = Image.open(src).info["exif"]  # the EXIF block is kept byte for byte but the orientation value
    assert len(loaded.exif) == len(source_exif)
    assert sum(a != b for a, b in zip(loaded.exif, source_exif)) == 1
    write_image(tmp_path / f"out{out_ext}", loaded.rgb, loaded)

    with Image.open(tmp_path / f"out{out_ext}") as out:
        assert out.size == (24, 40)  # upright: the stored 40x24 rotated by 90 degrees
        assert out.info.get("icc_profile") == icc
        exif = out.getexif()
        assert exif.get(ORIENTATION) == 1
        assert exif[MAKE] == "RainCam"
        assert exif.get_ifd(EXIF_IFD)[DATE_ORIGINAL] == "2024:05:06 07:08:09"
        assert exif.get_ifd(GPS_IFD)[GPS_LAT_REF] == "N"
        error = np.abs(np.asarray(out.convert("RGB"), np.int64) - expected).mean()
        assert error < 8 and error < np.abs(np.asarray(out.convert("RGB"), np.int64) - expected[::-1, ::-1]).mean() / 4


# ------------------------------------------------------------------------------ alpha, grayscale, palettes


def test_rgba_png_alpha_is_byte_identical_after_round_trip(tmp_path: Path) -> None:
    rgba = rng_image((9, 7, 4))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    assert loaded.alpha is not None and loaded.bit_depth == 8 and not loaded.grayscale

    write_image(tmp_path / "out.png", 1 - loaded.rgb, loaded)

    out = np.asarray(Image.open(tmp_path / "out.png"))
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(out[..., :3], 255 - rgba[..., :3])


def test_webp_keeps_alpha_exactly_and_16_bit_alpha_is_rounded_to_8_bits(tmp_path: Path) -> None:
    rgba = rng_image((6, 5, 4), np.uint16)
    png16(tmp_path / "in.png", rgba)
    loaded = read_image(tmp_path / "in.png")

    write_image(tmp_path / "out.webp", loaded.rgb, loaded, quality=90)

    out = np.asarray(Image.open(tmp_path / "out.webp"))
    np.testing.assert_array_equal(out[..., 3], np.round(rgba[..., 3] / 257))


@pytest.mark.parametrize("out_ext", [".png", ".tif", ".jpg", ".bmp"])
def test_grayscale_input_gives_grayscale_output(tmp_path: Path, out_ext: str) -> None:
    gray = rng_image((6, 9))
    Image.fromarray(gray, "L").save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    assert loaded.grayscale and torch.equal(loaded.rgb[:, 0], loaded.rgb[:, 2])

    write_image(tmp_path / f"out{out_ext}", loaded.rgb, loaded)

    with Image.open(tmp_path / f"out{out_ext}") as out:
        assert out.mode == "L"
        if out_ext != ".jpg":
            np.testing.assert_array_equal(np.asarray(out), gray)


def test_grayscale_output_is_the_mean_of_the_restored_channels(tmp_path: Path) -> None:
    Image.new("L", (3, 2), 9).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    rgb = torch.tensor([0.2, 0.4, 0.9]).view(1, 3, 1, 1).expand(1, 3, 2, 3)

    write_image(tmp_path / "out.png", rgb, loaded)

    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.full((2, 3), 128))


@pytest.mark.parametrize("out_ext", [".png", ".tif"])
def test_la_png_keeps_gray_and_alpha(tmp_path: Path, out_ext: str) -> None:
    la = rng_image((5, 6, 2))
    Image.fromarray(la, "LA").save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")

    write_image(tmp_path / f"out{out_ext}", loaded.rgb, loaded)

    out = Image.open(tmp_path / f"out{out_ext}")
    assert out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out), la)


def test_palette_png_with_transparency_is_read_as_rgba(tmp_path: Path) -> None:
    palette = Image.fromarray(rng_image((4, 5)) % 4, "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    palette.save(tmp_path / "in.png", transparency=bytes([0, 255, 128, 255]))
    expected = np.asarray(Image.open(tmp_path / "in.png").convert("RGBA"))

    loaded = read_image(tmp_path / "in.png")

    np.testing.assert_array_equal(loaded.alpha, expected[..., 3])
    np.testing.assert_array_equal(samples(loaded), expected[..., :3])
    write_image(tmp_path / "out.png", loaded.rgb, loaded)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected)


# ------------------------------------------------------------------------------ 16 bits


def test_16_bit_grayscale_png_round_trips_exactly(tmp_path: Path) -> None:
    gray = rng_image((7, 5), np.uint16)
    assert (gray % 257 != 0).any()  # values that 8 bits cannot represent
    Image.fromarray(gray).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    assert loaded.bit_depth == 16 and loaded.grayscale

    for ext in (".png", ".tif"):
        write_image(tmp_path / f"out{ext}", loaded.rgb, loaded)
        out = Image.open(tmp_path / f"out{ext}")
        assert out.mode.startswith("I")  # I;16 (Pillow 10 reads 16-bit PNG as I)
        np.testing.assert_array_equal(np.asarray(out), gray)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_colour_png_is_read_exactly(tmp_path: Path, channels: int, interlace: bool) -> None:
    values = rng_image((11, 13, channels), np.uint16, seed=channels)
    png16(tmp_path / "in.png", values, interlace)

    loaded = read_image(tmp_path / "in.png")

    assert loaded.bit_depth == 16 and loaded.grayscale == (channels == 2)
    color = values[..., :1] if channels == 2 else values[..., :3]
    np.testing.assert_array_equal(samples(loaded), np.broadcast_to(color, (11, 13, 3)))
    if channels != 3:
        assert loaded.alpha.dtype == np.uint16
        np.testing.assert_array_equal(loaded.alpha, values[..., -1])


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_round_trips_exactly_and_other_decoders_agree(tmp_path: Path, channels: int, ext: str) -> None:
    values = rng_image((9, 14, channels), np.uint16, seed=7)
    png16(tmp_path / "in.png", values)
    loaded = read_image(tmp_path / "in.png")

    write_image(tmp_path / f"out{ext}", loaded.rgb, loaded)
    again = read_image(tmp_path / f"out{ext}")

    assert again.bit_depth == 16 and torch.equal(again.rgb, loaded.rgb)
    if channels == 4:
        np.testing.assert_array_equal(again.alpha, values[..., 3])
    # Pillow's own (8-bit) decoding of the file sees the high bytes.
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"out{ext}")), values >> 8)


def test_16_bit_source_written_as_jpeg_is_8_bit(tmp_path: Path) -> None:
    png16(tmp_path / "in.png", rng_image((8, 8, 3), np.uint16))
    loaded = read_image(tmp_path / "in.png")
    write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
    assert Image.open(tmp_path / "out.jpg").mode == "RGB"


# ------------------------------------------------------------------------------ other formats


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    cmyk = Image.fromarray(rng_image((4, 6, 4)), "CMYK").resize((24, 16))
    cmyk.save(tmp_path / "in.jpg", quality=95)

    loaded = read_image(tmp_path / "in.jpg")

    np.testing.assert_array_equal(samples(loaded), np.asarray(Image.open(tmp_path / "in.jpg").convert("RGB")))
    assert loaded.icc_profile is None


def test_cmyk_jpeg_with_an_unusable_profile_falls_back_to_plain_conversion(tmp_path: Path, caplog) -> None:
    Image.new("CMYK", (4, 4), (10, 200, 30, 40)).save(tmp_path / "in.jpg", icc_profile=srgb_icc())
    with caplog.at_level(logging.WARNING):
        loaded = read_image(tmp_path / "in.jpg")
    assert "colour profile" in caplog.text and loaded.icc_profile is None
    np.testing.assert_array_equal(samples(loaded), np.asarray(Image.open(tmp_path / "in.jpg").convert("RGB")))


@pytest.mark.parametrize("ext", [".tif", ".bmp", ".png"])
def test_lossless_formats_round_trip_exactly(tmp_path: Path, ext: str) -> None:
    rgb = rng_image((7, 10, 3))
    Image.fromarray(rgb).save(tmp_path / f"in{ext}")
    loaded = read_image(tmp_path / f"in{ext}")

    write_image(tmp_path / f"out{ext}", loaded.rgb, loaded)

    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"out{ext}")), rgb)
    assert loaded.format == Image.open(tmp_path / f"in{ext}").format


def test_webp_round_trip_is_close(tmp_path: Path) -> None:
    rgb = np.asarray(Image.fromarray(rng_image((4, 4, 3))).resize((32, 32)))
    Image.fromarray(rgb).save(tmp_path / "in.webp", lossless=True)
    loaded = read_image(tmp_path / "in.webp")
    np.testing.assert_array_equal(samples(loaded), rgb)

    write_image(tmp_path / "out.webp", loaded.rgb, loaded)

    assert np.abs(np.asarray(Image.open(tmp_path / "out.webp"), np.int64) - rgb).mean() < 3


def test_jpeg_quality_option_changes_file_size(tmp_path: Path) -> None:
    Image.fromarray(rng_image((32, 32, 3))).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    write_image(tmp_path / "low.jpg", loaded.rgb, loaded, quality=20)
    write_image(tmp_path / "high.jpg", loaded.rgb, loaded)
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / "high.jpg").stat().st_size


def test_jpeg_output_drops_alpha_with_a_warning(tmp_path: Path, caplog) -> None:
    Image.fromarray(rng_image((4, 4, 4)), "RGBA").save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    with caplog.at_level(logging.WARNING):
        write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
    assert "alpha" in caplog.text and Image.open(tmp_path / "out.jpg").mode == "RGB"


# ------------------------------------------------------------------------------ read errors


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_gives_a_one_line_error_naming_it(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(rng_image((64, 64, 3))).save(path, fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(ImageError) as err:
        read_image(path)

    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_text_file_named_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    with pytest.raises(ImageError, match="not a PNG, JPEG"):
        read_image(path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "absent.png")


def test_pixel_limit_refuses_large_images_and_can_be_lifted(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    with pytest.raises(ImageError, match="decompression-bomb"):
        read_image(tmp_path / "in.png", max_pixels=63)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow itself now refuses 64 pixels
    with pytest.raises(ImageError, match="max_pixels"):
        read_image(tmp_path / "in.png", max_pixels=20)
    assert read_image(tmp_path / "in.png", max_pixels=None).size == (8, 8)
    assert Image.MAX_IMAGE_PIXELS == 10


# ------------------------------------------------------------------------------ writing rules


def test_failed_write_leaves_existing_output_untouched_and_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    (tmp_path / "out.png").write_bytes(b"previous result")

    def half_then_fail(f, *args) -> None:
        f.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(imageio._ENCODERS, "PNG", half_then_fail)
    with pytest.raises(ImageError, match="No space left"):
        write_image(tmp_path / "out.png", loaded.rgb, loaded)

    assert (tmp_path / "out.png").read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]


def test_interrupted_write_removes_its_temporary_file(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")

    def interrupt(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(imageio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", loaded.rgb, loaded)
    assert [p.name for p in tmp_path.iterdir()] == ["in.png"]


def test_writing_onto_the_input_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "in.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()

    for target in (tmp_path / "in.png", tmp_path / "sub" / ".." / "in.png", tmp_path / "link.png"):
        with pytest.raises(ImageError, match="input image"):
            write_image(target, loaded.rgb, loaded)
    assert (tmp_path / "in.png").read_bytes() == before


def test_unknown_output_extension_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    with pytest.raises(ImageError, match=r"'\.gif'; choose from .*\.jpg.*\.webp"):
        write_image(tmp_path / "out.gif", loaded.rgb, loaded)


def test_written_value_is_rounded_clamped_float_times_max(tmp_path: Path) -> None:
    Image.new("RGB", (4, 1)).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    rgb = torch.tensor([-0.5, 0.3, 100 / 255 + 0.4 / 255, 1.7]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    write_image(tmp_path / "out.png", rgb, loaded)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png"))[0, :, 0], [0, 76, 100, 255])


def test_image_extensions_and_is_image_file() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"} == IMAGE_EXTENSIONS
    assert is_image_file("a/B.JPG") and is_image_file("x.tiff")
    assert not is_image_file("notes.txt") and not is_image_file(".out.png.1a2b.tmp")
