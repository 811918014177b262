"""EsViT Swin: the official EsViT block on timm's ``SwinTransformer``, its registered variants, and its feature
conventions (``SwinFeatures``).

Every block computes the official EsViT block at any input size (96-px local crops): a map that the window does
not divide is padded *first*, then cyclically shifted, with the shift mask built on the padded map (timm's own
block shifts first, then pads: a different function wherever a shifted block needs padding, e.g. every 96-px
crop). See ``docs/swin.md``.

Each variant is one ``@register_model`` function (``esvit_swin_tiny_w7``, ...), so
``timm.create_model(name, num_classes=0)`` builds the same network a checkpoint export loads into. The names
users write drop the ``esvit_`` prefix (``esvit/archs.py``, which lists them without importing torch).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    checkpoint_filter_fn,
    window_partition,
    window_reverse,
)

from esvit.models.features import Features

__all__ = ["EsvitSwinBlock", "SwinFeatures"]

_TIMM_KW = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


@lru_cache(maxsize=64)
def _shift_mask(
    hp: int, wp: int, window: tuple[int, int], shift: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
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


def _create_esvit_swin(variant: str, pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """The shared builder: timm's ``SwinTransformer`` (patch 4, MLP ratio 4, LayerNorm eps 1e-6, no classifier)
    with every block an ``EsvitSwinBlock``.

    Args:
        variant: the registered name (for messages).
        pretrained: refused: there are no hub weights (pass ``checkpoint_path=`` to ``timm.create_model``).
        **kwargs: the variant's ``embed_dim``, ``depths``, ``num_heads``, ``window_size`` and ``img_size`` (the
            design size: windows are clamped for its maps), then the caller's ``SwinTransformer`` arguments.
    """
    if pretrained:
        raise ValueError(f"{variant}: no hub weights here; pass checkpoint_path= to timm.create_model instead")
    for k in _TIMM_KW:
        kwargs.pop(k, None)
    args = dict(
        patch_size=4,
        mlp_ratio=4.0,
        qkv_bias=True,
        strict_img_size=False,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=0,
        drop_path_rate=0.0,
    )
    args.update(kwargs)
    model = SwinTransformer(**args)
    for stage in model.layers:
        for block in stage.blocks:
            block.__class__ = EsvitSwinBlock  # same parameters and buffers, the official forward
    return model


@register_model
def esvit_swin_tiny_w7(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-T, window 7 (the paper's Swin-T/W7)."""
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, img_size=224)
    return _create_esvit_swin("esvit_swin_tiny_w7", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_small_w7(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-S, window 7."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7, img_size=224)
    return _create_esvit_swin("esvit_swin_small_w7", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_base_w7(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-B, window 7."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7, img_size=224)
    return _create_esvit_swin("esvit_swin_base_w7", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_tiny_w14(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-T, window 14."""
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=14, img_size=224)
    return _create_esvit_swin("esvit_swin_tiny_w14", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_small_w14(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-S, window 14."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=14, img_size=224)
    return _create_esvit_swin("esvit_swin_small_w14", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_base_w14(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-B, window 14."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=14, img_size=224)
    return _create_esvit_swin("esvit_swin_base_w14", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_nano(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """A CPU-sized Swin for demos and tests: 64-px global crops (maps 16-8-4-2), window 4."""
    model_args = dict(embed_dim=48, depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24), window_size=4, img_size=64)
    return _create_esvit_swin("esvit_swin_nano", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_pico(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """The smallest four-stage Swin, for tests: 64-px global crops (maps 16-8-4-2), window 4."""
    model_args = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 6), window_size=4, img_size=64)
    return _create_esvit_swin("esvit_swin_pico", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_femto(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """The demo's model: two stages (one merge), so a 32-px crop ends at 4 x 4 region tokens and a 16-px local crop
    at 2 x 2, as 224 / 96 px end at 7 x 7 / 3 x 3 in Swin-T (the region loss needs many tokens)."""
    model_args = dict(embed_dim=48, depths=(1, 1), num_heads=(2, 4), window_size=4, img_size=32)
    return _create_esvit_swin("esvit_swin_femto", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_test_w7(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """4 channels wide (as timm's ``test_*`` models), window 7: the shape of the official-network fixtures."""
    model_args = dict(embed_dim=4, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=7, img_size=224)
    return _create_esvit_swin("esvit_swin_test_w7", pretrained, **dict(model_args, **kwargs))


@register_model
def esvit_swin_test_w14(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """4 channels wide, window 14: the shape of the official-network fixtures."""
    model_args = dict(embed_dim=4, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=14, img_size=224)
    return _create_esvit_swin("esvit_swin_test_w14", pretrained, **dict(model_args, **kwargs))


class SwinFeatures(Features):
    """Swin (multi-stage): tokens = the last-stage map after the final LayerNorm (eps 1e-6), pooled = their mean.
    Linear probe: each of the last ``n`` blocks' outputs average-pooled (the final LayerNorm applied to last-stage
    blocks only), concatenated."""

    def pooled_and_tokens(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = net.forward_features(x).flatten(1, 2)  # NHWC after the final norm
        return tokens.mean(1), tokens

    def last_blocks(self, net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
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

    def filter_state_dict(self, state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
        """The official (Microsoft Swin) layout -> timm's, by timm's own converter (the downsampling at a stage's
        end moves to the next stage's start; non-persistent buffers are dropped)."""
        return checkpoint_filter_fn(state, net)
