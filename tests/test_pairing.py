"""Tests of derain_cli.pairing: pairing by file name under the documented rule, never by position."""

from __future__ import annotations

from pathlib import Path

import pytest

from derain_cli.pairing import pair_files, pairing_key


def paths(folder: str, *names: str) -> list[Path]:
    """Paths of names inside folder (the files need not exist: pairing reads names only)."""
    return [Path(folder) / name for name in names]


def pair_names(inputs: list[Path], gts: list[Path]) -> list[tuple[str, str]]:
    """pair_files result as (input name, gt name) tuples."""
    pairs, _, _ = pair_files(inputs, gts)
    return [(a.name, b.name) for a, b in pairs]


def test_identical_names_pair() -> None:
    inputs = paths("LQ", "001.png", "002.png", "city.png")
    gts = paths("GT", "002.png", "city.png", "001.png")
    assert pair_names(inputs, gts) == [("001.png", "001.png"), ("002.png", "002.png"),
                                       ("city.png", "city.png")]


@pytest.mark.parametrize(
    ("lq", "gt"),
    [
        ("rain-001.png", "norain-001.png"),
        ("001_rain.png", "001_clean.png"),
        ("rain_12.jpg", "norain_12.png"),
        ("LQ_5.png", "GT_5.png"),
        ("rain12.png", "norain12.png"),
        ("city_rainy_007.png", "city_clean_007.png"),
        ("Rain-001.PNG", "001.png"),
        ("001.png", "groundtruth.001.png"),
        ("input 3.png", "target 3.png"),
    ],
)
def test_names_differing_by_role_prefix_or_suffix_pair(lq: str, gt: str) -> None:
    assert pair_names(paths("in", lq), paths("gt", gt)) == [(lq, gt)]


def test_numbers_match_regardless_of_zero_padding() -> None:
    inputs = paths("in", "rain-001.png", "rain-010.png")
    gts = paths("gt", "norain-10.png", "norain-1.png")
    assert pair_names(inputs, gts) == [("rain-001.png", "norain-1.png"),
                                       ("rain-010.png", "norain-10.png")]
    assert pairing_key(Path("x/rain-001.png")) == pairing_key(Path("norain_1.jpg")) == ("1",)


def test_other_words_and_numbers_must_agree() -> None:
    inputs = paths("in", "img_001.png", "rain_1_2.png", "rain_12.png", "brain_3.png")
    gts = paths("gt", "001.png", "norain_12.png", "norain_3.png")
    pairs, unpaired_inputs, unpaired_gts = pair_files(inputs, gts)
    assert [(a.name, b.name) for a, b in pairs] == [("rain_12.png", "norain_12.png")]
    assert [p.name for p in unpaired_inputs] == ["img_001.png", "rain_1_2.png", "brain_3.png"]
    assert [p.name for p in unpaired_gts] == ["001.png", "norain_3.png"]


def test_unpaired_files_are_listed_on_both_sides_in_given_order() -> None:
    inputs = paths("in", "003.png", "001.png", "009.png")
    gts = paths("gt", "002.png", "001.png", "004.png")
    pairs, unpaired_inputs, unpaired_gts = pair_files(inputs, gts)
    assert pairs == [(Path("in/001.png"), Path("gt/001.png"))]
    assert unpaired_inputs == paths("in", "003.png", "009.png")
    assert unpaired_gts == paths("gt", "002.png", "004.png")


def test_same_count_but_different_numbers_pairs_nothing() -> None:
    inputs = paths("in", "rain-001.png", "rain-002.png", "rain-003.png")
    gts = paths("gt", "norain-004.png", "norain-005.png", "norain-006.png")
    pairs, unpaired_inputs, unpaired_gts = pair_files(inputs, gts)
    assert pairs == []
    assert unpaired_inputs == inputs and unpaired_gts == gts


def test_two_ground_truths_for_one_input_raise_naming_them() -> None:
    inputs = paths("in", "rain-001.png")
    gts = paths("gt", "001.png", "norain-1.jpg")
    with pytest.raises(ValueError, match=r"rain-001\.png.*001\.png.*norain-1\.jpg"):
        pair_files(inputs, gts)


def test_two_inputs_for_one_ground_truth_raise() -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        pair_files(paths("in", "001.png", "001.jpg"), paths("gt", "001.png"))


def test_duplicate_keys_without_a_counterpart_are_just_unpaired() -> None:
    inputs = paths("in", "007.png", "rain-7.png", "001.png")
    pairs, unpaired_inputs, unpaired_gts = pair_files(inputs, paths("gt", "001.png"))
    assert [(a.name, b.name) for a, b in pairs] == [("001.png", "001.png")]
    assert [p.name for p in unpaired_inputs] == ["007.png", "rain-7.png"]
    assert unpaired_gts == []


def test_names_of_only_role_words_pair_by_identical_stem_only() -> None:
    assert pair_names(paths("in", "rain.png"), paths("gt", "rain.png")) == [("rain.png", "rain.png")]
    assert pair_names(paths("in", "rain.png"), paths("gt", "norain.png")) == []


def test_empty_lists_pair_nothing() -> None:
    assert pair_files([], []) == ([], [], [])
    assert pair_files(paths("in", "1.png"), []) == ([], paths("in", "1.png"), [])
