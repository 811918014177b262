"""Decoding stored images to 8-bit RGB, the one way every reader does it.

PIL's ``convert("RGB")`` clips high-bit-depth grey images (16-bit PNG, mode ``I;16`` / ``I``) to 0..255, so a
16-bit scan with 576 grey levels comes out as 4 near-white levels. Here such images are *scaled* to 8 bits
(value / 257, i.e. 65535 -> 255), as image tools do; float images (mode ``F``) are scaled by their maximum.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["to_rgb", "decode_rgb"]

_HIGH_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB; 16-bit and 32-bit grey are scaled (not clipped) to 0..255."""
    if img.mode in _HIGH_BIT or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = float(arr.max()) if arr.size and arr.max() > 0 else 1.0
            arr = arr / top * 255.0
        else:
            arr = arr / 257.0  # 0..65535 -> 0..255 (32-bit "I" images hold 16-bit PNG data in Pillow)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes -> 8-bit RGB PIL image."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_rgb(img)
