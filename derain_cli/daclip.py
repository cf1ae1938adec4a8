"""DA-CLIP: an upstream open_clip CLIP ViT plus the degradation-aware image controller (Luo et al. 2024)."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn

from derain_cli.errors import CheckpointError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # channels per attention head of every published DA-CLIP tower


class ControlTransformer(nn.Module):
    """The controller's blocks: a copy of the CLIP image blocks, each followed by a zero-initialised Linear."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer
        self.batch_first = getattr(transformer, "batch_first", False)
        self.zero_modules = nn.ModuleList(_zero_linear(transformer.width) for _ in transformer.resblocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the copied blocks; return the last tokens and each block's zero-module output."""
        hiddens = []
        for block, zero in zip(self.transformer.resblocks, self.zero_modules):
            x = block(x)
            hiddens.append(zero(x))
        return x, hiddens


class DACLIP(nn.Module):
    """CLIP (upstream open_clip) with DA-CLIP's image controller; state-dict keys equal the official file's."""

    def __init__(self, embed_dim: int, vision_cfg: Mapping[str, Any], text_cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.clip = open_clip.CLIP(embed_dim, vision_cfg=dict(vision_cfg), text_cfg=dict(text_cfg))
        _check_plain_vit(self.clip.visual)
        self.visual = self.clip.visual  # alias: the official state dict repeats the image tower under `visual.`
        self.visual_control = copy.deepcopy(self.clip.visual)
        self.visual_control.transformer = ControlTransformer(self.visual_control.transformer)
        self.logit_scale = nn.Parameter(self.clip.logit_scale.detach().clone())

    @property
    def image_size(self) -> int:
        """Side of the square input the image tower expects (224 for the published models)."""
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def encode_image(
        self, images: torch.Tensor, control: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Un-normalised (content, degradation) embeddings, or the plain CLIP embedding when control=False."""
        if not control:
            return _encode(self.clip.visual, images)
        controller = self.visual_control
        tokens, hiddens = controller.transformer(_blocks_in(controller, images))
        return _encode(self.clip.visual, images, control=hiddens), _pool(controller, tokens)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Un-normalised CLIP text embedding of token ids [B, context_length]."""
        return self.clip.encode_text(tokens)


def _zero_linear(width: int) -> nn.Linear:
    """A Linear(width, width) whose weight and bias start at zero (the ControlNet zero module)."""
    layer = nn.Linear(width, width)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _check_plain_vit(tower: nn.Module) -> None:
    """Refuse image towers whose pooling the DA-CLIP forward does not reproduce."""
    if getattr(tower, "attn_pool", None) is not None or getattr(tower, "pool_type", "tok") != "tok":
        raise ValueError("DA-CLIP needs a ViT image tower with class-token pooling and no attentional pooler")


def _batch_first(tower: nn.Module) -> bool:
    """Whether the blocks take [batch, tokens, width] (open_clip 3.x) or [tokens, batch, width] (older releases)."""
    return getattr(tower.transformer, "batch_first", False)


def _blocks_in(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens entering the first block: patches, class token, positional embedding, patch dropout, ln_pre."""
    x = tower.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = tower.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1) + tower.positional_embedding.to(x.dtype)
    x = tower.ln_pre(tower.patch_dropout(x))
    return x if _batch_first(tower) else x.permute(1, 0, 2)


def _encode(tower: nn.Module, images: torch.Tensor, control: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Image embedding of a CLIP tower; with control, block i adds controller block L-1-i's output (reference order)."""
    x, blocks = _blocks_in(tower, images), tower.transformer.resblocks
    added = reversed(control) if control is not None else [None] * len(blocks)
    for block, hidden in zip(blocks, added, strict=True):
        x = block(x)
        if hidden is not None:
            x = x + hidden
    return _pool(tower, x)


def _pool(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class token of the last block's output -> ln_post -> projection, the image embedding."""
    cls = x[:, 0] if _batch_first(tower) else x[0]
    return tower.ln_post(cls) @ tower.proj


def infer_daclip_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """DACLIP constructor kwargs (embed_dim, vision_cfg, text_cfg) read from the tensor shapes of a state dict."""
    required = (
        "clip.visual.conv1.weight",
        "clip.visual.positional_embedding",
        "clip.visual.proj",
        "clip.visual.transformer.resblocks.0.mlp.c_fc.weight",
        "clip.token_embedding.weight",
        "clip.positional_embedding",
        "clip.transformer.resblocks.0.mlp.c_fc.weight",
        "visual_control.transformer.zero_modules.0.weight",
    )
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise CheckpointError(f"not a DA-CLIP state dict: missing {', '.join(missing)}")
    return {
        "embed_dim": int(state_dict["clip.visual.proj"].shape[1]),
        "vision_cfg": _vision_cfg(state_dict),
        "text_cfg": _text_cfg(state_dict),
    }


def _vision_cfg(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """image_size, patch_size, width, layers (+ mlp_ratio) of the CLIP image tower."""
    width, _, patch_size, _ = state_dict["clip.visual.conv1.weight"].shape
    grid = math.isqrt(state_dict["clip.visual.positional_embedding"].shape[0] - 1)
    if grid * grid + 1 != state_dict["clip.visual.positional_embedding"].shape[0]:
        raise CheckpointError("DA-CLIP image positional embedding does not cover a square grid of patches")
    cfg = {"image_size": grid * patch_size, "patch_size": patch_size, "width": width, "head_width": HEAD_WIDTH}
    return cfg | _blocks_cfg(state_dict, "clip.visual.transformer.resblocks.", width)


def _text_cfg(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """context_length, vocab_size, width, heads, layers (+ mlp_ratio) of the CLIP text tower."""
    vocab_size, width = state_dict["clip.token_embedding.weight"].shape
    cfg = {
        "context_length": state_dict["clip.positional_embedding"].shape[0],
        "vocab_size": vocab_size,
        "width": width,
        "heads": width // HEAD_WIDTH,
    }
    return cfg | _blocks_cfg(state_dict, "clip.transformer.resblocks.", width)


def _blocks_cfg(state_dict: Mapping[str, torch.Tensor], prefix: str, width: int) -> dict[str, Any]:
    """Number of residual blocks under prefix, and their MLP ratio when it is not open_clip's default 4."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    layers = 1 + max(int(m.group(1)) for key in state_dict if (m := pattern.match(key)))
    cfg: dict[str, Any] = {"layers": layers}
    mlp_ratio = state_dict[f"{prefix}0.mlp.c_fc.weight"].shape[0] / width
    if mlp_ratio != 4.0:
        cfg["mlp_ratio"] = mlp_ratio
    return cfg


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """CLIP input as the reference clip_transform: uint8, bicubic shorter side to size, centre crop, mean/std."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
    batch = torch.stack([_preprocess_one(image, size) for image in images.detach().cpu()])
    return batch.to(images.device)


def _preprocess_one(image: torch.Tensor, size: int) -> torch.Tensor:
    """One [3, H, W] image in 0..1 through the reference's PIL pipeline."""
    pixels = (image.float() * 255).clamp(0, 255).to(torch.uint8)  # truncates like numpy's astype(uint8)
    pil = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    pil = _resize_shorter_side(pil, size)
    left, top = int(round((pil.width - size) / 2.0)), int(round((pil.height - size) / 2.0))
    crop = np.asarray(pil.crop((left, top, left + size, top + size)))
    x = torch.from_numpy(crop.copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def _resize_shorter_side(pil: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so that the shorter side is size, the longer side truncated as torchvision's Resize does."""
    short, long = sorted(pil.size)
    new_long = int(size * long / short)
    new_size = (size, new_long) if pil.width <= pil.height else (new_long, size)
    return pil if new_size == pil.size else pil.resize(new_size, Image.Resampling.BICUBIC)
