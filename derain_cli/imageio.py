"""Faithful photo I/O: EXIF orientation, ICC and EXIF kept, alpha passed through, grayscale, 16 bits.

Pixels travel as float32 NCHW tensors in [0, 1]; everything the model must not touch (alpha, ICC
profile, EXIF, bit depth, grayscale) rides along in `LoadedImage` and is re-attached on write.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import struct
import sys
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

import numpy as np
from PIL import Image, TiffImagePlugin, UnidentifiedImageError

from derain_cli.errors import ImageError, UsageError

if TYPE_CHECKING:  # torch is imported where tensors are made: checking a path needs none of it
    import torch

log = logging.getLogger(__name__)

_FORMATS = {".bmp": "BMP", ".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG",
            ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
IMAGE_EXTENSIONS: frozenset[str] = frozenset(_FORMATS)
"""Lower-case suffixes that `read_image` reads and `write_image` writes."""

DEFAULT_MAX_PIXELS = 2 * 89_478_485
"""Pillow's hard decompression-bomb limit (2 * Image.MAX_IMAGE_PIXELS at its default)."""

_ORIENTATION = 0x0112
_IFD_POINTERS = (0x8769, 0x8825)  # Exif and GPS sub-IFDs
# IFD0 tags that describe the photo rather than the pixel layout: the ones kept between TIFF and EXIF.
_DESCRIPTIVE_TAGS = (0x010D, 0x010E, 0x010F, 0x0110, _ORIENTATION, 0x011A, 0x011B, 0x0128,
                     0x0131, 0x0132, 0x013B, 0x013C, 0x8298, *_IFD_POINTERS)
_READ_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error)
_OTHER_BYTE_ORDER = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
_NO_ALPHA_FORMATS = ("JPEG", "BMP")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROWS_PER_BLOCK = 256  # rows filtered at a time when encoding PNG, to bound temporary memory
_ZLIB_LEVEL = 1  # 16-bit photo samples hardly compress: level 6 takes 3x longer for ~1% smaller files
_LIMIT_LOCK = threading.Lock()


@dataclass
class LoadedImage:
    """A decoded photo: upright RGB for the model plus what `write_image` re-attaches."""

    rgb: torch.Tensor  # float32 [1, 3, H, W] in [0, 1], upright; grayscale replicated to 3 channels
    alpha: np.ndarray | None  # [H, W] uint8 or uint16 (the source's depth), upright, untouched
    grayscale: bool
    bit_depth: Literal[8, 16]
    icc_profile: bytes | None
    exif: bytes | None  # "Exif\0\0" + TIFF block, orientation reset to 1
    format: str  # Pillow's name: PNG, JPEG, WEBP, TIFF, BMP
    path: Path

    @property
    def size(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return self.rgb.shape[-2], self.rgb.shape[-1]


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of `IMAGE_EXTENSIONS` (case-insensitive; the file is not opened)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """The image files (by `IMAGE_EXTENSIONS`) in ``folder``, or its whole tree if ``recursive``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    found = folder.glob("**/*") if recursive else folder.iterdir()
    return sorted(path for path in found if is_image_file(path) and path.is_file())


# ----------------------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode a PNG/JPEG/WebP/TIFF/BMP file into an upright float RGB tensor plus its metadata.

    `max_pixels` guards against decompression bombs (None lifts the limit).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"cannot read {path}: no such file")
    with _pillow_pixel_limit(max_pixels), _open(path) as im:
        _check_pixel_count(path, im.size, max_pixels)
        tiles = list(im.tile)  # getexif() may decode a PNG (eXIf after IDAT), consuming its tiles
        try:
            orientation, exif = _orientation_and_exif(im)
            pixels, alpha, grayscale, bits, icc = _decode(path, im, tiles)
        except _READ_ERRORS as err:
            raise ImageError(f"cannot read {path}: {_one_line(err)}") from err
        if isinstance(im, TiffImagePlugin.TiffImageFile):
            orientation = 1  # Pillow (10 and later) applies a TIFF's orientation itself while decoding
    alpha = None if alpha is None else np.ascontiguousarray(_upright(alpha, orientation))
    return LoadedImage(rgb=_to_tensor(_upright(pixels, orientation), bits), alpha=alpha, grayscale=grayscale,
                       bit_depth=bits, icc_profile=icc, exif=exif, format=im.format or "", path=path)


@contextmanager
def _pillow_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Silence Pillow's bomb warning and, when asked for more than its limit, lift that limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is None or (max_pixels is not None and max_pixels <= 2 * pillow_limit):
            yield
            return
        with _LIMIT_LOCK:
            Image.MAX_IMAGE_PIXELS = None
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = pillow_limit


@contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """Open an image with Pillow, turning its failures into one-line `ImageError`s."""
    try:
        im = Image.open(path, formats=sorted(set(_FORMATS.values())))
    except UnidentifiedImageError as err:
        raise ImageError(f"cannot read {path}: not a PNG, JPEG, WebP, TIFF or BMP image "
                         "that Pillow can decode") from err
    except Image.DecompressionBombError as err:
        raise ImageError(f"cannot read {path}: {_one_line(err)}; pass max_pixels to allow it") from err
    except _READ_ERRORS as err:
        raise ImageError(f"cannot read {path}: {_one_line(err)}") from err
    with im:
        yield im


def _check_pixel_count(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse images over `max_pixels` before decoding them (decompression-bomb guard)."""
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageError(f"cannot read {path}: {size[0]}x{size[1]} is more than the limit of {max_pixels} "
                         "pixels (decompression-bomb guard); pass max_pixels to allow it")


def _one_line(err: BaseException) -> str:
    """First line of an exception's message, or its type name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _orientation_and_exif(im: Image.Image) -> tuple[int, bytes | None]:
    """EXIF orientation (1..8) of an unloaded image and its EXIF block with orientation reset to 1."""
    exif = im.getexif()
    orientation = exif.get(_ORIENTATION, 1)
    orientation = orientation if orientation in range(1, 9) else 1
    raw = im.info.get("exif")
    if isinstance(raw, bytes) and raw:
        return orientation, _reset_orientation(raw)
    return orientation, _descriptive_exif(exif)  # TIFF tags, or EXIF that Pillow parsed from text


def _reset_orientation(raw: bytes) -> bytes | None:
    """The EXIF block with its IFD0 orientation patched to 1 in place (None when it is not a TIFF block)."""
    body = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    if body[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if body[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", body, 4)
    if ifd + 2 > len(body):
        return None
    (count,) = struct.unpack_from(order + "H", body, ifd)
    patched = bytearray(body)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(body) - 11), 12):
        tag, kind, n = struct.unpack_from(order + "HHI", body, entry)
        if tag == _ORIENTATION and n == 1 and kind in (3, 4):
            struct.pack_into(order + ("H" if kind == 3 else "I"), patched, entry + 8, 1)
    return b"Exif\x00\x00" + bytes(patched)


def _descriptive_exif(tags: Image.Exif) -> bytes | None:
    """EXIF block of the descriptive IFD0 tags (camera, dates, Exif and GPS IFDs), orientation 1."""
    exif = Image.Exif()
    for tag in _DESCRIPTIVE_TAGS:
        if tag in tags:
            exif[tag] = tags.get_ifd(tag) if tag in _IFD_POINTERS else tags[tag]
    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    return exif.tobytes() if len(exif) else None


def _decode(path: Path, im: Image.Image, tiles: list[tuple]) -> tuple[
        np.ndarray, np.ndarray | None, bool, Literal[8, 16], bytes | None]:
    """Pixels [H, W] or [H, W, 3], alpha, grayscale flag, bit depth and ICC profile of an opened image."""
    icc = im.info.get("icc_profile") or None
    wide = _sixteen_bit_samples(path, im, tiles)
    if wide is not None:
        return *_split_alpha(wide), wide.shape[-1] == 2, 16, icc
    im.load()
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _gray16(im), None, True, 16, icc
    if im.mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc)
    im = _to_standard_mode(im)
    pixels, alpha = _split_alpha(np.asarray(im))
    return pixels, alpha, pixels.ndim == 2, 8, icc


def _split_alpha(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour ([H, W] or [H, W, 3]) and alpha ([H, W] or None) of [H, W], [H, W, 2|3|4] samples."""
    if samples.ndim == 2 or samples.shape[-1] == 3:
        return samples, None
    if samples.shape[-1] == 2:
        return samples[..., 0], samples[..., 1]
    return samples[..., :3], samples[..., 3]


def _sixteen_bit_samples(path: Path, im: Image.Image, tiles: list[tuple]) -> np.ndarray | None:
    """Exact [H, W, C] uint16 samples of a 16-bit RGB(A)/gray+alpha PNG or TIFF, else None.

    Pillow reduces these to 8 bits (it keeps the high byte), so the file is decoded a second time
    with the opposite byte order, which yields the low bytes; Pillow's decoder still does the
    unfiltering, decompression and interlacing.
    """
    rawmodes = {_rawmode(tile) for tile in tiles}
    if rawmodes == {"LA;16B"}:  # PNG gray+alpha: decode the raw bytes, 4 per pixel
        packed = _decode_with_rawmode(path, "RGBA").astype(np.uint16)
        return (packed[..., 0::2] << 8) | packed[..., 1::2]
    if len(rawmodes) != 1:
        return None
    base, sixteen, order = rawmodes.pop().rpartition(";16")
    if base not in ("RGB", "RGBA", "RGBX") or not sixteen or order not in _OTHER_BYTE_ORDER:
        return None
    low = _decode_with_rawmode(path, f"{base};16{_OTHER_BYTE_ORDER[order]}")
    im.load()
    return (np.asarray(im).astype(np.uint16) << 8) | low


def _rawmode(tile: tuple) -> str:
    """The raw mode a Pillow tile decodes from (PNG keeps it as args, TIFF as args[0])."""
    args = tile[3]
    return args if isinstance(args, str) else str(args[0])


def _decode_with_rawmode(path: Path, rawmode: str) -> np.ndarray:
    """Decode a file again with every tile's raw mode replaced."""
    with Image.open(path) as im:
        im.tile = [_with_rawmode(tile, rawmode) for tile in im.tile]
        im.load()
        return np.asarray(im)


def _with_rawmode(tile: tuple, rawmode: str) -> tuple:
    """A copy of a Pillow tile that decodes from another raw mode."""
    args = tile[3]
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _gray16(im: Image.Image) -> np.ndarray:
    """[H, W] uint16 samples of a 16-bit (or 32-bit integer, if in range) grayscale image."""
    values = np.asarray(im)
    if values.dtype.itemsize > 2 and (values.min() < 0 or values.max() > 65535):
        raise ImageError(f"cannot read {im.filename}: 32-bit integer samples outside 0..65535")
    return values.astype(np.uint16)


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """RGB version of a CMYK image: through its ICC profile to sRGB when it has one, else naively."""
    if icc is None:
        return im.convert("RGB"), None
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    try:
        rgb = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb, outputMode="RGB")
    except ImageCms.PyCMSError as err:
        log.warning("%s: unusable CMYK colour profile (%s); converting without it", im.filename, err)
        return im.convert("RGB"), None
    return rgb, srgb.tobytes()


def _to_standard_mode(im: Image.Image) -> Image.Image:
    """The image in L, LA, RGB or RGBA (palettes and colour-key transparency become alpha)."""
    transparent = "transparency" in im.info
    target = {"1": "L", "La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "YCbCr": "RGB",
              "HSV": "RGB", "P": "RGBA" if transparent else "RGB", "L": "LA" if transparent else "L",
              "RGB": "RGBA" if transparent else "RGB", "LA": "LA", "RGBA": "RGBA"}.get(im.mode)
    if target is None:
        raise ImageError(f"cannot read {im.filename}: unsupported pixel mode {im.mode}")
    return im if target == im.mode else im.convert(target)


def _upright(a: np.ndarray, orientation: int) -> np.ndarray:
    """Rows/columns of [H, W, ...] rearranged as EXIF orientation says (ImageOps.exif_transpose)."""
    if orientation in (5, 6, 7, 8):
        a = np.swapaxes(a, 0, 1)  # transpose
    flip_rows = orientation in (3, 4, 7, 8)
    flip_cols = orientation in (2, 3, 6, 7)
    return a[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def _to_tensor(pixels: np.ndarray, bits: int) -> torch.Tensor:
    """Float32 [1, 3, H, W] tensor in [0, 1] from [H, W] (replicated) or [H, W, 3] integer samples."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).div_(2**bits - 1)
    x = x.unsqueeze(0).expand(3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)
    return x.unsqueeze(0).contiguous()


# ----------------------------------------------------------------------------------------- writing


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in 0..1 to an H x W x 3 uint8 array, rounded exactly as 8-bit files are written."""
    return _quantize(rgb, 8, grayscale=False)


def read_rgb8(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as an H x W x 3 uint8 RGB array: upright, grayscale expanded, alpha dropped."""
    return to_uint8(read_image(path).rgb)


def write_image(path: str | os.PathLike[str], rgb: torch.Tensor, like: LoadedImage,
                quality: int | None = None) -> None:
    """Encode an RGB tensor [1, 3, H, W] in [0, 1] with `like`'s alpha, mode, depth, ICC and EXIF, atomically.

    The format comes from the extension. Samples are `round(clamp(x, 0, 1) * (2**bits - 1))` with
    round-half-to-even (torch.round); grayscale output is the mean of the three channels. 16-bit
    sources stay 16-bit in PNG/TIFF; `quality` (default 95) applies to JPEG and WebP only. JPEG and
    BMP drop alpha (with a logged warning), WebP stores grayscale as RGB, BMP keeps no ICC/EXIF.
    """
    path = Path(path)
    fmt = _format_for(path)
    if _same_file(path, like.path):
        raise ImageError(f"cannot write {path}: it is the input image; choose another output path")
    quality = 95 if quality is None else quality
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    color = _quantize(rgb, 16 if like.bit_depth == 16 and fmt in ("PNG", "TIFF") else 8, like.grayscale)
    gray_stored = color.ndim == 2 and fmt != "WEBP"
    out = _Output(color=color, alpha=_alpha_for(like, path, fmt, color),
                  icc=like.icc_profile if _icc_fits(like.icc_profile, gray_stored) else None,
                  exif=like.exif, quality=quality)
    encode = _ENCODERS[fmt]
    atomic_write(path, lambda f: encode(f, out))


@dataclass
class _Output:
    """What an encoder writes: quantized colour, alpha at the same depth, metadata and quality."""

    color: np.ndarray  # [H, W] or [H, W, 3], uint8 or uint16
    alpha: np.ndarray | None  # [H, W], same dtype as color
    icc: bytes | None
    exif: bytes | None
    quality: int

    def samples(self, rgb: bool = False) -> np.ndarray:
        """[H, W, C] samples: gray or RGB (gray replicated when `rgb`), then alpha if any."""
        planes = self.color[..., None] if self.color.ndim == 2 else self.color
        if rgb and planes.shape[-1] == 1:
            planes = np.repeat(planes, 3, axis=-1)
        return planes if self.alpha is None else np.concatenate([planes, self.alpha[..., None]], axis=-1)

    def pillow_metadata(self) -> dict[str, bytes]:
        """Pillow save keywords for the ICC profile and EXIF that are present."""
        return {k: v for k, v in (("icc_profile", self.icc), ("exif", self.exif)) if v}


def _format_for(path: Path) -> str:
    """Pillow format name for an output path's extension."""
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise ImageError(f"cannot write {path}: unknown image extension {path.suffix!r}; "
                         f"choose from {', '.join(sorted(IMAGE_EXTENSIONS))}") from None


def check_image_extension(path: Path, option: str = "-o") -> None:
    """Raise UsageError unless ``path`` ends in an extension `write_image` knows (the format comes from it)."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return
    problem = f"unknown image extension {path.suffix!r}" if path.suffix else "no image extension"
    raise UsageError(f"{option} {path}: {problem}; end it in one of {', '.join(sorted(IMAGE_EXTENSIONS))}")


def check_output_path(path: Path, source: Path | None = None, option: str = "-o") -> None:
    """Raise unless an image can be written at ``path`` (not ``source``); creates nothing.

    An unknown or missing extension is a UsageError (the command line is wrong whatever the disk
    holds); an existing folder, the input itself, a parent that is a file or that cannot be written
    are ImageErrors.
    """
    if path.is_dir():
        hint = f" (e.g. {path / source.name})" if source is not None else ""
        raise ImageError(f"cannot write {path}: it is a folder; give the output file's name{hint}")
    check_image_extension(path, option)
    if source is not None and _same_file(path, source):
        raise ImageError(f"cannot write {path}: it is the input image; choose another output path")
    check_writable_folder(path.parent, path)


def check_writable_folder(folder: Path, target: Path | None = None) -> None:
    """Raise ImageError unless ``folder`` is, or can be created as, a folder this process may write in.

    Creates nothing: the nearest existing ancestor must be a folder with write and search permission.
    ``target`` is the file named in the message (default: the folder).
    """
    existing = folder
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    what = target if target is not None else folder
    if not existing.is_dir():
        raise ImageError(f"cannot write {what}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ImageError(f"cannot write {what}: the folder {existing} is not writable")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (also through links)."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _quantize(rgb: torch.Tensor, bits: int, grayscale: bool) -> np.ndarray:
    """[H, W] (grayscale: channel mean) or [H, W, 3] uint8/uint16 samples of a [1, 3, H, W] tensor."""
    import torch

    if rgb.ndim != 4 or rgb.shape[:2] != (1, 3):
        raise ValueError(f"expected an RGB tensor of shape [1, 3, H, W], got {tuple(rgb.shape)}")
    x = rgb.detach()[0].to("cpu", torch.float32)
    if torch.isnan(x).any():
        raise ValueError("the RGB tensor contains NaN")
    x = x.mean(0) if grayscale else x.permute(1, 2, 0)
    q = x.clamp(0, 1).mul_(2**bits - 1).round_().to(torch.int32).numpy()
    return q.astype(np.uint16 if bits == 16 else np.uint8)


def _alpha_for(like: LoadedImage, path: Path, fmt: str, color: np.ndarray) -> np.ndarray | None:
    """The source alpha at the output's bit depth, or None when there is none or the format has none."""
    if like.alpha is None:
        return None
    if like.alpha.shape != color.shape[:2]:
        raise ValueError(f"the image is {color.shape[:2]} but the alpha of {like.path} is {like.alpha.shape}")
    if fmt in _NO_ALPHA_FORMATS:
        log.warning("%s: %s cannot store transparency; the alpha channel was dropped", path, fmt)
        return None
    if color.dtype == like.alpha.dtype:
        return like.alpha
    if color.dtype == np.uint16:
        return like.alpha.astype(np.uint16) * 257
    return np.round(like.alpha / 257.0).astype(np.uint8)


def _icc_fits(icc: bytes | None, grayscale: bool) -> bool:
    """Whether an ICC profile's colour space (header bytes 16..20) matches the stored channels."""
    return icc is not None and icc[16:20] == (b"GRAY" if grayscale else b"RGB ")


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write` into a temporary sibling, fsync it, then rename it onto `path`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise ImageError(f"cannot write {path}: {err.strerror or _one_line(err)}") from err
        raise
    _fsync_directory(path.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file (a report) atomically, creating its folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ImageError(f"cannot write {path}: {err.strerror or _one_line(err)}") from err
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable by syncing its directory (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pillow_image(samples: np.ndarray) -> Image.Image:
    """8-bit Pillow image of [H, W, 1..4] samples (L, LA, RGB, RGBA)."""
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[samples.shape[-1]]
    return Image.frombytes(mode, samples.shape[1::-1], np.ascontiguousarray(samples).tobytes())


def _encode_jpeg(f: BinaryIO, out: _Output) -> None:
    """JPEG (L or RGB) with 4:4:4 chroma at quality >= 90, ICC and EXIF."""
    _pillow_image(out.samples()).save(f, "JPEG", quality=out.quality, subsampling=0 if out.quality >= 90 else 2,
                                      **out.pillow_metadata())


def _encode_webp(f: BinaryIO, out: _Output) -> None:
    """Lossy WebP (RGB or RGBA; grayscale is stored as RGB) with lossless alpha, ICC and EXIF."""
    _pillow_image(out.samples(rgb=True)).save(f, "WEBP", quality=out.quality, alpha_quality=100,
                                              **out.pillow_metadata())


def _encode_bmp(f: BinaryIO, out: _Output) -> None:
    """BMP (L or RGB); BMP keeps no ICC profile or EXIF."""
    _pillow_image(out.samples()).save(f, "BMP")


def _encode_png(f: BinaryIO, out: _Output) -> None:
    """PNG of L/LA/RGB/RGBA at 8 bits (Pillow) or 16 bits (written here) with iCCP and eXIf chunks."""
    samples = out.samples()
    if samples.dtype == np.uint8:
        _pillow_image(samples).save(f, "PNG", **out.pillow_metadata())
        return
    height, width, channels = samples.shape
    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    f.write(_PNG_SIGNATURE + _png_chunk(b"IHDR", header))
    if out.icc:
        f.write(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(out.icc)))
    if out.exif:
        f.write(_png_chunk(b"eXIf", out.exif.removeprefix(b"Exif\x00\x00")))
    rows = np.ascontiguousarray(samples, dtype=">u2").view(np.uint8).reshape(height, width * channels * 2)
    compressor = zlib.compressobj(_ZLIB_LEVEL)
    previous = np.zeros(rows.shape[1], np.uint8)
    for start in range(0, height, _ROWS_PER_BLOCK):
        block = rows[start:start + _ROWS_PER_BLOCK]
        data = compressor.compress(_paeth_filter(block, previous, bpp=2 * channels).tobytes())
        f.write(_png_chunk(b"IDAT", data) if data else b"")
        previous = block[-1]
    f.write(_png_chunk(b"IDAT", compressor.flush()) + _png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _paeth_filter(rows: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """Rows of bytes PNG-filtered with Paeth (type 4), each prefixed by its filter byte (PNG spec 9.4)."""
    x = rows.astype(np.int16)
    up = np.vstack([previous[None].astype(np.int16), x[:-1]])
    left = np.pad(x, ((0, 0), (bpp, 0)))[:, :-bpp]
    up_left = np.pad(up, ((0, 0), (bpp, 0)))[:, :-bpp]
    pa, pb, pc = np.abs(up - up_left), np.abs(left - up_left), np.abs(left + up - 2 * up_left)
    prediction = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    filtered = ((x - prediction) & 0xFF).astype(np.uint8)
    return np.hstack([np.full((len(rows), 1), 4, np.uint8), filtered])


def _encode_tiff(f: BinaryIO, out: _Output) -> None:
    """Deflate single-strip baseline TIFF (8/16-bit gray/RGB, unassociated alpha) with ICC and EXIF tags."""
    samples = out.samples()
    height, width, channels = samples.shape
    strip = zlib.compress(samples.astype(samples.dtype.newbyteorder("<")).tobytes(), _ZLIB_LEVEL)
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    if out.exif:
        tags = Image.Exif()
        tags.load(out.exif)
        for tag in _DESCRIPTIVE_TAGS:
            if tag in tags:
                ifd[tag] = tags.get_ifd(tag) if tag in _IFD_POINTERS else tags[tag]
    ifd[256], ifd[257] = width, height
    ifd[258] = (samples.dtype.itemsize * 8,) * channels
    ifd[259] = 8  # Adobe deflate
    ifd[262] = 1 if out.color.ndim == 2 else 2  # BlackIsZero or RGB
    ifd[273], ifd[277], ifd[278], ifd[279], ifd[284] = (0,), channels, height, (len(strip),), 1
    if out.alpha is not None:
        ifd[338] = (2,)  # unassociated alpha
    if out.icc:
        ifd[34675] = out.icc
    f.write(b"II*\x00" + struct.pack("<I", 8) + ifd.tobytes(8) + strip)  # tobytes moves strip offsets past the IFD


_ENCODERS: dict[str, Callable[[BinaryIO, _Output], None]] = {
    "BMP": _encode_bmp, "JPEG": _encode_jpeg, "PNG": _encode_png, "TIFF": _encode_tiff, "WEBP": _encode_webp}
