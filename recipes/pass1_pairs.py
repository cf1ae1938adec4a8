"""Second-pass training pairs for stages 5 and 7 of the `compact` recipe (see docs/MODEL_CARD.md).

Usage: python3 recipes/pass1_pairs.py WEIGHTS DATA_DIR... [--tile N] [--seed S] [--prefix P]

For every pair of each DATA_DIR (LQ/ + GT/, file names in sorted order), cuts a 192x192 window
(offsets from one numpy generator seeded S, default 123, drawn in order across all the folders) and
derains the LQ window once with WEIGHTS (1 step, seed 0, eight windows per call; in tiles of N
pixels with the default overlap of 32 when --tile is given, else the window whole), writing the
result as P<name>/LQ/<file> and the clean window as P<name>/GT/<file> in the current folder
(P default `p1c_`): what the model sees on a second pass, paired with what it should give.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from derain_cli.pipeline import SampleOptions
from derain_cli.resolve import ModelSpec, load

SIDE = 192
CHUNK = 8


def main(weights: str, folders: list[str], tile: int | None = None, seed: int = 123, prefix: str = "p1c_") -> None:
    torch.set_num_threads(2)
    pipeline = load(ModelSpec(unet=Path(weights)), device="cpu", passes=1).restorer
    options = SampleOptions(steps=1, tile=tile, seed=0)
    rng = np.random.default_rng(seed)
    for folder in map(Path, folders):
        out = Path(f"{prefix}{folder.name}")
        (out / "LQ").mkdir(parents=True, exist_ok=True)
        (out / "GT").mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in (folder / "LQ").glob("*.png"))
        for start in range(0, len(names), CHUNK):
            chunk, rainy, clean = names[start:start + CHUNK], [], []
            for name in chunk:
                lq = np.asarray(Image.open(folder / "LQ" / name).convert("RGB"))
                gt = np.asarray(Image.open(folder / "GT" / name).convert("RGB"))
                top = int(rng.integers(0, lq.shape[0] - SIDE + 1))
                left = int(rng.integers(0, lq.shape[1] - SIDE + 1))
                rainy.append(lq[top:top + SIDE, left:left + SIDE])
                clean.append(gt[top:top + SIDE, left:left + SIDE])
            batch = torch.from_numpy(np.stack(rainy)).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                derained = pipeline.restore(batch, options)
            derained8 = (derained * 255).round().byte().permute(0, 2, 3, 1).numpy()
            for name, once, gt in zip(chunk, derained8, clean):
                Image.fromarray(once).save(out / "LQ" / name)
                Image.fromarray(gt).save(out / "GT" / name)
        print(f"{out}: {len(names)} pairs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--prefix", default="p1c_")
    args = parser.parse_args()
    main(args.weights, args.folders, args.tile, args.seed, args.prefix)
