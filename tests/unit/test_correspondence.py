"""The correspondence diagnostic against networks whose answer is known: an oracle that reads each region's
position in view A from the pixels (every region matched: 100 %), a network blind to content (every region
matched to the first: the share of partners that are region 0), and the geometry of the partners by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from esvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from esvit.eval.correspondence import correct_partner, correspondence_accuracy, draw_correspondence, view_pair

SIZE, GRID = 32, 4


def _ramp(size: int = SIZE) -> Image.Image:
    """Red = x, green = y of each pixel of view A (blue: a constant): a crop keeps A's coordinates in its pixels."""
    x = (np.arange(size) + 0.5) / size
    rgb = np.stack([np.tile(x, (size, 1)), np.tile(x[:, None], (1, size)), np.full((size, size), 0.5)], -1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


class Oracle(torch.nn.Module):
    """Tokens = one-hot of the cell of A that holds each region's mean (x, y) as read from the ramp's colours."""

    def forward(self, x):
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        xy = F.adaptive_avg_pool2d((x * std + mean)[:, :2], GRID)  # [N, 2, g, g] in A's unit coordinates
        cell = (xy * GRID).floor().clamp(0, GRID - 1).long()
        idx = (cell[:, 1] * GRID + cell[:, 0]).flatten(1)  # row = y, col = x
        tokens = F.one_hot(idx, GRID * GRID).float()
        return tokens.mean(1), tokens


class Blind(torch.nn.Module):
    def forward(self, x):
        tokens = torch.ones(x.shape[0], GRID * GRID, 8)
        return tokens.mean(1), tokens


def test_partners_by_hand():
    assert correct_partner((0.0, 0.0, 32.0), 32, 4).tolist() == list(range(16))  # B = A: each region its own
    # B = the top-left quarter: B's region centres at 2, 6, 10, 14 px of A -> A's columns / rows 0, 0, 1, 1
    assert correct_partner((0.0, 0.0, 16.0), 32, 4).view(4, 4).tolist() == [[0, 0, 1, 1]] * 2 + [[4, 4, 5, 5]] * 2
    # B = the bottom-right 20 px: centres at 14.5, 19.5, 24.5, 29.5 -> 1, 2, 3, 3
    assert correct_partner((12.0, 12.0, 20.0), 32, 4).view(4, 4)[0].tolist() == [5, 6, 7, 7]


def test_views_are_reproducible_and_the_crop_is_inside_a():
    a1, b1, box1 = view_pair(_ramp(), SIZE, seed=3)
    a2, b2, box2 = view_pair(_ramp(), SIZE, seed=3)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and box1 == box2
    x0, y0, side = box1
    assert 0 <= x0 and 0 <= y0 and x0 + side <= SIZE + 1e-9 and y0 + side <= SIZE + 1e-9
    assert 0.4 * SIZE**2 - 1e-6 <= side**2 <= SIZE**2 + 1e-6
    assert not torch.equal(view_pair(_ramp(), SIZE, seed=4)[1], b1)


def test_an_oracle_matches_every_region_and_a_blind_network_scores_its_share_of_region_0():
    images = [_ramp()] * 40
    oracle = Oracle()
    res = correspondence_accuracy(oracle, oracle, images, SIZE, jitter=False)
    assert res["regions_per_view"] == 16 and res["pairs"] == 40 and res["chance"] == 6.25
    assert res["accuracy"] >= 97.0  # a region centred within a pixel of a cell border may round to its neighbour
    blind = Blind()
    expected = np.mean(
        [
            (correct_partner(view_pair(im, SIZE, seed=i)[2], SIZE, GRID) == 0).float().mean().item()
            for i, im in enumerate(images)
        ]
    )
    assert correspondence_accuracy(blind, blind, images, SIZE)["accuracy"] == pytest.approx(100 * expected)


def test_the_figure_is_a_png(tmp_path):
    oracle = Oracle()
    path = draw_correspondence(oracle, oracle, _ramp(), SIZE, tmp_path / "c.png")
    assert Image.open(path).format == "PNG" and Image.open(path).size[0] > 200
