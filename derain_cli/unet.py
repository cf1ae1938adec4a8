"""The noise-prediction U-Net of IR-SDE / DA-CLIP (``ConditionalUNet``), state-dict compatible.

The network takes the noisy state ``x_t``, the degraded image ``mu`` and the time index ``t`` and
returns the predicted noise. Its input is ``cat([x_t - mu, mu])``, reflect-padded to a multiple of
``2 ** len(ch_mult)`` and cropped back at the end. Each level holds two time-modulated residual
blocks, a pre-normalised attention and a resampling convolution; attention is the linear
(channel) attention everywhere, except that with ``use_image_context`` the levels from index 3 on
and the middle block use a transformer whose cross-attention reads the DA-CLIP content embedding.
With ``use_degra_context`` the DA-CLIP degradation embedding selects a learned prompt that is added
to the time embedding. Module names and nesting follow the reference code (Luo et al.,
daclip-uir and image-restoration-sde) so that the official state dicts load strictly; the
IR-SDE deraining U-Net (``depth=4``) is this class with ``ch_mult=(2, 4, 8, 16)`` and no context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from derain_cli.errors import CheckpointError

HEAD_CHANNELS = 32  # channels per attention head, in both attention kinds
LINEAR_ATTENTION_HEADS = 4
CROSS_ATTENTION_FIRST_LEVEL = 3  # with image context, levels >= 3 use the transformer


def conv3x3(dim_in: int, dim_out: int) -> nn.Conv2d:
    """A bias-free 3x3 convolution with 'same' padding (the reference ``default_conv``)."""
    return nn.Conv2d(dim_in, dim_out, 3, padding=1, bias=False)


class SinusoidalEmbedding(nn.Module):
    """Transformer sinusoidal features [sin(t w_k), cos(t w_k)], w_k = 10000^(-k / (dim/2 - 1))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        """Embed time indices of shape [B] into float32 features of shape [B, dim]."""
        half = self.dim // 2
        step = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -step)
        angles = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimeEmbedding(nn.Sequential):
    """Sinusoidal features followed by Linear-GELU-Linear, in the dtype of the weights."""

    def __init__(self, dim: int, time_dim: int) -> None:
        super().__init__(
            SinusoidalEmbedding(dim),
            nn.Linear(dim, time_dim),
            nn.GELU(),
            nn.Linear(time_dim, time_dim),
        )

    def forward(self, t: Tensor) -> Tensor:
        """Embed time indices of shape [B] into [B, time_dim]."""
        features = self[0](t).to(self[1].weight.dtype)
        return self[3](self[2](self[1](features)))


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of a [B, C, H, W] map, scale only, eps 1e-5, computed in fp32.

    The reference switches to eps 1e-3 for half-precision inputs. The published results are fp32
    ones, and under fp16 or bf16 autocast that switch changes every normalisation of features whose
    variance is small: the bundled model lost 1.1 dB PSNR_Y on Rain100H under fp16 on a GPU, and a
    model trained with autocast learned a normalisation it does not get in fp32. So half inputs are
    normalised in fp32 with the fp32 eps and given back in their own dtype; fp32 is unchanged.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each pixel's channel vector to zero mean and unit variance, times ``g``."""
        x32 = x.float()
        var = torch.var(x32, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x32, dim=1, keepdim=True)
        return ((x32 - mean) * (var + 1e-5).rsqrt() * self.g).to(x.dtype)


class PreNorm(nn.Module):
    """Apply ``fn`` to the channel-layer-normalised input."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Compute fn(norm(x), context)."""
        return self.fn(self.norm(x), context)


class Residual(nn.Module):
    """Add the input to the output of ``fn``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Compute fn(x, context) + x."""
        return self.fn(x, context) + x


class ConvBlock(nn.Module):
    """3x3 convolution, optional FiLM modulation x * (scale + 1) + shift, then SiLU."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = conv3x3(dim_in, dim_out)

    def forward(
        self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None
    ) -> Tensor:
        """Convolve, modulate when ``scale``/``shift`` are given, and apply SiLU."""
        x = self.proj(x)
        if scale is not None:
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResBlock(nn.Module):
    """Two conv blocks, the first modulated by the time embedding, plus a (1x1) skip path."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out * 2))
        self.block1 = ConvBlock(dim_in, dim_out)
        self.block2 = ConvBlock(dim_out, dim_out)
        if dim_in != dim_out:
            self.res_conv: nn.Module = nn.Conv2d(dim_in, dim_out, 1, bias=False)
        else:
            self.res_conv = nn.Identity()

    def forward(self, x: Tensor, time_emb: Tensor) -> Tensor:
        """Compute block2(block1(x; scale, shift from time_emb)) + res_conv(x)."""
        scale, shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale, shift))
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    """Linear attention (Shen et al.): softmax(q) over channels, softmax(k) over pixels.

    Per head, out = (softmax_n(k) v^T / N)^T softmax_d(q) / sqrt(d). ``context`` is ignored.
    """

    def __init__(
        self, dim: int, heads: int = LINEAR_ATTENTION_HEADS, dim_head: int = HEAD_CHANNELS
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Attend over the pixels of a [B, C, H, W] map in time linear in H * W."""
        b, _, h, w = x.shape
        qkv = self.to_qkv(x).reshape(b, 3, self.heads, self.dim_head, h * w)
        q, k, v = qkv.unbind(dim=1)
        q = q.softmax(dim=-2) * self.dim_head**-0.5
        k = k.softmax(dim=-1)
        v = v / (h * w)
        summary = torch.matmul(k, v.transpose(-1, -2))  # [b, heads, d, e]
        out = torch.matmul(summary.transpose(-1, -2), q)  # [b, heads, e, n]
        return self.to_out(out.reshape(b, self.heads * self.dim_head, h, w))


class CrossAttention(nn.Module):
    """Multi-head scaled dot-product attention of tokens ``x`` over ``context`` (self if None)."""

    def __init__(
        self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Compute softmax(q k^T / sqrt(d)) v per head for x [B, N, C] and context [B, M, C']."""
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (self._split_heads(y) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

    def _split_heads(self, y: Tensor) -> Tensor:
        """Reshape [B, N, heads * d] into [B, heads, N, d]."""
        b, n, _ = y.shape
        return y.reshape(b, n, self.heads, -1).transpose(1, 2)


class GEGLU(nn.Module):
    """Gated GELU unit: a * gelu(gate) where [a, gate] = proj(x)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        """Compute a * gelu(gate)."""
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer feed-forward: GEGLU to 4 * dim, then a linear back to dim."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        # index 1 held the reference's Dropout(0); it stays so the linear is still named net.2
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the feed-forward network token-wise."""
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Transform tokens [B, N, dim]; without context the cross-attention attends to itself."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 conv to tokens, one transformer block, zero-initialised 1x1 conv back."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        block = TransformerBlock(inner, heads, dim_head, context_dim)
        self.transformer_blocks = nn.ModuleList([block])
        self.proj_out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Compute x + proj_out(transformer(proj_in(norm(x)), context)) on a [B, C, H, W] map."""
        b, _, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.proj_out(tokens.transpose(1, 2).reshape(b, -1, h, w)) + x


def level_attention(dim: int, context_dim: int | None) -> Residual:
    """Residual pre-norm attention: spatial transformer if ``context_dim`` is set, else linear."""
    if context_dim is None:
        return Residual(PreNorm(dim, LinearAttention(dim)))
    heads = dim // HEAD_CHANNELS
    return Residual(PreNorm(dim, SpatialTransformer(dim, heads, HEAD_CHANNELS, context_dim)))


def downsample(dim_in: int, dim_out: int, last: bool) -> nn.Conv2d:
    """Strided 4x4 convolution halving the resolution; a plain 3x3 one at the lowest level."""
    return conv3x3(dim_in, dim_out) if last else nn.Conv2d(dim_in, dim_out, 4, 2, 1)


def upsample(dim_in: int, dim_out: int, last: bool) -> nn.Module:
    """Nearest 2x upsampling then a 3x3 convolution; a plain 3x3 one at the top level."""
    if last:
        return conv3x3(dim_in, dim_out)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim_in, dim_out, 3, 1, 1)
    )


def down_level(
    dim_in: int, dim_out: int, time_dim: int, context_dim: int | None, last: bool
) -> nn.ModuleList:
    """Encoder level [res block, res block, attention, downsample] at width ``dim_in``."""
    return nn.ModuleList([
        ResBlock(dim_in, dim_in, time_dim),
        ResBlock(dim_in, dim_in, time_dim),
        level_attention(dim_in, context_dim),
        downsample(dim_in, dim_out, last),
    ])


def up_level(
    dim_in: int, dim_out: int, time_dim: int, context_dim: int | None, last: bool
) -> nn.ModuleList:
    """Decoder level [res block, res block, attention, upsample] mirroring ``down_level``."""
    return nn.ModuleList([
        ResBlock(dim_out + dim_in, dim_out, time_dim),
        ResBlock(dim_out + dim_in, dim_out, time_dim),
        level_attention(dim_out, context_dim),
        upsample(dim_out, dim_in, last),
    ])


class ConditionalUNet(nn.Module):
    """IR-SDE noise-prediction U-Net, optionally conditioned on DA-CLIP embeddings."""

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        context_dim: int | None = 512,
        use_degra_context: bool = True,
        use_image_context: bool = False,
    ) -> None:
        super().__init__()
        if nf < 4 or nf % 2:
            raise ValueError(f"nf must be an even number >= 4, got {nf}")
        if not ch_mult:
            raise ValueError("ch_mult must name at least one level")
        self.config: dict[str, Any] = {
            "in_nc": in_nc,
            "out_nc": out_nc,
            "nf": nf,
            "ch_mult": [int(m) for m in ch_mult],
            "context_dim": context_dim,
            "use_degra_context": use_degra_context,
            "use_image_context": use_image_context,
        }
        has_context = context_dim is not None and context_dim > 0
        self.depth = len(ch_mult)
        self.use_degra_context = has_context and use_degra_context
        self.use_image_context = has_context and use_image_context
        self.gradient_checkpointing = False
        time_dim = nf * 4
        widths = [nf * m for m in (1, *ch_mult)]

        self.init_conv = nn.Conv2d(in_nc * 2, nf, 7, padding=3, bias=False)
        self.time_mlp = TimeEmbedding(nf, time_dim)
        if self.use_degra_context:
            self.prompt = nn.Parameter(torch.rand(1, time_dim))
            self.text_mlp = nn.Sequential(
                nn.Linear(context_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
            )
            self.prompt_mlp = nn.Linear(time_dim, time_dim)

        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i, (dim_in, dim_out) in enumerate(zip(widths[:-1], widths[1:])):
            cross = self.use_image_context and i >= CROSS_ATTENTION_FIRST_LEVEL
            cross_dim = context_dim if cross else None
            self.downs.append(down_level(dim_in, dim_out, time_dim, cross_dim, i == self.depth - 1))
            self.ups.insert(0, up_level(dim_in, dim_out, time_dim, cross_dim, i == 0))

        mid_dim = widths[-1]
        self.mid_block1 = ResBlock(mid_dim, mid_dim, time_dim)
        self.mid_attn = level_attention(mid_dim, context_dim if self.use_image_context else None)
        self.mid_block2 = ResBlock(mid_dim, mid_dim, time_dim)
        self.final_res_block = ResBlock(nf * 2, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(
        self,
        x_t: Tensor,
        mu: Tensor,
        t: Tensor | int | float,
        text_context: Tensor | None = None,
        image_context: Tensor | None = None,
    ) -> Tensor:
        """Predicted noise in ``x_t`` given ``mu``, time index ``t`` and DA-CLIP embeddings."""
        height, width = x_t.shape[-2:]
        x = self.init_conv(self._pad(torch.cat([x_t - mu, mu], dim=1)))
        first = x
        emb = self._embed(x, t, text_context)
        context = self._image_tokens(image_context, x.dtype)

        skips = []
        for block1, block2, attn, down in self.downs:
            x = self._run(block1, x, emb)
            skips.append(x)
            x = self._run(attn, self._run(block2, x, emb), context)
            skips.append(x)
            x = down(x)

        x = self._run(self.mid_block1, x, emb)
        x = self._run(self.mid_attn, x, context)
        x = self._run(self.mid_block2, x, emb)

        for block1, block2, attn, up in self.ups:
            x = self._run(block1, torch.cat([x, skips.pop()], dim=1), emb)
            x = self._run(block2, torch.cat([x, skips.pop()], dim=1), emb)
            x = up(self._run(attn, x, context))

        x = self._run(self.final_res_block, torch.cat([x, first], dim=1), emb)
        return self.final_conv(x)[..., :height, :width]

    def _pad(self, x: Tensor) -> Tensor:
        """Reflect-pad the bottom and right edges to a multiple of 2 ** depth (as the reference).

        Images too small to reflect (a pad as large as the side) are edge-padded instead, where
        the reference would fail.
        """
        size = 2**self.depth
        pad_h = -x.shape[-2] % size
        pad_w = -x.shape[-1] % size
        mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
        return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

    def _embed(self, x: Tensor, t: Tensor | int | float, text_context: Tensor | None) -> Tensor:
        """Time embedding, plus prompt_mlp(softmax(text_mlp(e_d)) * prompt) when e_d is given."""
        emb = self.time_mlp(torch.as_tensor(t, device=x.device).reshape(-1))
        if self.use_degra_context and text_context is not None:
            weights = torch.softmax(self.text_mlp(text_context.to(x.dtype)), dim=1)
            emb = emb + self.prompt_mlp(weights * self.prompt)
        return emb

    def _image_tokens(self, image_context: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """The content embedding as a one-token cross-attention context [B, 1, D], or None."""
        if not self.use_image_context or image_context is None:
            return None
        image_context = image_context.to(dtype)
        return image_context.unsqueeze(1) if image_context.dim() == 2 else image_context

    def _run(self, block: nn.Module, x: Tensor, extra: Tensor | None) -> Tensor:
        """Call ``block(x, extra)``, through activation checkpointing when enabled and training."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, extra, use_reentrant=False)
        return block(x, extra)


def infer_unet_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Constructor kwargs of the ``ConditionalUNet`` that has this state dict, from shapes alone."""
    init = _shape(state_dict, "init_conv.weight", ndim=4)
    final = _shape(state_dict, "final_conv.weight", ndim=4)
    nf = init[0]
    depth = 0
    while f"downs.{depth}.3.weight" in state_dict:
        depth += 1
    if depth == 0:
        raise CheckpointError(
            "not a ConditionalUNet state dict: no 'downs.0.3.weight' (downsampling) key"
        )
    ch_mult = []
    for i in range(depth):
        width = _shape(state_dict, f"downs.{i}.3.weight", ndim=4)[0]
        if width % nf:
            raise CheckpointError(
                f"downs.{i}.3.weight has {width} channels, not a multiple of nf={nf}"
            )
        ch_mult.append(width // nf)
    use_degra = "text_mlp.0.weight" in state_dict
    use_image = "mid_attn.fn.fn.proj_in.weight" in state_dict
    context_dim = None
    if use_degra:
        context_dim = _shape(state_dict, "text_mlp.0.weight", ndim=2)[1]
    elif use_image:
        to_k = "mid_attn.fn.fn.transformer_blocks.0.attn2.to_k.weight"
        context_dim = _shape(state_dict, to_k, ndim=2)[1]
    return {
        "in_nc": init[1] // 2,
        "out_nc": final[0],
        "nf": nf,
        "ch_mult": ch_mult,
        "context_dim": context_dim,
        "use_degra_context": use_degra,
        "use_image_context": use_image,
    }


def _shape(state_dict: Mapping[str, Tensor], key: str, ndim: int) -> list[int]:
    """Shape of ``state_dict[key]``, or a CheckpointError saying why the dict is not a U-Net."""
    if key not in state_dict:
        hint = ""
        if any(k.startswith("module.") for k in state_dict):
            hint = " (keys carry a 'module.' prefix; strip it first)"
        sample = ", ".join(sorted(state_dict)[:3]) or "none"
        raise CheckpointError(
            f"not a ConditionalUNet state dict: missing {key!r}{hint}; its keys start {sample}"
        )
    shape = list(state_dict[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(
            f"not a ConditionalUNet state dict: {key!r} has shape {shape}, expected {ndim} dims"
        )
    return shape
