"""EsViT CvT: the four-stage windowed Convolutional vision Transformer (Wu et al., 2021) as EsViT trains it (the
official ``cvt_v4`` network, config ``s1``: the ``cvt_tiny`` of the paper's Table 4), its registered variants,
and its feature conventions (``CvtFeatures``).

Each stage embeds its input with an overlapping strided convolution and a LayerNorm, then stacks pre-norm blocks
on the [B, C, H, W] map: window attention whose queries, keys and values come from one depth-wise 3 x 3
convolution, BatchNorm and a point-wise projection (the map zero-padded to a multiple of the window *before*
that projection, so padded positions take part as keys and values, as in the official code), scaled by the
stage width (not the head width) as the official code does; then an MLP of 1 x 1 convolutions with QuickGELU.
LayerNorm eps 1e-5. The released config uses neither shifted windows nor relative-position biases, so neither is
built here. The view feature is the mean of the last-stage tokens after the final LayerNorm; the region tokens
are those tokens (7 x 7 at 224 px, 3 x 3 at 96 px). The network has BatchNorm layers (SyncBatchNorm in multi-GPU
training, as the official code converts them).

See ``docs/vil_cvt.md``; the tests compare this network with the official one's outputs
(``tests/fixtures/official/cvt_outputs.pt``). Parameter names follow timm's conventions;
``checkpoint_filter_fn`` maps the official layout (``stage{i}.1.layers.{j}.0.fn.qkv``) onto them.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import register_model

from esvit.models.features import Features

__all__ = ["ConvolutionalViT", "CvtFeatures", "checkpoint_filter_fn"]

_TIMM_KW = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation of the official CvT."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map (computed in float32, as the official one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        y = F.layer_norm(x.permute(0, 2, 3, 1).float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype).permute(0, 3, 1, 2)


class ConvProjection(nn.Module):
    """Depth-wise convolution (no bias), BatchNorm, point-wise projection: the queries, keys and values."""

    def __init__(self, dim: int, out_dim: int, kernel: int, padding: int, bias: bool):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel, padding=padding, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.pw = nn.Conv2d(dim, out_dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.bn(self.dw(x)))


class ConvWindowAttention(nn.Module):
    """Window attention over convolutional projections (a map smaller than the window: one window of its size)."""

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool, kernel: int, padding: int):
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.scale = dim**-0.5  # the official scale: the stage width, not the head width
        self.qkv = ConvProjection(dim, 3 * dim, kernel, padding, qkv_bias)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        win = min(self.window, h, w)
        pad_b, pad_r = (win - h % win) % win, (win - w % win) % win
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        sx, sy, heads = hp // win, wp // win, self.num_heads

        def windows(t: torch.Tensor) -> torch.Tensor:  # b (heads d) hp wp -> (b sx sy) heads (win win) d
            t = t.view(b, heads, c // heads, sx, win, sy, win)
            return t.permute(0, 3, 5, 1, 4, 6, 2).reshape(b * sx * sy, heads, win * win, c // heads)

        q, k, v = (windows(t) for t in self.qkv(x).chunk(3, dim=1))
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).view(b, sx, sy, heads, win, win, c // heads)
        out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        if pad_b or pad_r:
            out = out[:, :, :h, :w].contiguous()
        return self.proj(out)


class CvtMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(dim, hidden, 1), QuickGELU(), nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CvtBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        qkv_bias: bool,
        kernel: int,
        padding: int,
        drop_path: float,
    ):
        super().__init__()
        self.norm1 = ChannelNorm(dim, eps=1e-5)
        self.attn = ConvWindowAttention(dim, num_heads, window, qkv_bias, kernel, padding)
        self.norm2 = ChannelNorm(dim, eps=1e-5)
        self.mlp = CvtMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvEmbed(nn.Module):
    """Overlapping strided convolution, then LayerNorm over the channels."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel, stride=stride, padding=padding)
        self.norm = ChannelNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class CvtStage(nn.Module):
    def __init__(self, embed: ConvEmbed, blocks: list[CvtBlock]):
        super().__init__()
        self.embed, self.blocks = embed, nn.ModuleList(blocks)


class ConvolutionalViT(nn.Module):
    """The official ``cvt_v4`` CvT (no shift, no relative position, QuickGELU, LayerNorm eps 1e-5).

    Args:
        embed_dims / depths / num_heads: per stage.
        patch_sizes / patch_strides / patch_paddings: the stages' embedding convolutions.
        window: the attention window (7).
        num_classes: classifier outputs (0: none; ``forward`` returns the pooled feature).
        drop_path_rate: stochastic depth, linear over all blocks.
    """

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (64, 192, 384, 768),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (1, 3, 6, 12),
        patch_sizes: tuple[int, ...] = (7, 3, 3, 3),
        patch_strides: tuple[int, ...] = (4, 2, 2, 2),
        patch_paddings: tuple[int, ...] = (2, 1, 1, 1),
        window: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        kernel_qkv: int = 3,
        padding_qkv: int = 1,
        in_chans: int = 3,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__()
        kwargs.pop("img_size", None)  # any input size
        if kwargs:
            raise TypeError(f"ConvolutionalViT: unexpected arguments {sorted(kwargs)}")
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, dim_in, i = [], in_chans, 0
        for s, dim in enumerate(embed_dims):
            embed = ConvEmbed(dim_in, dim, patch_sizes[s], patch_strides[s], patch_paddings[s])
            blocks = []
            for _ in range(depths[s]):
                blocks.append(CvtBlock(dim, num_heads[s], window, mlp_ratio, qkv_bias, kernel_qkv, padding_qkv, dpr[i]))
                i += 1
            stages.append(CvtStage(embed, blocks))
            dim_in = dim
        self.stages = nn.ModuleList(stages)
        self.num_features = dim_in
        self.norm = nn.LayerNorm(dim_in, eps=1e-5)
        self.head = nn.Linear(dim_in, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_blocks(self, x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Every block's output as ``(stage index, map [B, C, H, W])``."""
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage.embed(x)
            for blk in stage.blocks:
                x = blk(x)
                outs.append((i, x))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens after the final LayerNorm, [B, H * W, C]."""
        return self.norm(self.forward_blocks(x)[-1][1].flatten(2).transpose(1, 2))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_RENAMES = (
    (r"^stage(\d+)\.0\.", r"stages.\1.embed."),
    (r"^stage(\d+)\.1\.layers\.(\d+)\.0\.norm\.", r"stages.\1.blocks.\2.norm1."),
    (r"^stage(\d+)\.1\.layers\.(\d+)\.0\.fn\.proj_out\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"^stage(\d+)\.1\.layers\.(\d+)\.0\.fn\.", r"stages.\1.blocks.\2.attn."),
    (r"^stage(\d+)\.1\.layers\.(\d+)\.1\.norm\.", r"stages.\1.blocks.\2.norm2."),
    (r"^stage(\d+)\.1\.layers\.(\d+)\.1\.fn\.net\.0\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^stage(\d+)\.1\.layers\.(\d+)\.1\.fn\.net\.2\.", r"stages.\1.blocks.\2.mlp.fc2."),
)


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The official CvT layout (``stage{i}.0`` = embedding, ``stage{i}.1.layers.{j}`` = [attention, MLP]) -> this
    model's keys."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            key, hit = re.subn(pattern, repl, key)
            if hit:
                break
        out[key] = value
    return out


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> ConvolutionalViT:
    if pretrained:
        raise ValueError(f"{variant}: no hub weights here; pass checkpoint_path= to timm.create_model instead")
    for k in _TIMM_KW:
        kwargs.pop(k, None)
    return ConvolutionalViT(**kwargs)


@register_model
def esvit_cvt_tiny(pretrained: bool = False, **kwargs: Any) -> ConvolutionalViT:
    """CvT-T as EsViT trains it (``cvt_v4/s1``: 2-2-6-2 blocks, widths 64-192-384-768, heads 1-3-6-12,
    window 7; 29 M params)."""
    return _create("esvit_cvt_tiny", pretrained, **kwargs)


@register_model
def esvit_cvt_test(pretrained: bool = False, **kwargs: Any) -> ConvolutionalViT:
    """4 channels wide (2-2-2-2 blocks, widths 4-8-16-32, heads 1-1-2-2): the shape of the official-network
    fixtures."""
    model_args = dict(embed_dims=(4, 8, 16, 32), depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
    return _create("esvit_cvt_test", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_cvt_nano(pretrained: bool = False, **kwargs: Any) -> ConvolutionalViT:
    """A CPU-sized CvT for demos and tests (1-1-2-1 blocks, widths 32-64-128-256, window 4)."""
    model_args = dict(embed_dims=(32, 64, 128, 256), depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window=4)
    return _create("esvit_cvt_nano", pretrained, **dict(model_args, **kwargs))


class CvtFeatures(Features):
    """CvT: tokens = the last-stage map after the final LayerNorm, pooled = their mean. Linear probe: each of the
    last ``n`` blocks' outputs average-pooled (the final LayerNorm on last-stage blocks only), concatenated.
    BatchNorm inside the projections: SyncBatchNorm in multi-GPU training."""

    uses_batch_norm = True

    def pooled_and_tokens(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = net.forward_features(x)
        return tokens.mean(1), tokens

    def last_blocks(self, net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
        blocks = net.forward_blocks(x)
        last = len(net.stages) - 1
        out = []
        for i, f in blocks[-n:]:
            f = f.flatten(2).transpose(1, 2)
            out.append((net.norm(f) if i == last else f).mean(1))
        return torch.cat(out, dim=-1)

    def filter_state_dict(self, state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state, net)
