"""Shared test settings: small thread counts so the suite behaves on 2-core machines."""

from pathlib import Path

import pytest
import torch

# One thread: tiny test models gain nothing from more, and OpenMP spinning on a busy 2-core
# machine made some tests 20x slower.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_data() -> Path:
    """The real paired rain sets beside the checkout; skipped where a clone has none."""
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip("../shared/data is not present")
    return data


# -- tiny models written to disk in the formats users bring ------------------------------------

TINY_PLAIN_UNET = {"nf": 16, "ch_mult": [1, 2], "context_dim": None, "use_degra_context": False,
                   "use_image_context": False}
TINY_CONTEXT_UNET = {"nf": 32, "ch_mult": [1, 2], "context_dim": 16, "use_degra_context": True,
                     "use_image_context": True}
TINY_DACLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 2, "head_width": 64},
    "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 64, "heads": 1, "layers": 1},
}
TINY_SDE = {"max_sigma": 10, "T": 100, "schedule": "cosine", "eps": 0.005}


@pytest.fixture(scope="session")
def plain_unet_file(tmp_path_factory) -> Path:
    """A tiny IR-SDE U-Net without conditioning, as safetensors with its config beside it."""
    from derain_cli.checkpoints import save_safetensors
    from derain_cli.unet import ConditionalUNet

    torch.manual_seed(0)
    unet = ConditionalUNet(**TINY_PLAIN_UNET)
    path = tmp_path_factory.mktemp("models") / "plain.safetensors"
    save_safetensors(unet.state_dict(), path, {"unet": unet.config, "sde": TINY_SDE})
    return path


@pytest.fixture(scope="session")
def daclip_model_files(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny DA-CLIP-conditioned U-Net (.pth pickle) and a tiny DA-CLIP training checkpoint (.pt)."""
    from derain_cli.daclip import DACLIP
    from derain_cli.unet import ConditionalUNet

    from tests.writers import write_plain_pickle, write_training_checkpoint

    torch.manual_seed(0)
    unet = ConditionalUNet(**TINY_CONTEXT_UNET)
    daclip = DACLIP(**TINY_DACLIP)
    with torch.no_grad():
        for parameter in daclip.parameters():
            parameter.normal_(std=0.02)
    folder = tmp_path_factory.mktemp("daclip")
    unet_path, daclip_path = folder / "tiny-ir.pth", folder / "daclip_tiny.pt"
    write_plain_pickle(unet.state_dict(), unet_path)
    write_training_checkpoint(daclip.state_dict(), daclip_path)
    return unet_path, daclip_path


def write_rgb(path: Path, height: int = 40, width: int = 56, seed: int = 0) -> Path:
    """A smooth random RGB test picture."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / 7 + seed), np.cos(y / 5), np.sin((x + y) / 9)], -1) * 0.4 + 0.5
    noisy = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((noisy * 255).astype(np.uint8)).save(path)
    return path
