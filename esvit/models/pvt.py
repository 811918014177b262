"""PvT v1 (Wang et al., "Pyramid Vision Transformer", ICCV 2021): the network, its registered variants, and its
feature conventions (``PvtFeatures``).

timm has only PVT-v2 (``timm.models.pvt_v2``), a different network (``docs/pvt.md``), so v1 is written here, in
timm's style, from the paper's equations: four stages, each a non-overlapping patch embedding (a convolution with
kernel = stride, then LayerNorm), an absolute position embedding, and pre-norm blocks of spatial-reduction
attention (keys and values from the map shrunk by a ``sr x sr`` convolution with stride ``sr``, then LayerNorm)
and an MLP; a class token joins the last stage, and a final LayerNorm closes the network. The [CLS] token after
the final norm is what v1 classifies.

Module names are those of the official v1 classification code (``patch_embed1.proj``, ``pos_embed1``,
``block1.0.attn.sr``, ``cls_token``, ``norm``), so an official state dict loads unchanged. Numerically it
computes the official forward: LayerNorm eps 1e-6 in the blocks and the final norm, PyTorch's default 1e-5 in
the patch embeddings and the spatial reduction (as the official code builds them); at an input size other than
the design size (224 px) each stage's position embedding is resized bilinearly (``align_corners=False``) to the
stage's map, the class token's entry kept as it is, so any input from 32 px (one last-stage token) works, such
as 96-px local crops.

Each variant is one ``@register_model`` function (``esvit_pvt_tiny``, ``esvit_pvt_test``), so
``timm.create_model(name, num_classes=0)`` builds the same network a checkpoint export loads into. The names
users write drop the ``esvit_`` prefix (``esvit/archs.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import register_model

from esvit.models.features import Features

__all__ = ["PvtFeatures", "PyramidVisionTransformerV1"]

_TIMM_KW = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
_NORM = partial(nn.LayerNorm, eps=1e-6)  # v1's norm_layer: the blocks' norms and the final norm


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from the map reduced ``sr_ratio`` times per side (a
    convolution with kernel = stride = ``sr_ratio``, then LayerNorm); ``sr_ratio`` 1 is plain attention.

    Args:
        dim: channels.
        num_heads: heads (``dim`` divisible by them).
        qkv_bias: biases in the query and key/value projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        sr_ratio: the reduction per side of the key/value map.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # eps 1e-5, as in the official code

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Args:
            x: [B, N, C] tokens of an ``hw`` map (N = H * W; no prefix token where ``sr_ratio`` > 1).
            hw: the map's (H, W).

        Returns:
            [B, N, C].
        """
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).view(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            kv_in = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2))
        else:
            kv_in = x
        k, v = self.kv(kv_in).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (GELU MLP).

    Args:
        dim: channels.
        num_heads: attention heads.
        mlp_ratio: the MLP's hidden width over ``dim``.
        sr_ratio: the attention's key/value reduction per side.
        qkv_bias: biases in the query and key/value projections.
        proj_drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        norm_layer: the two norms (LayerNorm eps 1e-6 in v1).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = SpatialReductionAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """[B, N, C] tokens of an ``hw`` map -> [B, N, C]."""
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: a convolution with kernel = stride = ``patch_size``, then LayerNorm.

    Args:
        patch_size: the patch side (4 for stage 1, 2 for the others).
        in_chans: input channels.
        embed_dim: output channels.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)  # eps 1e-5, as in the official code

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[B, C_in, H, W] -> ([B, H' * W', C], (H', W')) with H' = H // patch_size."""
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class PyramidVisionTransformerV1(nn.Module):
    """PvT v1 (see the module docstring), with timm's model interface (``num_features``, ``forward_features``,
    ``forward_head``, ``reset_classifier``).

    Args:
        img_size: the design input side: each stage's position embedding covers its map at this size.
        patch_size: stage 1's patch side (later stages: 2).
        in_chans: input channels.
        num_classes: classifier outputs (0: none, ``forward`` returns the pooled feature).
        embed_dims: channels per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP width ratio per stage.
        sr_ratios: spatial reduction per stage (the last stage, which holds the class token, must have 1).
        depths: blocks per stage.
        qkv_bias: biases in the query and key/value projections.
        drop_rate: dropout after the position embedding, in the blocks and before the classifier.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly over all blocks from 0 to this rate.
        norm_layer: the blocks' and the final norm (v1: LayerNorm eps 1e-6).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        depths: Sequence[int] = (3, 4, 6, 3),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = _NORM,
    ):
        super().__init__()
        self.num_stages = len(depths)
        if sr_ratios[-1] != 1:
            raise ValueError("the last stage holds the class token: its sr_ratio must be 1")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dims[-1]
        self.num_prefix_tokens = 1
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # no tensors: builds on "meta"
        self.grids: list[tuple[int, int]] = []  # each stage's map at img_size (its position embedding's grid)
        side, done = img_size, 0
        for i in range(self.num_stages):
            patch = patch_size if i == 0 else 2
            side //= patch
            self.grids.append((side, side))
            extra = 1 if i == self.num_stages - 1 else 0  # the class token's entry
            setattr(
                self, f"patch_embed{i + 1}", PatchEmbed(patch, in_chans if i == 0 else embed_dims[i - 1], embed_dims[i])
            )
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, side * side + extra, embed_dims[i])))
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
            blocks = [
                Block(
                    embed_dims[i],
                    num_heads[i],
                    mlp_ratios[i],
                    sr_ratios[i],
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[done + j],
                    norm_layer=norm_layer,
                )
                for j in range(depths[i])
            ]
            setattr(self, f"block{i + 1}", nn.ModuleList(blocks))
            done += depths[i]
        self.norm = norm_layer(embed_dims[-1])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """As v1: position embeddings, class token and linear weights truncated-normal (std 0.02), linear biases
        0, LayerNorms 1 / 0, convolutions PyTorch's default."""
        for i in range(self.num_stages):
            trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The parameters v1 trains without weight decay."""
        return {"cls_token"}

    def get_classifier(self) -> nn.Module:
        """The classifier (``nn.Identity`` without one)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier with ``num_classes`` outputs (0: none); ``global_pool`` is ignored (always [CLS])."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _pos_embed(self, i: int, hw: tuple[int, int]) -> torch.Tensor:
        """Stage ``i``'s position embedding for an ``hw`` map: as stored at the design grid, else resized
        bilinearly (the class token's entry of the last stage unchanged)."""
        pos = getattr(self, f"pos_embed{i + 1}")
        if hw == self.grids[i]:
            return pos
        last = i == self.num_stages - 1
        grid = pos[:, 1:] if last else pos
        gh, gw = self.grids[i]
        grid = grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=hw, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        return torch.cat([pos[:, :1], grid], dim=1) if last else grid

    def forward_blocks(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Every block's output in order, as ``(stage index, [B, N, C] tokens)``; the last stage's tokens start
        with the class token. No final norm."""
        b = x.shape[0]
        for i in range(self.num_stages):
            x, hw = getattr(self, f"patch_embed{i + 1}")(x)
            if i == self.num_stages - 1:
                x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
            x = getattr(self, f"pos_drop{i + 1}")(x + self._pos_embed(i, hw))
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, hw)
                yield i, x
            if i < self.num_stages - 1:
                x = x.transpose(1, 2).reshape(b, -1, *hw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1 + T, C]: the class token and the T = (H / 32) * (W / 32) last-stage tokens,
        after the final norm."""
        ((_, last),) = deque(self.forward_blocks(x), maxlen=1)  # keeps no earlier block's output
        return self.norm(last)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``forward_features``' output -> the [CLS] feature (``pre_logits``) or the logits."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> the logits ([B, num_features] pooled feature without a classifier)."""
        return self.forward_head(self.forward_features(x))


def _create_pvt(variant: str, pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV1:
    """The shared builder.

    Args:
        variant: the registered name (for messages).
        pretrained: refused: there are no hub weights (pass ``checkpoint_path=`` to ``timm.create_model``).
        **kwargs: the variant's architecture, then the caller's ``PyramidVisionTransformerV1`` arguments.

    Returns:
        The network, randomly initialised.
    """
    if pretrained:
        raise ValueError(f"{variant}: no hub weights here; pass checkpoint_path= to timm.create_model instead")
    for k in _TIMM_KW:
        kwargs.pop(k, None)
    return PyramidVisionTransformerV1(**kwargs)


_V1 = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1))


@register_model
def esvit_pvt_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV1:
    """The paper's "PvT-T" of Table 4 (24 M parameters): v1's dims 64-128-320-512, heads 1-2-5-8, MLP ratios
    8-8-4-4, reductions 8-4-2-1 at depths 3-4-6-3, which v1 calls PVT-Small.

    Table 4 says its nets are 2-2-6-2, but at these dims 2-2-6-2 has 19.8 M parameters (19.3 M without the
    classifier), v1's own tiny (2-2-2-2) 13.2 M (12.7 M); only 3-4-6-3 has the 24 M the table gives (24.5 M,
    24.0 M without the classifier). See ``docs/pvt.md``.
    """
    model_args = dict(_V1, depths=(3, 4, 6, 3), img_size=224)
    return _create_pvt("esvit_pvt_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_pvt_test(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV1:
    """4 channels wide (as timm's ``test_*`` models): the shape of the official-network fixture in ``tests/``."""
    model_args = dict(_V1, embed_dims=(4, 8, 16, 32), num_heads=(1, 1, 2, 2), depths=(2, 2, 2, 2), img_size=224)
    return _create_pvt("esvit_pvt_test", pretrained, **dict(model_args, **kwargs))


class PvtFeatures(Features):
    """PvT v1: tokens = the last-stage patch tokens after the final norm ([B, 49, C] at 224 px, [B, 9, C] at
    96 px), pooled = the [CLS] token after the final norm (what v1 classifies). Linear probe: each of the last
    ``n`` blocks' outputs reduced like the pooled feature, concatenated: a last-stage block's [CLS] after the final
    norm, an earlier block's token mean (no norm)."""

    def pooled_and_tokens(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = net.forward_features(x)
        return f[:, 0], f[:, net.num_prefix_tokens :]

    def last_blocks(self, net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
        last = net.num_stages - 1
        feats = list(net.forward_blocks(x))[-n:]
        return torch.cat([net.norm(f)[:, 0] if i == last else f.mean(1) for i, f in feats], dim=-1)

    def filter_state_dict(self, state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
        """The official v1 layout is this one: the state unchanged, but for a classifier the net does not have."""
        has_head = any(True for _ in net.head.parameters())
        return {k: v for k, v in state.items() if has_head or not k.startswith("head.")}
