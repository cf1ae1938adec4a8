"""Paired training data: pairing, aligned crops and augmentation, padding, per-sample determinism."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from derain_cli.data import (STREAM_RAIN, PairedFolder, PairImages, RainOnClean, RandomPatches, StepBatches,
                             ValidationPairs, find_pairs, rainy_uint8, random_crop, random_flip_rotate, sample_rng)
from derain_cli.errors import DerainError
from derain_cli.synth import PRESETS


def coordinate_image(height: int, width: int, ident: int) -> np.ndarray:
    """A GT whose pixels name their own place: R = row, G = column, B = image id."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows, cols, np.full_like(rows, ident)], axis=-1).astype(np.uint8)


def write_pairs(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """LQ/NNN.png + GT/NNN.png with coordinate GTs and LQ = 255 - GT."""
    for sub in ("LQ", "GT"):
        (root / sub).mkdir(parents=True)
    for i, (height, width) in enumerate(sizes):
        gt = coordinate_image(height, width, i)
        Image.fromarray(gt).save(root / "GT" / f"{i:03d}.png")
        Image.fromarray(255 - gt).save(root / "LQ" / f"{i:03d}.png")
    return root


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_find_pairs_matches_names_and_lists_the_unpaired(tmp_path):
    root = write_pairs(tmp_path / "set", [(20, 24), (24, 20)])
    Image.new("RGB", (8, 8)).save(root / "LQ" / "extra.png")
    Image.new("RGB", (8, 8)).save(root / "GT" / "lonely.png")
    (root / "GT" / "notes.txt").write_text("not an image")
    folder = find_pairs(root)
    assert [(lq.name, gt.name) for lq, gt in folder.pairs] == [("000.png", "000.png"), ("001.png", "001.png")]
    assert [p.name for p in folder.unpaired_lq] == ["extra.png"]
    assert [p.name for p in folder.unpaired_gt] == ["lonely.png"]


def test_find_pairs_needs_lq_and_gt_subfolders(tmp_path):
    (tmp_path / "LQ").mkdir()
    with pytest.raises(DerainError, match="LQ/ and GT/"):
        find_pairs(tmp_path)


def test_pair_of_different_sizes_is_refused(tmp_path):
    for sub, size in (("LQ", (10, 12)), ("GT", (12, 10))):
        (tmp_path / sub).mkdir()
        Image.new("RGB", size).save(tmp_path / sub / "1.png")
    with pytest.raises(DerainError, match="10x12 but .* is 12x10"):
        PairImages([PairedFolder(tmp_path / "LQ", tmp_path / "GT")])


def test_patches_are_the_same_window_and_transform_of_lq_and_gt(tmp_path):
    images = PairImages([find_pairs(write_pairs(tmp_path / "set", [(40, 48), (48, 40), (44, 44)]))])
    patches = RandomPatches(images, patch_size=16, seed=3)
    seen_orientations = set()
    for k in range(48):
        item = patches[k]
        lq, gt = to_uint8(item["lq"]), to_uint8(item["gt"])
        assert lq.shape == gt.shape == (16, 16, 3)
        np.testing.assert_array_equal(lq, 255 - gt)
        rows, cols = gt[..., 0].astype(int), gt[..., 1].astype(int)
        # Whatever the flips, the patch covers exactly a 16x16 window of the source image.
        assert sorted(set(rows.ravel())) == list(range(rows.min(), rows.min() + 16))
        assert sorted(set(cols.ravel())) == list(range(cols.min(), cols.min() + 16))
        source = images[int(gt[0, 0, 2])][1]
        assert rows.max() < source.shape[0] and cols.max() < source.shape[1]
        right, down = gt[0, 1, :2].astype(int) - gt[0, 0, :2], gt[1, 0, :2].astype(int) - gt[0, 0, :2]
        seen_orientations.add((*right, *down))
    assert len(seen_orientations) == 8  # all flips and rotations of the square occur


def test_crop_and_flip_keep_pairs_aligned_without_augmentation_changes():
    rng = np.random.default_rng(0)
    gt = coordinate_image(30, 30, 0)
    lq, gt_crop = random_crop(gt + 1, gt, 10, rng)
    np.testing.assert_array_equal(lq, gt_crop + 1)
    lq, gt_flip = random_flip_rotate(lq, gt_crop, rng)
    np.testing.assert_array_equal(lq, gt_flip + 1)


def test_images_smaller_than_the_patch_are_reflect_padded(tmp_path):
    images = PairImages([find_pairs(write_pairs(tmp_path / "set", [(10, 12)]))])
    item = RandomPatches(images, patch_size=16, seed=0, augment=False)[0]
    gt = to_uint8(item["gt"])
    assert gt.shape == (16, 16, 3)
    np.testing.assert_array_equal(gt[:10, :12], coordinate_image(10, 12, 0))
    np.testing.assert_array_equal(gt[10:, :12], coordinate_image(10, 12, 0)[8:2:-1])  # reflected rows
    np.testing.assert_array_equal(to_uint8(item["lq"]), 255 - gt)


def test_a_sample_depends_only_on_seed_and_its_number(tmp_path):
    images = PairImages([find_pairs(write_pairs(tmp_path / "set", [(30, 30), (32, 28), (28, 32)]))])
    forward = RandomPatches(images, 16, seed=5)
    first = [forward[k]["gt"] for k in range(9)]
    backward = RandomPatches(images, 16, seed=5)
    assert all(torch.equal(backward[k]["gt"], first[k]) for k in reversed(range(9)))
    other_seed = RandomPatches(images, 16, seed=6)
    assert not all(torch.equal(other_seed[k]["gt"], first[k]) for k in range(9))


def test_every_epoch_visits_each_pair_once_in_a_new_order(tmp_path):
    images = PairImages([find_pairs(write_pairs(tmp_path / "set", [(20, 20)] * 7))], cache=False)
    patches = RandomPatches(images, 8, seed=0)
    epochs = [[patches.pair_index(e * 7 + i) for i in range(7)] for e in range(3)]
    assert all(sorted(order) == list(range(7)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3


def test_several_folders_are_concatenated(tmp_path):
    a = find_pairs(write_pairs(tmp_path / "a", [(8, 8), (8, 8)]))
    b = PairedFolder(write_pairs(tmp_path / "b", [(9, 9)]) / "LQ", tmp_path / "b" / "GT")
    images = PairImages([a, b])
    assert len(images) == 3
    assert images[2][1].shape == (9, 9, 3)


def test_step_batches_split_each_global_batch_between_ranks_and_resume_mid_run():
    single = list(StepBatches(batch_size=4, steps=3))
    assert single == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    ranks = [list(StepBatches(4, 3, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single
    assert list(StepBatches(4, 3, start=2)) == single[2:]
    with pytest.raises(DerainError, match="not divisible"):
        StepBatches(3, 1, world_size=2)


def test_validation_pairs_give_whole_images_or_centre_crops(tmp_path):
    images = PairImages([find_pairs(write_pairs(tmp_path / "set", [(20, 30), (30, 20)]))])
    name, lq, gt = ValidationPairs(images)[0]
    assert name == "000.png" and lq.shape == (3, 20, 30) and gt.dtype == np.uint8 and gt.shape == (20, 30, 3)
    _, lq, gt = ValidationPairs(images, crop=10)[1]
    assert lq.shape == (3, 10, 10)
    assert gt[0, 0, 0] == 10 and gt[0, 0, 1] == 5  # rows 10..19, columns 5..14 of a 30x20 image
    assert len(ValidationPairs(images, limit=1)) == 1


def write_clean(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    """Smooth mid-grey photographs (room for rain to brighten them) named 000.png, 001.png, ..."""
    folder.mkdir(parents=True)
    for i, (height, width) in enumerate(sizes):
        rows, cols = np.mgrid[0:height, 0:width]
        image = np.stack([60 + rows % 50, 60 + cols % 50, np.full_like(rows, 40 + 10 * i)], axis=-1)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_rain_on_clean_renders_new_rain_on_each_visit_and_the_same_rain_for_the_same_sample(tmp_path):
    clean = write_clean(tmp_path / "clean", [(64, 80), (72, 64)])
    images = PairImages([RainOnClean(clean, "light", copies=2)])
    assert len(images) == 4 and images.rain(0) == PRESETS["light"]
    patches = RandomPatches(images, 48, seed=3, augment=False)
    visits: dict[int, list[int]] = {}
    for k in range(12):
        photo = patches.pair_index(k) // 2
        visits.setdefault(photo, []).append(k)
        lq, gt = to_uint8(patches[k]["lq"]), to_uint8(patches[k]["gt"])
        assert (lq >= gt).all() and (lq > gt).mean() > 0.05  # the light preset only brightens (no haze)
        source = np.asarray(Image.open(clean / f"{photo:03d}.png"))
        top, left = int(gt[0, 0, 0]) - 60, int(gt[0, 0, 1]) - 60  # the GT is a window of the photograph
        np.testing.assert_array_equal(gt, source[top:top + 48, left:left + 48])
    again = RandomPatches(images, 48, seed=3, augment=False)
    assert all(torch.equal(again[k]["lq"], patches[k]["lq"]) for k in reversed(range(12)))
    # the same photograph visited twice still gets other rain
    first, second = (patches[k] for k in visits[0][:2])
    assert not torch.equal(first["lq"] - first["gt"], second["lq"] - second["gt"])


def test_rain_on_clean_uses_the_sizes_of_the_whole_photograph(tmp_path):
    clean = write_clean(tmp_path / "clean", [(320, 400)])
    images = PairImages([RainOnClean(clean, "light")])
    patches = RandomPatches(images, 64, seed=0, augment=False)
    k = 0
    item = patches[k]
    rng = sample_rng(0, k, STREAM_RAIN)
    gt = to_uint8(item["gt"])
    expected = rainy_uint8(gt, PRESETS["light"], rng, full_side=320)
    np.testing.assert_array_equal(to_uint8(item["lq"]), expected)
    # rendered as a 64-pixel image of its own, streaks would be 5 times shorter: different rain
    small = rainy_uint8(gt, PRESETS["light"], sample_rng(0, k, STREAM_RAIN), full_side=64)
    assert not np.array_equal(small, expected)


def test_rain_on_clean_refuses_unknown_presets_and_empty_folders(tmp_path):
    clean = write_clean(tmp_path / "clean", [(20, 20)])
    with pytest.raises(DerainError, match="unknown rain preset 'drizzle'"):
        RainOnClean(clean, "drizzle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DerainError, match="no images"):
        RainOnClean(tmp_path / "empty")


def test_copies_of_a_clean_photograph_share_one_array_in_memory(tmp_path):
    clean = write_clean(tmp_path / "clean", [(20, 20)])
    images = PairImages([RainOnClean(clean, "heavy", copies=3), RainOnClean(clean, "light")])
    assert len(images) == 4 and images[0][0] is images[2][1]
    assert images[3][0] is images[0][0]  # another preset on the same photograph: read once too


def test_training_data_synth_and_batch_list_images_with_the_one_extension_list(tmp_path):
    from derain_cli import jobs, synth
    from derain_cli.imageio import IMAGE_EXTENSIONS, list_images

    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "folder.png").mkdir()  # a folder named like an image is not one
    names = ["a.PNG", "b.webp", "c.tiff", "d.jpeg", "e.bmp", "notes.txt", ".f.png.1a2b.tmp", "sub/g.jpg"]
    for name in names:
        (root / name).write_bytes(b"")
    top = [root / n for n in ("a.PNG", "b.webp", "c.tiff", "d.jpeg", "e.bmp")]
    assert list_images(root) == top
    assert list_images(root, recursive=True) == top + [root / "sub" / "g.jpg"]
    assert jobs.scan_images(root) == top and jobs.scan_images(root, recursive=True, exclude=root / "sub") == top
    assert synth._list_images(root) == top
    assert PairedFolder(root, root).pairs == [(p, p) for p in top]
    assert {p.suffix.lower() for p in top} <= IMAGE_EXTENSIONS
    with pytest.raises(DerainError, match="not a folder"):
        list_images(root / "missing")
