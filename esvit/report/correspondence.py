"""Region correspondence (``esvit viz``): the paper's matched-region figure and its correspondence accuracy.

For an image, view A is a centre crop and view B the same crop flipped horizontally (plus colour jitter), so
the geometrically correct partner of region (r, c) of A is region (r, W-1-c) of B. Each student region of A
is matched to the teacher region of B with the highest cosine similarity of the backbone's last-stage
features — the matching the region loss uses (docs/algorithm.md §1.4). Correspondence accuracy is the fraction of
regions matched to their correct partner (the paper: 95 % DINO DeiT-S, 66 % multi-stage view-only, 91 % with
the region loss).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T

from esvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["view_pair", "match_regions", "correspondence_accuracy", "draw_correspondence"]


def view_pair(image, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(view A, view B = A flipped + colour-jittered), normalised tensors [3, size, size]."""
    base = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])(image)
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    jittered = T.ColorJitter(0.4, 0.4, 0.2, 0.1)(base)
    torch.random.set_rng_state(torch_state)
    norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return norm(base), norm(T.functional.hflip(jittered))


@torch.no_grad()
def match_regions(student, teacher, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, int]:
    """For each region of A (student), the index of the most similar region of B (teacher); and the grid side."""
    fa = F.normalize(student(a)[1], dim=-1)  # [N, T, C]
    fb = F.normalize(teacher(b)[1], dim=-1)
    side = int(round(fa.shape[1] ** 0.5))
    return torch.einsum("ntc,nsc->nts", fa, fb).argmax(-1), side


def correct_partner(side: int) -> torch.Tensor:
    """Index in B of the horizontally mirrored region, for each region of A (row-major grid)."""
    r, c = np.divmod(np.arange(side * side), side)
    return torch.from_numpy(r * side + (side - 1 - c))


def correspondence_accuracy(student, teacher, images, size: int, batch: int = 32) -> dict:
    """Fraction (%) of regions matched to their geometric partner, over all images (PIL)."""
    hits = total = 0
    side = 0
    for i in range(0, len(images), batch):
        pairs = [view_pair(im, size, seed=i + j) for j, im in enumerate(images[i : i + batch])]
        a = torch.stack([p[0] for p in pairs])
        b = torch.stack([p[1] for p in pairs])
        match, side = match_regions(student, teacher, a, b)
        hits += int((match == correct_partner(side)).sum())
        total += match.numel()
    return {"accuracy": 100.0 * hits / max(total, 1), "pairs": len(images), "regions_per_view": side * side, "image_size": size}


def draw_correspondence(student, teacher, image, size: int, path: str | Path, seed: int = 0) -> Path:
    """Both views side by side, a line from each region of A to its match in B (green: correct, red: wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from esvit.atomic import atomic_path

    a, b = view_pair(image, size, seed)
    match, side = match_regions(student, teacher, a[None], b[None])
    good = correct_partner(side)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    pic = torch.cat([a * std + mean, torch.ones(3, size, size // 8), b * std + mean], dim=2).clamp(0, 1)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.imshow(pic.permute(1, 2, 0).numpy())
    cell = size / side
    offset = size + size // 8
    for t, s in enumerate(match[0].tolist()):
        (ra, ca), (rb, cb) = divmod(t, side), divmod(s, side)
        ok = s == int(good[t])
        ax.plot([(ca + 0.5) * cell, offset + (cb + 0.5) * cell], [(ra + 0.5) * cell, (rb + 0.5) * cell],
                color="limegreen" if ok else "red", lw=1.0, alpha=0.8, marker="o", ms=2)  # fmt: skip
    acc = 100.0 * float((match[0] == good).float().mean())
    ax.set_title(f"view A (student) -> view B = flipped + jittered A (teacher): {acc:.0f} % of {side * side} regions correct", fontsize=8)
    ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
