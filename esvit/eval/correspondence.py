"""Region correspondence (``esvit viz``): the paper's matched-region figure and its correspondence accuracy.

For an image, view A is the whole image at the training resolution (the teacher's view) and view B a random
square crop of A covering 40-100 % of its area (the scale range of the global crops in training), resized to
the same resolution and colour-jittered (the student's view). Each region of B covers a known part of A, so its
geometrically correct partner is the region of A holding the centre of the B region. Each student region of B
is matched to the teacher region of A with the highest cosine similarity of the backbone's last-stage features:
the matching the region loss uses (docs/algorithm.md §1.4). Correspondence accuracy is the fraction of B's
regions matched to their correct partner (chance: 1 / regions). The paper: 95 % DINO DeiT-S, 66 % multi-stage
view-only, 91 % with the region loss.

A horizontal flip is left out of view B on purpose: on a left-right symmetric object (most of Fashion-MNIST)
a flipped region and its mirror twin are the same pixels, so no network can tell the correct partner.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T

from esvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "view_pair",
    "match_regions",
    "correct_partner",
    "correspondence_accuracy",
    "draw_correspondence",
    "CROP_SCALE",
    "run_correspondence",
]

CROP_SCALE = (0.4, 1.0)  # area of view B within view A: the global crops' RandomResizedCrop scale


def view_pair(image, size: int, seed: int, scale: tuple[float, float] = CROP_SCALE, jitter: bool = True):
    """(view A, view B, box): A = the image resized and centre-cropped to ``size``; B = the square
    ``box = (x0, y0, side)`` of A (pixels of A, area fraction drawn from ``scale``) resized to ``size`` and
    colour-jittered (unless ``jitter`` is false); both normalised tensors [3, size, size]. Deterministic in
    ``seed``."""
    a = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])(image.convert("RGB"))
    rng = random.Random(seed)
    side = math.sqrt(rng.uniform(*scale)) * size
    x0, y0 = rng.uniform(0, size - side), rng.uniform(0, size - side)
    b = a.resize((size, size), resample=3, box=(x0, y0, x0 + side, y0 + side))  # bicubic
    jitter_seed = rng.randrange(2**31)
    if jitter:
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(jitter_seed)
        b = T.ColorJitter(0.4, 0.4, 0.2, 0.1)(b)
        torch.random.set_rng_state(torch_state)
    norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return norm(a), norm(b), (x0, y0, side)


@torch.no_grad()
def match_regions(student, teacher, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, int]:
    """For each region of B (student), the index of the most similar region of A (teacher); and the grid side."""
    fa = F.normalize(teacher(a)[1], dim=-1)  # [N, T, C]
    fb = F.normalize(student(b)[1], dim=-1)
    side = int(round(fa.shape[1] ** 0.5))
    return torch.einsum("nsc,ntc->nst", fb, fa).argmax(-1), side


def correct_partner(box: tuple[float, float, float], size: int, side: int) -> torch.Tensor:
    """Index in A of the region holding the centre of each region of B (row-major ``side`` x ``side`` grids)."""
    x0, y0, w = box
    centre = (torch.arange(side, dtype=torch.float64) + 0.5) / side * w  # B's region centres in A's pixels
    col = ((x0 + centre) / (size / side)).floor().clamp(0, side - 1).long()
    row = ((y0 + centre) / (size / side)).floor().clamp(0, side - 1).long()
    return (row[:, None] * side + col[None, :]).flatten()


def correspondence_accuracy(student, teacher, images, size: int, batch: int = 64, jitter: bool = True) -> dict:
    """Fraction (%) of B's regions matched to their geometric partner in A, over all images (PIL); image i's
    views are drawn with seed i."""
    hits = total = 0
    side = 0
    for i in range(0, len(images), batch):
        pairs = [view_pair(im, size, seed=i + j, jitter=jitter) for j, im in enumerate(images[i : i + batch])]
        match, side = match_regions(
            student, teacher, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        )
        truth = torch.stack([correct_partner(p[2], size, side) for p in pairs])
        hits += int((match == truth).sum())
        total += match.numel()
    return {
        "accuracy": 100.0 * hits / max(total, 1),
        "pairs": len(images),
        "regions_per_view": side * side,
        "chance": 100.0 / max(side * side, 1),
        "image_size": size,
        "protocol": f"view B = a square crop of {CROP_SCALE[0]:g}-{CROP_SCALE[1]:g} of view A's area, resized and "
        "colour-jittered; "
        "partner = the region of A holding the B region's centre",
    }


def draw_correspondence(student, teacher, image, size: int, path: str | Path, seed: int = 0) -> Path:
    """Both views side by side, B's crop outlined on A, a line from each region of B to its match in A (green:
    the correct partner, red: another region)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from esvit.atomic import atomic_path

    a, b, box = view_pair(image, size, seed)
    match, side = match_regions(student, teacher, a[None], b[None])
    good = correct_partner(box, size, side)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    gap = max(size // 8, 1)
    pic = torch.cat([a * std + mean, torch.ones(3, size, gap), b * std + mean], dim=2).clamp(0, 1)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.imshow(pic.permute(1, 2, 0).numpy(), extent=(-0.5, 2 * size + gap - 0.5, size - 0.5, -0.5))
    x0, y0, w = box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, w, fill=False, edgecolor="gold", lw=1.2, ls="--"))
    cell = size / side
    offset = size + gap
    for s, t in enumerate(match[0].tolist()):
        (rb, cb), (ra, ca) = divmod(s, side), divmod(t, side)
        ok = t == int(good[s])
        ax.plot(
            [offset + (cb + 0.5) * cell - 0.5, (ca + 0.5) * cell - 0.5],
            [(rb + 0.5) * cell - 0.5, (ra + 0.5) * cell - 0.5],
            color="limegreen" if ok else "red",
            lw=1.0,
            alpha=0.8,
            marker="o",
            ms=2,
        )
    acc = 100.0 * float((match[0] == good).float().mean())
    ax.set_title(
        f"view B (student, right: the dashed crop of A, jittered) -> view A (teacher, left): "
        f"{acc:.0f} % of {side} x {side} regions correct",
        fontsize=8,
    )
    ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def run_correspondence(
    checkpoint: str | Path | None, arch: str | None, shards: str | Path, n: int, size: int, out: str | Path
) -> dict:
    """``esvit viz``: the correspondence accuracy over the first ``n`` images of ``shards`` and the figure of the
    first, written as ``out/correspondence.json`` and ``out/correspondence.png``; returns the JSON record.

    Args:
        checkpoint: one of this project's checkpoints (its student matched against its teacher; an imported
            checkpoint keeps only the teacher, matched against itself), or None for a randomly initialised
            ``arch`` (the baseline).
        size: the views' resolution (the training resolution of the global crops).
    """
    from itertools import islice

    from esvit.atomic import atomic_write_json
    from esvit.data.pipeline import eval_pipeline, make_loader, open_shards
    from esvit.errors import CheckpointError
    from esvit.eval.features import check_input_size, load_backbone

    teacher, meta = load_backbone(checkpoint, arch)
    check_input_size(teacher.arch, size, "--image-size")
    student, has_student = teacher, False
    if checkpoint:
        try:  # imported (released) checkpoints keep only the teacher
            student, has_student = load_backbone(checkpoint, arch, key="student")[0], True
        except CheckpointError:
            pass
    pipe = eval_pipeline(open_shards(shards), lambda im: im, 1, collate=lambda batch: batch)
    images = [sample[1] for batch in islice(make_loader(pipe, 0), n) for sample in batch]
    res = correspondence_accuracy(student, teacher, images, size)
    res.update(
        checkpoint=checkpoint, arch=meta["arch"], student="student" if has_student else "teacher (no student stored)"
    )
    out = Path(out)
    draw_correspondence(student, teacher, images[0], size, out / "correspondence.png")
    atomic_write_json(out / "correspondence.json", res)
    return res
