"""Backbones via timm behind one interface: ``forward(images) -> (pooled [B, C], tokens [B, T, C])``.

Conventions (docs/algorithm.md §1.1, §2):

- Swin (multi-stage): tokens = last-stage map after the final LayerNorm (eps 1e-6), pooled = their mean.
  Any input size runs (96-px local crops), and every block computes the official EsViT block there: a map
  that the window does not divide is padded *first*, then cyclically shifted, with the shift mask built on the
  padded map (timm's own block shifts first, then pads: a different function wherever a shifted block needs
  padding, e.g. every 96-px crop). See ``docs/swin.md``.
- ViT / DeiT: pooled = [CLS] after the final norm, tokens = the patch tokens (``dynamic_img_size=True``).
- ResNet-50: tokens = the layer4 map flattened (no norm), pooled = its mean.

The EsViT variants are registered with timm (``esvit_swin_tiny_w7``, ..., ``esvit_swin_nano``), so
``timm.create_model(name, num_classes=0)`` builds the same network a checkpoint export loads into.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, window_partition, window_reverse

from esvit.archs import ARCHS, SWIN as _SWIN

__all__ = ["Backbone", "build_backbone", "ARCHS", "arch_family"]

_TIMM_KW = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


@lru_cache(maxsize=64)
def _shift_mask(hp: int, wp: int, window: tuple[int, int], shift: tuple[int, int], device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """[windows, N, N] attention mask of a shifted block on the *padded* map (hp, wp): 0 inside one region of
    the shifted map, -100 across regions (the official mask, regions sliced at -window and -shift)."""
    img = torch.zeros(1, hp, wp, 1, device=device, dtype=dtype)
    n = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            img[:, h[0] : h[1], w[0] : w[1], :] = n
            n += 1
    ids = window_partition(img, window).view(-1, window[0] * window[1])
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class EsvitSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the official EsViT attention order: pad -> shift -> masked window attention ->
    reverse shift -> crop. Window and shift are those fixed at construction for the design size (a stage
    whose design map fits in one window gets window = map, no shift), as in the official code. Parameters and
    buffers are timm's, so state dicts are interchangeable with ``SwinTransformer``."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, c = x.shape
        wh, ww = self.window_size
        pad_h, pad_w = (wh - h % wh) % wh, (ww - w % ww) % ww
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        shifted = any(self.shift_size)
        mask = None
        if shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
            mask = _shift_mask(hp, wp, self.window_size, self.shift_size, x.device, x.dtype)
        windows = self.attn(window_partition(x, self.window_size).view(-1, self.window_area, c), mask=mask)
        x = window_reverse(windows.view(-1, wh, ww, c), self.window_size, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :h, :w, :].contiguous() if pad_h or pad_w else x


def _make_swin(name: str, pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    if pretrained:
        raise ValueError(f"{name}: no hub weights here; pass checkpoint_path= to timm.create_model instead")
    for k in _TIMM_KW:
        kwargs.pop(k, None)
    embed, depths, heads, window, size = _SWIN[name]
    args = dict(
        img_size=size, patch_size=4, embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
        mlp_ratio=4.0, qkv_bias=True, strict_img_size=False, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=0, drop_path_rate=0.0,
    )  # fmt: skip
    args.update(kwargs)
    model = SwinTransformer(**args)
    for stage in model.layers:
        for block in stage.blocks:
            block.__class__ = EsvitSwinBlock  # same parameters and buffers, the official forward
    return model


for _name in _SWIN:
    # timm's registry keys models by function name, so each gets a named function.
    _fn = partial(_make_swin, _name)
    _fn.__name__ = _name
    _fn.__module__ = __name__
    _fn.__doc__ = f"EsViT Swin {_name}: LayerNorm eps 1e-6, the official block at any input size (local crops)."
    globals()[_name] = register_model(_fn)

def arch_family(arch: str) -> str:
    return ARCHS[arch][1]


class Backbone(nn.Module):
    """A timm model plus the EsViT feature conventions.

    Attributes:
        net: the timm model (its ``state_dict`` is what an export writes).
        family: ``swin``, ``vit`` or ``resnet``.
        num_features: channels C of the pooled feature and of each token.
    """

    def __init__(self, arch: str, drop_path_rate: float = 0.0):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
        timm_name, self.family, kw = ARCHS[arch]
        self.arch = arch
        if self.family == "resnet":
            kw = {**kw, "drop_path_rate": drop_path_rate} if drop_path_rate else kw
        else:
            kw = {**kw, "drop_path_rate": drop_path_rate}
        self.net = timm.create_model(timm_name, pretrained=False, num_classes=0, **kw)
        self.num_features = self.net.num_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(pooled [B, C], tokens [B, T, C])``."""
        f = self.net.forward_features(x)
        if self.family == "swin":
            tokens = f.flatten(1, 2)  # NHWC after the final norm
            return tokens.mean(1), tokens
        if self.family == "vit":
            n = self.net.num_prefix_tokens
            return f[:, 0], f[:, n:]
        tokens = f.flatten(2).transpose(1, 2)  # resnet: layer4 map, no norm
        return tokens.mean(1), tokens

    def last_blocks(self, x: torch.Tensor, n: int = 4) -> torch.Tensor:
        """The ImageNet linear-probe feature (docs/algorithm.md §4): the outputs of the last ``n`` blocks concatenated.

        Swin: each block's output average-pooled (the final LayerNorm applied to last-stage blocks only);
        ViT: the [CLS] token of each of the last ``n`` blocks after the final norm; ResNet: the pooled feature.
        """
        if self.family == "swin":
            net = self.net
            feats = []
            h = net.patch_embed(x)
            n_stages = len(net.layers)
            for i, stage in enumerate(net.layers):
                h = stage.downsample(h)
                for blk in stage.blocks:
                    h = blk(h)
                    feats.append((i, h))
            out = [(net.norm(f) if i == n_stages - 1 else f).flatten(1, 2).mean(1) for i, f in feats[-n:]]
            return torch.cat(out, dim=-1)
        if self.family == "vit":
            inter = self.net.forward_intermediates(
                x, indices=n, norm=True, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
            )
            return torch.cat([prefix[:, 0] for _, prefix in inter], dim=-1)
        return self.forward(x)[0]

    def pooled_and_last_blocks(self, x: torch.Tensor, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Both evaluation features from one pass: the last block's chunk of ``last_blocks`` is the pooled
        feature (Swin: final-norm average; ViT: final-norm [CLS]; ResNet: the pooled feature itself)."""
        blocks = self.last_blocks(x, n)
        return blocks[:, -self.num_features :], blocks

    def last_blocks_dim(self, n: int = 4) -> int:
        with torch.no_grad():
            return self.last_blocks(torch.zeros(1, 3, 64, 64), n).shape[-1]


def build_backbone(arch: str, drop_path_rate: float = 0.0) -> Backbone:
    return Backbone(arch, drop_path_rate)
