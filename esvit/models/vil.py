"""EsViT ViL: the Vision Longformer (Zhang et al., 2021) as EsViT trains it (the ``vil_2262`` network of the
paper's Table 4), its registered variants, and its feature conventions (``VilFeatures``).

A ViL is four stages; each starts with a patch embedding (a strided convolution, LayerNorm, then ``g`` global
tokens put in front of the map's tokens) and stacks pre-norm blocks of attention and MLP. Stages 1-2 use 2-D
sliding-chunk attention: the map (zero-padded to a multiple of the window ``w``) is cut into ``w x w`` chunks and
every token of a chunk attends to the global tokens and to all tokens of its own and the eight neighbouring
chunks (positions outside the map masked), with a relative-position bias over the ``3w x 3w`` neighbourhood;
global tokens attend to everything. Stages 3-4 use full attention with a relative-position bias sized for the
design input (224 px), resampled bicubically for other inputs exactly as the official code does. The last stage
has no global token, so the view feature is the mean of its tokens after the final LayerNorm and the region
tokens are all of them (7 x 7 at 224 px, 3 x 3 at 96 px).

During training the official ``MODE 1`` lets each sliding-chunk layer attend to its own chunk plus *one* randomly
drawn neighbour per forward (``sample_neighbour=True``, the default, as the official README's ViL command sets);
evaluation always uses all nine chunks. See ``docs/vil_cvt.md``; the tests compare this network with the official
one's outputs (``tests/fixtures/official/vil_outputs.pt``).

Parameter names follow timm's conventions (``stages.{i}.embed``, ``stages.{i}.blocks.{j}.attn``);
``checkpoint_filter_fn`` maps the official layout (``layer{i}.{k}``) onto them.
"""

from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import register_model

from esvit.models.features import Features

__all__ = ["VisionLongformer", "VilFeatures", "checkpoint_filter_fn", "parse_vil_arch"]

_TIMM_KW = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
_OFFSETS = tuple((dm, dn) for dm in (-1, 0, 1) for dn in (-1, 0, 1))  # the nine chunks, official order


def parse_vil_arch(arch: str) -> list[dict[str, int]]:
    """The official ViL architecture string (``l1,h3,d96,n2,s1,g1,p4,f7,a0_l2,...``) -> one dict per stage:
    ``h`` heads, ``d`` width, ``n`` blocks, ``s`` 1 = sliding-chunk / 0 = full attention, ``g`` global tokens,
    ``p`` patch size, ``f`` window, ``a`` 1 = absolute position embedding (0: relative-position bias)."""
    stages = []
    for part in arch.split("_"):
        cfg = {"l": 1, "h": 3, "d": 192, "n": 1, "s": 1, "g": 1, "p": 2, "f": 7, "a": 1, "r": 0}
        for attr in part.split(","):
            cfg[attr[0]] = int(attr[1:])
        if cfg["a"] or cfg["r"]:
            raise ValueError(f"ViL stage {part!r}: only a0 (relative-position bias) and no pooled keys are supported")
        stages.append(cfg)
    return stages


def _window_index(wx: int, wy: int) -> torch.Tensor:
    """[wx*wy, wx*wy] index into a (2wx-1)(2wy-1) relative-position table (row-major tokens), on the CPU."""
    ys, xs = torch.meshgrid(torch.arange(wx, device="cpu"), torch.arange(wy, device="cpu"), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wx - 1) * (2 * wy - 1) + (rel[1] + wy - 1)


def _chunk_index(w: int, offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """[w*w, len(offsets)*w*w] index into a (4w-1)^2 table: query (qx, qy) of a chunk vs key (kx, ky) of the
    neighbouring chunk at ``offset`` (chunk-major, then row-major within the chunk), on the CPU."""
    cpu = torch.arange(w, device="cpu")
    qy, qx = torch.meshgrid(cpu, cpu, indexing="ij")
    q = torch.stack([qy.flatten(), qx.flatten()])  # 2, w^2
    cols = []
    for dm, dn in offsets:
        ky, kx = q[0] + dm * w, q[1] + dn * w
        rel_y, rel_x = q[0][:, None] - ky[None, :], q[1][:, None] - kx[None, :]
        cols.append((rel_y + 2 * w - 1) * (4 * w - 1) + (rel_x + 2 * w - 1))
    return torch.cat(cols, dim=1)


def _chunks(t: torch.Tensor, w: int) -> torch.Tensor:
    """[b, mx*w, my*w, c] -> [b, mx, my, w*w, c] (channels last: each chunk's tokens row-major)."""
    b, hp, wp, c = t.shape
    return t.view(b, hp // w, w, wp // w, w, c).transpose(2, 3).reshape(b, hp // w, wp // w, w * w, c)


def _neighbours(t: torch.Tensor, w: int, offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """[b, hp, wp, c] (hp, wp multiples of w) -> [b, mx, my, len(offsets)*w*w, c]: for each chunk, the tokens of
    the chunks at ``offsets`` (zeros beyond the map)."""
    hp, wp = t.shape[1:3]
    padded = F.pad(t, (0, 0, w, w, w, w))
    parts = [
        _chunks(padded[:, (1 + dm) * w : (1 + dm) * w + hp, (1 + dn) * w : (1 + dn) * w + wp], w) for dm, dn in offsets
    ]
    return torch.cat(parts, dim=3)


def _add_bias_tables(module: nn.Module, table_size: int, num_heads: int, num_global: int) -> None:
    """The official bias parameters of a ViL attention: the local relative-position table and, with global
    tokens, the global -> local / local -> global (``g2l``: [2, heads, g]) and global -> global biases."""
    module.local_relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
    trunc_normal_(module.local_relative_position_bias_table, std=0.02)
    if num_global:
        module.g2l_relative_position_bias = nn.Parameter(torch.zeros(2, num_heads, num_global))
        module.g2g_relative_position_bias = nn.Parameter(torch.zeros(num_heads, num_global, num_global))
        trunc_normal_(module.g2l_relative_position_bias, std=0.02)
        trunc_normal_(module.g2g_relative_position_bias, std=0.02)


def _global_rows(module: nn.Module, n_local: int) -> torch.Tensor:
    """[heads, g, g + n_local]: the bias of the global tokens' queries (global keys first, then local)."""
    to_local = module.g2l_relative_position_bias[0][:, :, None].expand(-1, -1, n_local)
    return torch.cat([module.g2g_relative_position_bias, to_local], dim=-1)


class SlidingChunkAttention(nn.Module):
    """2-D sliding-chunk attention with global tokens (the official ``Long2DSCSelfAttention`` with shared global
    weights, zero padding, no dilation): local tokens attend to the global tokens and to the chunks around
    theirs; global tokens attend to all tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        num_global: int,
        qkv_bias: bool = True,
        sample_neighbour: bool = True,
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window, self.num_global, self.sample_neighbour = window, num_global, sample_neighbour
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        _add_bias_tables(self, (4 * window - 1) ** 2, num_heads, num_global)
        # [w^2, 9 w^2]: each chunk's queries vs the keys of the nine chunks (moves with the module's device)
        self.register_buffer("relative_position_index", _chunk_index(window, _OFFSETS), persistent=False)

    def _chunks_used(self) -> tuple[int, ...]:
        """Which of the nine chunks (``_OFFSETS``) the local tokens attend to in this forward."""
        if self.training and self.sample_neighbour:  # own chunk + one random neighbour (official MODE > 0)
            pick = int(torch.randint(8, (1,)))
            return (4, pick if pick < 4 else pick + 1)
        return tuple(range(9))

    def forward(self, x: torch.Tensor, nx: int, ny: int) -> torch.Tensor:
        b, n, c = x.shape
        g, h, m, w = self.num_global, self.num_heads, self.head_dim, self.window
        used = self._chunks_used()
        offsets = tuple(_OFFSETS[i] for i in used)
        q = self.scale * self.query(x[:, g:]).reshape(b, nx, ny, h, m)
        k, v = self.kv(x).reshape(b, n, 2, h, m).unbind(2)  # b N h m each
        pad_x, pad_y = (w - nx % w) % w, (w - ny % w) % w

        def image(t: torch.Tensor) -> torch.Tensor:  # b nx ny h m -> (b h) hp wp m, zero-padded
            t = t.permute(0, 3, 1, 2, 4).reshape(b * h, nx, ny, m)
            return F.pad(t, (0, 0, 0, pad_y, 0, pad_x))

        q_img = _chunks(image(q), w)  # (bh) mx my w2 m
        keys = _neighbours(image(k[:, g:].reshape(b, nx, ny, h, m)), w, offsets)  # (bh) mx my K m
        values = _neighbours(image(v[:, g:].reshape(b, nx, ny, h, m)), w, offsets)
        mx, my = q_img.shape[1:3]
        idx = self.relative_position_index
        if len(used) < 9:
            idx = idx.view(w * w, 9, w * w)[:, list(used)]
        bias = self.local_relative_position_bias_table[idx.reshape(-1)]
        bias = bias.view(w * w, -1, h).permute(2, 0, 1)  # h w2 K
        valid = F.pad(torch.ones(1, nx, ny, 1, device=x.device, dtype=torch.bool), (0, 0, 0, pad_y, 0, pad_x))
        valid = _neighbours(valid, w, offsets)[0, :, :, :, 0]  # mx my K (beyond the map, padding: False)
        mask = torch.zeros(valid.shape, device=x.device, dtype=bias.dtype).masked_fill_(~valid, float("-inf"))
        bias = bias[:, None, None] + mask[None, :, :, None, :]  # h mx my w2 K
        if g:  # the global tokens' keys and values in front of every chunk's, with the local->global bias
            k_glo = k[:, :g].transpose(1, 2).reshape(b * h, 1, 1, g, m).expand(-1, mx, my, -1, -1)
            v_glo = v[:, :g].transpose(1, 2).reshape(b * h, 1, 1, g, m).expand(-1, mx, my, -1, -1)
            keys, values = torch.cat([k_glo, keys], dim=3), torch.cat([v_glo, values], dim=3)
            to_glo = self.g2l_relative_position_bias[1][:, None, None, None, :].expand(-1, mx, my, w * w, -1)
            bias = torch.cat([to_glo, bias], dim=-1)
        scores = (q_img @ keys.transpose(-2, -1)).view(b, h, mx, my, w * w, -1) + bias
        out = scores.softmax(dim=-1).view(b * h, mx, my, w * w, -1) @ values  # (bh) mx my w2 m
        out = out.view(b, h, mx, my, w, w, m).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, mx * w, my * w, c)
        out = self.proj(out[:, :nx, :ny].reshape(b, nx * ny, c))
        if not g:
            return out
        q_glo = self.scale * self.query(x[:, :g]).reshape(b, g, h, m).transpose(1, 2)  # b h g m
        glo = (q_glo @ k.permute(0, 2, 3, 1) + _global_rows(self, nx * ny)[None]).softmax(dim=-1)  # b h g N
        out_glo = self.proj((glo @ v.transpose(1, 2)).transpose(1, 2).reshape(b, g, c))
        return torch.cat([out_glo, out], dim=1)


class FullAttention(nn.Module):
    """Full attention with the official relative-position bias: a (2wx-1)(2wy-1) table for the design map
    (wx x wy), its [N, N] bias resampled bicubically to another map size (as the official code does), and
    learned global <-> local biases."""

    def __init__(self, dim: int, num_heads: int, design_map: int, num_global: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.design_map, self.num_global = design_map, num_global
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        _add_bias_tables(self, (2 * design_map - 1) ** 2, num_heads, num_global)
        self.register_buffer("relative_position_index", _window_index(design_map, design_map), persistent=False)

    def _local_bias(self, n_local: int) -> torch.Tensor:
        """[h, n_local, n_local]: the design map's bias, resampled when the map has another size."""
        n0 = self.design_map**2
        bias = self.local_relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n0, n0, -1).permute(2, 0, 1)
        if n_local != n0:
            scale = n_local / n0
            if math.floor(n0 * scale) == n_local:  # the official resampling: the bias as an image, scaled
                bias = F.interpolate(bias[None], scale_factor=scale, mode="bicubic")[0]
            else:  # the scaled size rounds below n_local (the official code fails here): resample to the size
                bias = F.interpolate(bias[None], size=(n_local, n_local), mode="bicubic")[0]
        return bias

    def forward(self, x: torch.Tensor, nx: int, ny: int) -> torch.Tensor:
        b, n, c = x.shape
        h, g = self.num_heads, self.num_global
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        bias = self._local_bias(nx * ny)
        if g:
            glo_rows = _global_rows(self, nx * ny)
            loc_rows = torch.cat([self.g2l_relative_position_bias[1][:, None, :].expand(-1, nx * ny, -1), bias], dim=-1)
            bias = torch.cat([glo_rows, loc_rows], dim=1)
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias[None]).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class VilBlock(nn.Module):
    """Pre-norm attention then MLP, each with its residual (the official ``AttnBlock`` + ``MlpBlock`` pair)."""

    def __init__(self, dim: int, attn: nn.Module, drop_path: float, norm_layer: Any):
        super().__init__()
        self.norm1, self.attn = norm_layer(dim), attn
        self.norm2, self.mlp = norm_layer(dim), Mlp(dim, 4 * dim, act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, nx: int, ny: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), nx, ny))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VilEmbed(nn.Module):
    """Patch embedding: strided convolution, LayerNorm, then the stage's global tokens in front."""

    def __init__(self, in_chans: int, dim: int, patch: int, num_global: int, norm_layer: Any):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = norm_layer(dim)
        self.num_global = num_global
        if num_global:
            self.cls_token = nn.Parameter(torch.zeros(1, num_global, dim))
            trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        nx, ny = x.shape[-2:]
        x = self.norm(x.flatten(2).transpose(1, 2))
        if self.num_global:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x, nx, ny


class VilStage(nn.Module):
    def __init__(self, embed: VilEmbed, blocks: list[VilBlock]):
        super().__init__()
        self.embed, self.blocks = embed, nn.ModuleList(blocks)
        self.num_global = embed.num_global


class VisionLongformer(nn.Module):
    """A multi-stage Vision Longformer (the official ``MsViT`` with relative-position biases, LayerNorm eps 1e-6,
    shared global / local projections).

    Args:
        arch: the official architecture string (``parse_vil_arch``).
        img_size: the design input size: fixes the full-attention stages' bias tables (224 for the released nets).
        num_classes: classifier outputs (0: none; ``forward`` returns the pooled feature).
        drop_path_rate: stochastic depth, linear over all blocks.
        sample_neighbour: training attends to a chunk's own tokens plus one random neighbouring chunk (official
            MODE 1) instead of all nine chunks (MODE 0); evaluation always uses all nine.
    """

    def __init__(
        self,
        arch: str,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        sample_neighbour: bool = True,
        qkv_bias: bool = True,
        **kwargs: Any,
    ):
        super().__init__()
        if kwargs:
            raise TypeError(f"VisionLongformer: unexpected arguments {sorted(kwargs)}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        cfgs = parse_vil_arch(arch)
        dpr = torch.linspace(0, drop_path_rate, sum(c["n"] for c in cfgs), device="cpu").tolist()
        stages, size, dim_in, i = [], img_size, in_chans, 0
        for cfg in cfgs:
            size //= cfg["p"]
            blocks = []
            for _ in range(cfg["n"]):
                if cfg["s"]:
                    attn = SlidingChunkAttention(cfg["d"], cfg["h"], cfg["f"], cfg["g"], qkv_bias, sample_neighbour)
                else:
                    attn = FullAttention(cfg["d"], cfg["h"], size, cfg["g"], qkv_bias)
                blocks.append(VilBlock(cfg["d"], attn, dpr[i], norm_layer))
                i += 1
            stages.append(VilStage(VilEmbed(dim_in, cfg["d"], cfg["p"], cfg["g"], norm_layer), blocks))
            dim_in = cfg["d"]
        self.stages = nn.ModuleList(stages)
        self.num_features = dim_in
        self.num_prefix_tokens = cfgs[-1]["g"]
        self.norm = norm_layer(dim_in)
        self.head = nn.Linear(dim_in, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position", "cls_token"}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_blocks(self, x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Every block's output as ``(stage index, tokens [B, g + N, C])``, global tokens first."""
        outs, nx, ny = [], 0, 0
        for i, stage in enumerate(self.stages):
            if i:  # the previous stage's map, without its global tokens
                x = x[:, self.stages[i - 1].num_global :].transpose(1, 2).reshape(x.shape[0], -1, nx, ny)
            x, nx, ny = stage.embed(x)
            for blk in stage.blocks:
                x = blk(x, nx, ny)
                outs.append((i, x))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens after the final LayerNorm, [B, g + N, C] (ViL-T: g = 0)."""
        return self.norm(self.forward_blocks(x)[-1][1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.num_prefix_tokens else x.mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_STAGE_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(.*)$")
_BLOCK_PART = {"norm.": "norm1.", "attn.": "attn."}
_MLP_PART = {"norm.": "norm2.", "mlp.": "mlp."}


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The official ViL layout (``layer{s}.0`` = patch embedding, then alternating attention / MLP blocks) ->
    this model's keys. Drops the index buffers and the duplicate keys of the shared global projections
    (``query_global`` / ``kv_global`` / ``proj_global`` are the local ones: ``SHARE_W True``)."""
    if not any(k.startswith("layer1.") for k in state):
        return state  # already this layout
    out = {}
    for key, value in state.items():
        if key.endswith("relative_position_index") or re.search(r"\.(query|kv|proj)_global\.", key):
            continue
        match = _STAGE_KEY.match(key)
        if not match:
            out[key] = value
            continue
        stage, pos, rest = int(match[1]) - 1, int(match[2]), match[3]
        if pos == 0:
            rest = rest.replace("norm_embed.", "norm.")
            out[f"stages.{stage}.embed.{rest}"] = value
            continue
        block, table = (pos - 1) // 2, _BLOCK_PART if pos % 2 else _MLP_PART
        head = next((p for p in table if rest.startswith(p)), None)
        if head is None:  # e.g. a shortcut projection: not in these networks
            out[key] = value
            continue
        out[f"stages.{stage}.blocks.{block}.{table[head]}{rest[len(head) :]}"] = value
    return out


def _create(variant: str, arch: str, pretrained: bool = False, **kwargs: Any) -> VisionLongformer:
    if pretrained:
        raise ValueError(f"{variant}: no hub weights here; pass checkpoint_path= to timm.create_model instead")
    for k in _TIMM_KW:
        kwargs.pop(k, None)
    kwargs.setdefault("img_size", 224)
    return VisionLongformer(arch, **kwargs)


VIL_TINY = (
    "l1,h3,d96,n2,s1,g1,p4,f7,a0_l2,h6,d192,n2,s1,g1,p2,f7,a0_"
    "l3,h12,d384,n6,s0,g1,p2,f7,a0_l4,h24,d768,n2,s0,g0,p2,f7,a0"
)
VIL_TEST = (
    "l1,h1,d4,n2,s1,g1,p4,f7,a0_l2,h1,d8,n2,s1,g1,p2,f7,a0_l3,h2,d16,n2,s0,g1,p2,f7,a0_l4,h2,d32,n2,s0,g0,p2,f7,a0"
)
VIL_NANO = (
    "l1,h2,d32,n1,s1,g1,p4,f4,a0_l2,h4,d64,n1,s1,g1,p2,f4,a0_l3,h8,d128,n2,s0,g1,p2,f4,a0_l4,h8,d256,n1,s0,g0,p2,f4,a0"
)


@register_model
def esvit_vil_tiny(pretrained: bool = False, **kwargs: Any) -> VisionLongformer:
    """ViL-T as EsViT trains it (``vil_2262``: 2-2-6-2 blocks, widths 96-192-384-768, window 7; 28 M params)."""
    return _create("esvit_vil_tiny", VIL_TINY, pretrained, **kwargs)


@register_model
def esvit_vil_test(pretrained: bool = False, **kwargs: Any) -> VisionLongformer:
    """4 channels wide (2-2-2-2 blocks, widths 4-8-16-32, window 7): the shape of the official-network fixtures."""
    return _create("esvit_vil_test", VIL_TEST, pretrained, **kwargs)


@register_model
def esvit_vil_nano(pretrained: bool = False, **kwargs: Any) -> VisionLongformer:
    """A CPU-sized ViL for demos and tests: 64-px design input, window 4 (maps 16-8-4-2)."""
    kwargs.setdefault("img_size", 64)
    return _create("esvit_vil_nano", VIL_NANO, pretrained, **kwargs)


class VilFeatures(Features):
    """ViL: tokens = the last stage's tokens after the final LayerNorm (without global tokens), pooled = their
    mean (ViL-T's last stage has no global token; a net with one would use it). Linear probe: the last ``n``
    blocks, each as the official ``forward_return_n_last_blocks`` reduces it (the global token of a stage that has
    one, else the mean of the tokens; the final LayerNorm on last-stage blocks), concatenated."""

    def pooled_and_tokens(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = net.forward_features(x)
        g = net.num_prefix_tokens
        return (f[:, 0], f[:, g:]) if g else (f.mean(1), f)

    def last_blocks(self, net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
        blocks = net.forward_blocks(x)
        last = len(net.stages) - 1
        out = []
        for i, f in blocks[-n:]:
            if i == last:
                f = net.norm(f)
            out.append(f[:, 0] if net.stages[i].num_global else f.mean(1))
        return torch.cat(out, dim=-1)

    def filter_state_dict(self, state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state, net)
