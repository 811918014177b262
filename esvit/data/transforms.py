"""Multi-crop augmentation (docs/algorithm.md §1.2, DINO's ``DataAugmentationDINO``) and the evaluation transform.

2 global crops (RandomResizedCrop scale (0.4, 1), bicubic) and N local crops (scale (0.05, 0.4)), possibly of
several sizes; hflip p=0.5; ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8; grayscale p=0.2; global 1: blur p=1;
global 2: blur p=0.1 + solarize p=0.2; local: blur p=0.5; ImageNet mean/std. Crops are returned in the order
the loss expects: the two globals, then the locals grouped by size (largest first).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

__all__ = ["MultiCropAugmentation", "eval_transform", "IMAGENET_MEAN", "IMAGENET_STD", "GaussianBlur", "Solarization"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GaussianBlur:
    """PIL Gaussian blur with probability ``p`` and a radius drawn from U(radius_min, radius_max)."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    """PIL solarize (threshold 128) with probability ``p``."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class MultiCropAugmentation:
    """PIL image -> list of normalised crop tensors (2 global + sum(local_number) local).

    Args:
        global_size, global_scale: the two global crops.
        local_number, local_size: counts and sizes of local crops (lists of equal length; several sizes allowed).
        local_scale: scale range of local crops.
    """

    def __init__(
        self,
        global_size: int = 224,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_number: Sequence[int] = (8,),
        local_size: Sequence[int] = (96,),
        local_scale: Sequence[float] = (0.05, 0.4),
    ):
        if len(local_number) != len(local_size):
            raise ValueError(
                f"local_number {list(local_number)} and local_size {list(local_size)} must have equal lengths"
            )
        flip_color = T.Compose(
            [
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
            ]
        )
        normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        bicubic = T.InterpolationMode.BICUBIC
        rrc = lambda size, scale: T.RandomResizedCrop(size, scale=tuple(scale), interpolation=bicubic)  # noqa: E731
        self.global1 = T.Compose([rrc(global_size, global_scale), flip_color, GaussianBlur(1.0), normalize])
        self.global2 = T.Compose(
            [rrc(global_size, global_scale), flip_color, GaussianBlur(0.1), Solarization(0.2), normalize]
        )
        order = sorted(zip(local_size, local_number), key=lambda p: -p[0])
        self.locals = [
            (T.Compose([rrc(size, local_scale), flip_color, GaussianBlur(0.5), normalize]), n) for size, n in order
        ]
        self.n_crops = 2 + sum(local_number)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = [self.global1(img), self.global2(img)]
        for transform, n in self.locals:
            crops.extend(transform(img) for _ in range(n))
        return crops

    def finish(self, batch: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """A collated batch -> the model's input on ``device`` (here: already normalised floats)."""
        return [c.to(device, non_blocking=True) for c in batch]


def eval_transform(size: int = 224, resize: int | None = None) -> T.Compose:
    """Resize (bicubic) to ``resize`` (default size * 256/224) + center crop ``size`` + normalise."""
    resize = resize or int(round(size * 256 / 224))
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
