"""Paired training data: LQ/GT folders, random aligned patches, and a per-step batch schedule.

Every random choice of a training sample is a pure function of ``(seed, k)``, where ``k`` is the
sample's global number: sample ``j`` of step ``s`` (1-based) with global batch ``B`` is
``k = (s - 1) * B + j``. Sample ``k`` takes pair ``perm_e[k mod N]`` of epoch ``e = k // N``
(``perm_e`` a permutation seeded by ``(seed, e)``), then its crop offsets and flips from a
generator seeded by ``(seed, k)``. So the data of a step does not depend on how many steps ran
before in this process, on the number of loader workers, or on how the batch is split between
distributed ranks: a resumed or sharded run sees exactly the samples of an uninterrupted one.

Pairs can also be made on the fly (:class:`RainOnClean`): the clean crop of sample ``k`` gets rain
rendered by :func:`derain_cli.synth.render_rain` from a generator seeded by ``(seed, k)``, so every
visit of a photograph sees new rain, and a resumed run still sees the same rain as an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from derain_cli.errors import DerainError
from derain_cli.imageio import list_images, read_rgb8
from derain_cli.pairing import pair_files
from derain_cli.synth import PRESETS, RainConfig, render_rain

LQ_NAMES = ("LQ", "lq", "input", "rain")
GT_NAMES = ("GT", "gt", "target", "norain")

# Streams of random numbers derived from (seed, k): independent for the same sample.
STREAM_PATCH = 0
STREAM_NOISE = 1
STREAM_PERMUTATION = 2
STREAM_RAIN = 3

PathLike = str | os.PathLike[str]
Pair = tuple[np.ndarray, np.ndarray]


def sample_rng(seed: int, k: int, stream: int) -> np.random.Generator:
    """A numpy generator that depends only on (seed, sample number k, stream)."""
    return np.random.default_rng(np.random.SeedSequence([seed, k, stream]))


def torch_generator(seed: int, k: int, stream: int) -> torch.Generator:
    """A CPU torch generator that depends only on (seed, sample number k, stream)."""
    state = np.random.SeedSequence([seed, k, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class PairedFolder:
    """Degraded/clean image pairs of two folders, matched by file name (see derain_cli.pairing)."""

    def __init__(self, lq_dir: PathLike, gt_dir: PathLike) -> None:
        self.lq_dir, self.gt_dir = Path(lq_dir), Path(gt_dir)
        try:
            pairs, self.unpaired_lq, self.unpaired_gt = pair_files(
                list_images(self.lq_dir), list_images(self.gt_dir))
        except ValueError as err:
            raise DerainError(str(err)) from None
        if not pairs:
            raise DerainError(f"no image pairs: nothing in {self.lq_dir} matches a file name in {self.gt_dir}")
        self.pairs: list[tuple[Path, Path]] = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> Pair:
        """The pair ``index`` as uint8 RGB arrays (LQ, GT); raises if their sizes differ."""
        lq_path, gt_path = self.pairs[index]
        lq, gt = read_rgb8(lq_path), read_rgb8(gt_path)
        if lq.shape != gt.shape:
            raise DerainError(f"{lq_path} is {lq.shape[1]}x{lq.shape[0]} but {gt_path} is {gt.shape[1]}x{gt.shape[0]}")
        return lq, gt


class RainOnClean:
    """Clean photographs of a folder, each listed ``copies`` times, to get rain of ``preset`` on the fly.

    Quacks like :class:`PairedFolder`: ``read`` gives (clean, clean) and ``rain`` says what to render.
    """

    def __init__(self, clean_dir: PathLike, preset: str = "heavy", copies: int = 1) -> None:
        self.clean_dir = Path(clean_dir)
        if preset not in PRESETS:
            raise DerainError(f"unknown rain preset {preset!r}; choose from {sorted(PRESETS)}")
        if copies < 1:
            raise DerainError(f"copies must be at least 1, got {copies}")
        files = list_images(self.clean_dir)
        if not files:
            raise DerainError(f"{self.clean_dir}: no images to render rain on")
        self.rain = PRESETS[preset]
        self.pairs: list[tuple[Path, Path]] = [(f, f) for f in files for _ in range(copies)]
        self.unpaired_lq: list[Path] = []
        self.unpaired_gt: list[Path] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> Pair:
        """The clean photograph ``index`` as uint8 RGB, twice (the rain is rendered per sample)."""
        clean = read_rgb8(self.pairs[index][1])
        return clean, clean


def find_pairs(data_dir: PathLike) -> PairedFolder:
    """The pairs of ``DIR/LQ`` and ``DIR/GT`` (also ``lq``/``gt``, ``input``/``target``, ``rain``/``norain``)."""
    data_dir = Path(data_dir)
    for lq_name, gt_name in zip(LQ_NAMES, GT_NAMES):
        if (data_dir / lq_name).is_dir() and (data_dir / gt_name).is_dir():
            return PairedFolder(data_dir / lq_name, data_dir / gt_name)
    raise DerainError(f"{data_dir}: expected sub-folders LQ/ and GT/ (degraded and clean images)")


class PairImages:
    """The pairs of several folders as one indexable list, held in memory as uint8 when cached."""

    def __init__(self, folders: Sequence[PairedFolder | RainOnClean], cache: bool = True) -> None:
        if not folders:
            raise DerainError("no training data given")
        self.index = [(folder, i) for folder in folders for i in range(len(folder))]
        self.cache = self._read_all() if cache else None

    def _read_all(self) -> list[Pair]:
        """Every pair in memory, each file pair read once: a clean photograph listed for several copies
        or rain presets shares one array."""
        read: dict[tuple[Path, Path], Pair] = {}
        out = []
        for folder, i in self.index:
            key = folder.pairs[i]
            if key not in read:
                read[key] = folder.read(i)
            out.append(read[key])
        return out

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Pair:
        """Pair ``i`` as uint8 RGB arrays (LQ, GT)."""
        if self.cache is not None:
            return self.cache[i]
        folder, j = self.index[i]
        return folder.read(j)

    def name(self, i: int) -> str:
        """The LQ file name of pair ``i``."""
        folder, j = self.index[i]
        return folder.pairs[j][0].name

    def rain(self, i: int) -> RainConfig | None:
        """The rain to render on pair ``i``'s clean image, or None for a stored pair."""
        return getattr(self.index[i][0], "rain", None)


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad the bottom and right of an H x W x C array so that both sides are >= size."""
    pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if not pad_h and not pad_w:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def random_crop(lq: np.ndarray, gt: np.ndarray, size: int, rng: np.random.Generator) -> Pair:
    """The same random size x size window of both images (reflect-padded first when too small)."""
    lq, gt = pad_to(lq, size), pad_to(gt, size)
    top = int(rng.integers(0, lq.shape[0] - size + 1))
    left = int(rng.integers(0, lq.shape[1] - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    return lq[window], gt[window]


def random_flip_rotate(lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> Pair:
    """The same random horizontal flip, vertical flip and transpose (each p=0.5) of both, as the reference."""
    hflip, vflip, transpose = (bool(b) for b in rng.integers(0, 2, size=3))

    def apply(image: np.ndarray) -> np.ndarray:
        if hflip:
            image = image[:, ::-1]
        if vflip:
            image = image[::-1]
        if transpose:
            image = image.transpose(1, 0, 2)
        return image

    return apply(lq), apply(gt)


def rainy_uint8(clean: np.ndarray, rain: RainConfig, rng: np.random.Generator, full_side: int) -> np.ndarray:
    """Rain rendered on a uint8 crop of a photo whose shorter side is ``full_side``, rounded to uint8 as if saved."""
    rainy, _ = render_rain(clean.astype(np.float32) / 255.0, rain, rng, full_side=max(full_side, min(clean.shape[:2])))
    return np.round(rainy * 255.0).astype(np.uint8)


def to_tensor(image: np.ndarray) -> Tensor:
    """A uint8 H x W x 3 array as a float32 [3, H, W] tensor on the 0..1 scale."""
    return torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy()).float().div_(255)


class RandomPatches(Dataset):
    """Aligned random LQ/GT patches; item ``k`` is the k-th training sample (see module docstring)."""

    def __init__(self, images: PairImages, patch_size: int = 128, seed: int = 0, augment: bool = True) -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        self.images, self.patch_size, self.seed, self.augment = images, patch_size, seed, augment
        self._epoch = -1
        self._perm = np.arange(0)

    def __len__(self) -> int:
        return len(self.images)

    def pair_index(self, k: int) -> int:
        """The pair that sample ``k`` is cut from: a fresh permutation of all pairs every epoch."""
        epoch, position = divmod(k, len(self.images))
        if epoch != self._epoch:
            self._perm = sample_rng(self.seed, epoch, STREAM_PERMUTATION).permutation(len(self.images))
            self._epoch = epoch
        return int(self._perm[position])

    def __getitem__(self, k: int) -> dict[str, Tensor | int]:
        """Sample ``k``: {"lq", "gt"} float [3, P, P] tensors in 0..1 and its number "key"."""
        index = self.pair_index(k)
        lq, gt = self.images[index]
        photo_side = min(gt.shape[:2])
        rng = sample_rng(self.seed, k, STREAM_PATCH)
        lq, gt = random_crop(lq, gt, self.patch_size, rng)
        rain = self.images.rain(index)
        if rain is not None:
            lq = rainy_uint8(gt, rain, sample_rng(self.seed, k, STREAM_RAIN), full_side=photo_side)
        if self.augment:
            lq, gt = random_flip_rotate(lq, gt, rng)
        return {"lq": to_tensor(lq), "gt": to_tensor(gt), "key": k}


class StepBatches(Sampler[list[int]]):
    """Sample numbers of steps start+1..steps for one rank: its contiguous share of each global batch."""

    def __init__(self, batch_size: int, steps: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise DerainError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.batch_size, self.steps, self.start = batch_size, steps, start
        self.local = batch_size // world_size
        self.offset = rank * self.local

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start + 1, self.steps + 1):
            first = (step - 1) * self.batch_size + self.offset
            yield list(range(first, first + self.local))


def centre_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    """The central size x size window of an H x W x C array (the whole image when smaller or None)."""
    if size is None:
        return image
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top:top + size, left:left + size]


class ValidationPairs(Dataset):
    """Whole validation pairs (or their centre crops): item i is (name, LQ [3, H, W] in 0..1, GT uint8 HxWx3)."""

    def __init__(self, images: PairImages, crop: int | None = None, limit: int | None = None) -> None:
        self.images, self.crop = images, crop
        self.count = len(images) if limit is None else min(limit, len(images))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[str, Tensor, np.ndarray]:
        """Validation pair ``i``: its name, the LQ tensor and the ground truth as saved (uint8)."""
        lq, gt = self.images[i]
        return self.images.name(i), to_tensor(centre_crop(lq, self.crop)), centre_crop(gt, self.crop)
