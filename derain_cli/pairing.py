"""Pair degraded (or restored) images with their ground truths by file name, never by position.

The rule, applied to every file name:

1. Take the stem (the name without its last extension, so ``.png`` and ``.jpg`` match) and
   lower-case it.
2. Split it into tokens: runs of letters and runs of ASCII digits; every other character
   (``-``, ``_``, ``.``, space, ...) only separates tokens, as does a change from letters to
   digits (``rain12`` -> ``rain``, ``12``).
3. Drop the role tokens in :data:`ROLE_TOKENS` (``rain``, ``norain``, ``gt``, ``lq``, ``clean``,
   ...) wherever they stand.
4. Write numbers without leading zeros, so ``001`` and ``1`` are the same number.

The remaining tuple of tokens is the pairing key: ``rain-001.png``, ``001_rain.png``,
``rain_1.jpg``, ``LQ_001.png`` and ``001.png`` all have the key ``("1",)`` and pair with
``norain-001.png``, ``001_clean.png``, ``GT_1.png`` or ``001.png``. Any other token must agree
(``img_001`` does not pair with ``001``). A name whose key is empty (``rain.png``) pairs only with a
file of the identical stem. An input and a ground truth pair when their keys are equal and
each is the only file of its side with that key; two candidates on either side raise ValueError
naming them. Everything else is returned as unpaired, in the order given.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

# Words that name an image's role, not its content; dropped from names before comparing.
ROLE_TOKENS = frozenset({
    "rain", "rainy", "norain", "derain", "derained", "clean", "gt", "groundtruth",
    "lq", "hq", "input", "target", "output", "restored",
})

_TOKEN = re.compile(r"[0-9]+|[^\W\d_]+")


def pairing_key(path: Path) -> tuple[str, ...]:
    """Key of a file name: stem tokens without role words, numbers without leading zeros."""
    stem = path.stem.lower()
    kept = [tok for tok in _TOKEN.findall(stem) if tok not in ROLE_TOKENS]
    key = tuple((tok.lstrip("0") or "0") if tok.isdigit() else tok for tok in kept)
    return key if key else ("", stem)


def _group(paths: list[Path]) -> dict[tuple[str, ...], list[Path]]:
    """Group paths by their pairing key, keeping the given order within each group."""
    groups: dict[tuple[str, ...], list[Path]] = defaultdict(list)
    for path in paths:
        groups[pairing_key(path)].append(path)
    return groups


def pair_files(
    inputs: list[Path], gts: list[Path]
) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Pair inputs with ground truths by file-name key (see module docstring); list the unpaired."""
    input_groups, gt_groups = _group(inputs), _group(gts)
    for key, group in input_groups.items():
        candidates = group + gt_groups.get(key, [])
        if key in gt_groups and len(candidates) > 2:
            names = ", ".join(str(p) for p in candidates)
            raise ValueError(f"ambiguous pairing by file name: {names} have the same key {key}")
    pairs, unpaired_inputs = [], []
    for path in inputs:
        match = gt_groups.get(pairing_key(path))
        if match:
            pairs.append((path, match[0]))
        else:
            unpaired_inputs.append(path)
    paired_gts = {gt for _, gt in pairs}
    return pairs, unpaired_inputs, [gt for gt in gts if gt not in paired_gts]
