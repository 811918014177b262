"""The fast multi-crop augmentation: the reference's crops and colour ops, drawn the same way, computed cheaper.

:class:`esvit.data.transforms.MultiCropAugmentation` is the straightforward reference (DINO's
``DataAugmentationDINO``: full PIL decode, then a torchvision PIL pipeline per crop, float tensors out).
:class:`FastMultiCrop` draws every random parameter from the same distributions — the crop boxes with
torchvision's own ``RandomResizedCrop.get_params`` — and then:

1. decodes the JPEG at a reduced scale (PIL ``draft``: DCT scaling) when every crop box would still be at
   least its output size, and otherwise in full;
2. crops (a view) and resizes with torch's uint8 antialiased bicubic (PIL's kernel, vectorised);
3. runs the photometric ops on uint8 arrays with OpenCV (lookup tables for brightness, contrast and
   solarisation, a blend with the luma for saturation, an HSV round trip for hue, a true Gaussian blur) —
   or leaves them, with their parameters, to :func:`photometric` which does them in batches with torch on
   the training device (``data.photometric_on: device``);
4. hands over uint8 crops (4x less to copy between processes and to the GPU); :func:`normalize` turns them
   into the reference's float tensors on the device.

Parameters per crop (one row of :data:`PARAMS`): flip, jitter on/off, the order of the four jitter ops,
brightness / contrast / saturation / hue factors, grayscale, blur sigma (0: none), solarise.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from esvit.data.images import to_rgb
from esvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["FastMultiCrop", "PARAMS", "draw_params", "photometric", "normalize", "decode_scale", "apply_ops_uint8"]

PARAMS = (
    "flip",
    "jitter",
    "order0",
    "order1",
    "order2",
    "order3",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "gray",
    "blur_sigma",
    "solarize",
)
_P = {name: i for i, name in enumerate(PARAMS)}
RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue (ColorJitter(0.4, 0.4, 0.2, 0.1))


def draw_params(blur_p: float, solarize_p: float) -> list[float]:
    """One crop's photometric parameters, from the reference's distributions (torchvision ``ColorJitter``,
    ``RandomApply`` p=0.8, ``RandomGrayscale`` p=0.2, DINO's ``GaussianBlur`` and ``Solarization``)."""
    row = [0.0] * len(PARAMS)
    row[_P["flip"]] = float(torch.rand(1).item() < 0.5)
    if torch.rand(1).item() < 0.8:
        row[_P["jitter"]] = 1.0
        order = torch.randperm(4).tolist()
        for k in range(4):
            row[_P[f"order{k}"]] = float(order[k])
        b, c, s, h = JITTER
        row[_P["brightness"]] = float(torch.empty(1).uniform_(max(0.0, 1 - b), 1 + b))
        row[_P["contrast"]] = float(torch.empty(1).uniform_(max(0.0, 1 - c), 1 + c))
        row[_P["saturation"]] = float(torch.empty(1).uniform_(max(0.0, 1 - s), 1 + s))
        row[_P["hue"]] = float(torch.empty(1).uniform_(-h, h))
    row[_P["gray"]] = float(torch.rand(1).item() < 0.2)
    if random.random() <= blur_p:  # DINO's GaussianBlur: skip when random() > p
        row[_P["blur_sigma"]] = random.uniform(0.1, 2.0)
    row[_P["solarize"]] = float(random.random() < solarize_p)
    return row


def decode_scale(boxes: Sequence[tuple[int, int, int, int]], outputs: Sequence[int]) -> int:
    """The largest JPEG DCT reduction (1, 2, 4 or 8) that keeps every crop box (top, left, h, w) at least as
    large as its output side, so no crop is upsampled where the reference's is not."""
    best = 1
    for r in (2, 4, 8):
        if all(min(h, w) / r >= out for (_, _, h, w), out in zip(boxes, outputs)):
            best = r
    return best


class FastMultiCrop:
    """JPEG bytes -> ``(crops, params)``: ``2 + sum(local_number)`` uint8 tensors [3, S, S] in the loss's order
    (the two globals, then the locals by size, largest first) and a float tensor [crops, len(PARAMS)].

    Args:
        global_size, global_scale, local_number, local_size, local_scale: as the reference.
        photometric_on: "loader" (OpenCV here, in the loader worker) or "device" (left to :func:`photometric`
            in the training process, e.g. on the GPU).
        draft: decode JPEGs at a reduced scale when the crops allow it.
    """

    takes_bytes = True  # the training pipeline hands over the undecoded image

    def __init__(
        self,
        global_size: int = 224,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_number: Sequence[int] = (8,),
        local_size: Sequence[int] = (96,),
        local_scale: Sequence[float] = (0.05, 0.4),
        photometric_on: str = "loader",
        draft: bool = True,
    ):
        if len(local_number) != len(local_size):
            raise ValueError(
                f"local_number {list(local_number)} and local_size {list(local_size)} must have equal lengths"
            )
        if photometric_on not in ("loader", "device"):
            raise ValueError(f"photometric_on must be 'loader' or 'device' (got {photometric_on!r})")
        # (output side, scale range, blur p, solarize p) per crop, in the loss's order
        self.crops = [(global_size, tuple(global_scale), 1.0, 0.0), (global_size, tuple(global_scale), 0.1, 0.2)]
        for size, n in sorted(zip(local_size, local_number), key=lambda p: -p[0]):
            self.crops += [(size, tuple(local_scale), 0.5, 0.0)] * n
        self.photometric_on, self.draft = photometric_on, draft

    def __call__(self, data: bytes | Image.Image) -> tuple[list[torch.Tensor], torch.Tensor]:
        img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
        # every random draw first, in the original image's coordinates (what the reference samples in)
        boxes = [T.RandomResizedCrop.get_params(img, list(scale), list(RATIO)) for _, scale, _, _ in self.crops]
        params = [draw_params(blur_p, sol_p) for _, _, blur_p, sol_p in self.crops]
        full_w, full_h = img.size
        if self.draft and img.format == "JPEG":
            r = decode_scale(boxes, [c[0] for c in self.crops])
            if r > 1:
                img.draft("RGB", (math.ceil(full_w / r), math.ceil(full_h / r)))
        img = to_rgb(img)
        sx, sy = img.size[0] / full_w, img.size[1] / full_h
        whole = torch.from_numpy(np.array(img)).permute(2, 0, 1).unsqueeze(0)  # [1, 3, H, W], channels-last memory
        out = []
        for (size, _, _, _), (top, left, h, w), row in zip(self.crops, boxes, params):
            t0, l0 = round(top * sy), round(left * sx)
            region = whole[..., t0 : t0 + max(1, round(h * sy)), l0 : l0 + max(1, round(w * sx))]
            # bicubic with antialiasing on uint8: the kernel of PIL's resize (mean difference < 0.05 levels)
            crop = F.interpolate(region, size=(size, size), mode="bicubic", antialias=True)[0].permute(1, 2, 0).numpy()
            if row[_P["flip"]]:
                crop = crop[:, ::-1]
            crop = np.ascontiguousarray(crop)
            if self.photometric_on == "loader":
                crop = apply_ops_uint8(crop, row)
            out.append(torch.from_numpy(crop).permute(2, 0, 1))
        return out, torch.tensor(params, dtype=torch.float32)

    def finish(self, batch: tuple[list[torch.Tensor], torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """A collated batch ``(crops, params)`` -> the model's normalised float crops on ``device``; with
        ``photometric_on="device"`` the colour ops run here, in one batch per crop size."""
        crops, params = batch
        crops = [c.to(device, non_blocking=True) for c in crops]
        if self.photometric_on == "loader":
            return [normalize(c) for c in crops]
        out: list[torch.Tensor | None] = [None] * len(crops)
        for size in sorted({c.shape[-1] for c in crops}):
            idx = [i for i, c in enumerate(crops) if c.shape[-1] == size]
            x = photometric(torch.cat([crops[i] for i in idx]), torch.cat([params[:, i] for i in idx]))
            for i, part in zip(idx, x.split(crops[idx[0]].shape[0])):
                out[i] = part
        return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- uint8, one crop (CPU)


def _luma(x: np.ndarray) -> np.ndarray:
    """Luma with PIL's convert("L") weights (299, 587, 114) / 1000; OpenCV's fixed point rounds differently from
    PIL's in rare pixels (by 1)."""
    return cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)


def _blend_lut(f: float, base: float) -> np.ndarray:
    """PIL's ``Image.blend(base, img, f)`` per value (float32, truncated, clipped) as a lookup table."""
    v = np.arange(256, dtype=np.float32)
    return np.clip(np.floor(np.float32(base) + np.float32(f) * (v - np.float32(base))), 0, 255).astype(np.uint8)


def apply_ops_uint8(x: np.ndarray, row: Sequence[float]) -> np.ndarray:
    """The photometric ops of one flipped crop (HxWx3 uint8, C-contiguous), as the reference's PIL ops do them:
    brightness and contrast bit-exact (PIL's float32 blend as a lookup table), saturation and grayscale within
    one level in rare pixels (OpenCV's luma rounding), hue through OpenCV's HSV (0..255 hue,
    as PIL's; within the conversions' own rounding of PIL's), grayscale exact, solarise exact, blur a true
    Gaussian of the same sigma (PIL approximates it with box passes)."""
    if row[_P["jitter"]]:
        for k in range(4):
            op = int(row[_P[f"order{k}"]])
            if op == 0:  # brightness: blend with black
                x = cv2.LUT(x, _blend_lut(row[_P["brightness"]], 0.0))
            elif op == 1:  # contrast: blend with the mean luma, rounded (ImageEnhance.Contrast)
                x = cv2.LUT(x, _blend_lut(row[_P["contrast"]], float(int(_luma(x).mean() + 0.5))))
            elif op == 2:  # saturation: blend with the luma image (ImageEnhance.Color)
                f = row[_P["saturation"]]  # (-0.5: PIL truncates where OpenCV rounds)
                x = cv2.addWeighted(x, f, cv2.cvtColor(_luma(x), cv2.COLOR_GRAY2RGB), 1.0 - f, -0.5)
            else:  # hue: shift H (0..255, as PIL's HSV) with wrap-around, as torchvision's np.uint8(h * 255)
                hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV_FULL)
                hsv[..., 0] += np.uint8(int(row[_P["hue"]] * 255) % 256)
                x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    if row[_P["gray"]]:
        x = cv2.cvtColor(_luma(x), cv2.COLOR_GRAY2RGB)
    if row[_P["blur_sigma"]] > 0:
        x = cv2.GaussianBlur(x, (0, 0), row[_P["blur_sigma"]], borderType=cv2.BORDER_REPLICATE)
    if row[_P["solarize"]]:
        x = cv2.LUT(x, _SOLARIZE)
    return x


_SOLARIZE = np.where(np.arange(256) >= 128, 255 - np.arange(256), np.arange(256)).astype(np.uint8)


# ------------------------------------------------------------------------- batches, any device (torch)


def normalize(crops: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float, ImageNet mean/std (the reference's ToTensor + Normalize)."""
    return _standardize(crops.float().div_(255))


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Float [B, 3, H, W] in [0, 1] -> ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    cr = maxc - minc
    s = cr / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    crd = torch.where(cr == 0, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(cr == 0, torch.zeros_like(h), h)
    h = (h / 6.0 + 1.0 + shift.view(-1, 1, 1)) % 1.0
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    v = maxc
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    pick = lambda *c: torch.stack(c, 1).gather(1, i.unsqueeze(1))  # noqa: E731
    return torch.cat([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Per-sample Gaussian blur (sigma 0: unchanged), separable, replicated borders; ``sigma_max`` (known on the
    host) sets the kernel radius."""
    n, c, h, w = x.shape
    r = max(1, math.ceil(3 * sigma_max))
    ax = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    s = sigma.clamp(min=1e-6).view(-1, 1)
    k = torch.exp(-(ax.view(1, -1) ** 2) / (2 * s**2))
    k = torch.where(sigma.view(-1, 1) > 0, k / k.sum(1, keepdim=True), (ax == 0).to(x.dtype).expand_as(k))
    k = k.repeat_interleave(c, 0)
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def photometric(crops: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The photometric ops of :func:`apply_ops_uint8` on a batch (uint8 [B, 3, H, W], flips already done; params
    [B, len(PARAMS)] on the CPU), in float on the crops' device, then normalised: the GPU-side augmentation.

    Which samples each op touches is decided on the CPU from ``params`` and sent as index lists, so the device
    never waits for the host (no ``nonzero`` / ``any`` / ``item`` on device tensors)."""
    x = crops.float().div_(255)
    dev = x.device
    p_cpu = params.cpu()
    p = p_cpu.to(dev, non_blocking=True)

    def where(mask: torch.Tensor) -> torch.Tensor | None:  # CPU mask -> device index list, or None when empty
        idx = torch.nonzero(mask).flatten()
        return idx.to(dev, non_blocking=True) if idx.numel() else None

    jit = p_cpu[:, _P["jitter"]] > 0
    for k in range(4):
        order = p_cpu[:, _P[f"order{k}"]]
        for op in range(4):
            idx = where(jit & (order == op))
            if idx is None:
                continue
            sub = x.index_select(0, idx)
            if op == 0:
                f = p[idx, _P["brightness"]].view(-1, 1, 1, 1)
                sub = (sub * f).clamp_(0, 1)
            elif op == 1:
                f = p[idx, _P["contrast"]].view(-1, 1, 1, 1)
                m = (_gray(sub).mean(dim=(1, 2, 3), keepdim=True) * 255).add_(0.5).floor_().div_(255)
                sub = (m + f * (sub - m)).clamp_(0, 1)
            elif op == 2:
                f = p[idx, _P["saturation"]].view(-1, 1, 1, 1)
                g = _gray(sub)
                sub = (g + f * (sub - g)).clamp_(0, 1)
            else:
                sub = _hue(sub, torch.trunc(p[idx, _P["hue"]] * 255).remainder(256) / 255)  # as np.uint8(h * 255)
            x.index_copy_(0, idx, sub)
    idx = where(p_cpu[:, _P["gray"]] > 0)
    if idx is not None:
        x.index_copy_(0, idx, _gray(x.index_select(0, idx)).expand(-1, 3, -1, -1))
    sigma = p_cpu[:, _P["blur_sigma"]]
    idx = where(sigma > 0)
    if idx is not None:
        x.index_copy_(0, idx, _blur(x.index_select(0, idx), p[idx, _P["blur_sigma"]], float(sigma.max())))
    sol = (p[:, _P["solarize"]] > 0).view(-1, 1, 1, 1)
    return _standardize(torch.where(sol & (x >= 128 / 255), 1.0 - x, x))
