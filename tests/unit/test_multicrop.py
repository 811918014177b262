"""The fast multi-crop augmentation draws the reference's crops and colour ops and computes the same pixels.

Independent references: torchvision's RandomResizedCrop run on the same image (box statistics), the
reference's PIL / torchvision ops applied with the same parameters (pixels), the reference transform itself
(grayscale rate), and the distributions written in docs/algorithm.md §1.2 (probabilities, factor ranges).
"""

from __future__ import annotations

import io
import random
from itertools import permutations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from esvit.data.multicrop import PARAMS, FastMultiCrop, apply_ops_uint8, decode_scale, photometric
from esvit.data.transforms import MultiCropAugmentation

P = {name: i for i, name in enumerate(PARAMS)}


def coordinate_image(w: int = 256, h: int = 256) -> Image.Image:
    """R = x, G = y: a crop's pixels tell where in the image it came from."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8))


def photo(size=(320, 240), seed: int = 0) -> Image.Image:
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images().images
    rng = np.random.default_rng(seed)
    a = imgs[seed % 2]
    top, left = rng.integers(0, 100), rng.integers(0, 200)
    return Image.fromarray(a[top : top + 320, left : left + 420]).resize(size, Image.BICUBIC)


def recover_box(crop: np.ndarray, flipped: bool) -> tuple[float, float]:
    """(area fraction of a 256 x 256 image, log aspect ratio) of the box a coordinate-image crop came from."""
    s = crop.shape[0]
    r, g = crop[..., 0].astype(float), crop[..., 1].astype(float)
    if flipped:
        r = r[:, ::-1]
    x0, x1 = r[:, 0].mean(), r[:, -1].mean()
    y0, y1 = g[0, :].mean(), g[-1, :].mean()
    w, h = (x1 - x0) * s / (s - 1), (y1 - y0) * s / (s - 1)
    return w * h / 256**2, float(np.log(w / h))


def test_crop_boxes_have_the_reference_scale_and_ratio_distributions():
    img = coordinate_image()
    fast = FastMultiCrop(64, (0.4, 1.0), [4], [32], (0.05, 0.4), photometric_on="device")
    ref_g = T.RandomResizedCrop(64, scale=(0.4, 1.0), interpolation=T.InterpolationMode.BICUBIC)
    ref_l = T.RandomResizedCrop(32, scale=(0.05, 0.4), interpolation=T.InterpolationMode.BICUBIC)
    torch.manual_seed(0)
    random.seed(0)
    ours = {"global": [], "local": []}
    for _ in range(400):
        crops, params = fast(img)
        for i, c in enumerate(crops):
            ours["global" if i < 2 else "local"].append(
                recover_box(c.permute(1, 2, 0).numpy(), bool(params[i, P["flip"]]))
            )
    theirs = {
        "global": [recover_box(np.asarray(ref_g(img)), False) for _ in range(800)],
        "local": [recover_box(np.asarray(ref_l(img)), False) for _ in range(1600)],
    }
    for kind in ("global", "local"):
        a, b = np.array(ours[kind]), np.array(theirs[kind])
        for j, what in enumerate(("area fraction", "log aspect ratio")):
            p = stats.ks_2samp(a[:, j], b[:, j]).pvalue
            assert p > 0.01, f"{kind} crops: {what} distribution differs from torchvision's (KS p={p:.4f})"
    # and the ranges: global areas in [0.4, 1], local in [0.05, 0.4] (up to the 1-px recovery error)
    assert 0.37 < np.array(ours["global"])[:, 0].min() and np.array(ours["global"])[:, 0].max() < 1.03
    assert 0.04 < np.array(ours["local"])[:, 0].min() and np.array(ours["local"])[:, 0].max() < 0.43


def test_colour_op_probabilities_and_factor_ranges_are_the_references():
    fast = FastMultiCrop(32, (0.4, 1.0), [6], [16], (0.05, 0.4), photometric_on="device")
    img = photo((64, 48))
    torch.manual_seed(1)
    random.seed(1)
    rows = torch.stack([fast(img)[1] for _ in range(1500)])  # [N, 8 crops, params]
    n = rows.shape[0]

    def rate(x, p, what):
        sd = (p * (1 - p) / x.numel()) ** 0.5
        assert abs(x.float().mean().item() - p) < 4 * sd + 1e-9, f"{what}: {x.float().mean().item():.3f} vs {p}"

    rate(rows[..., P["flip"]], 0.5, "flip")
    rate(rows[..., P["jitter"]], 0.8, "colour jitter")
    rate(rows[..., P["gray"]], 0.2, "grayscale")
    rate(rows[:, 0, P["blur_sigma"]] > 0, 1.0, "global 1 blur")
    rate(rows[:, 1, P["blur_sigma"]] > 0, 0.1, "global 2 blur")
    rate(rows[:, 2:, P["blur_sigma"]] > 0, 0.5, "local blur")
    rate(rows[:, 1, P["solarize"]], 0.2, "global 2 solarize")
    assert rows[:, 0, P["solarize"]].sum() == 0 and rows[:, 2:, P["solarize"]].sum() == 0
    jit = rows[rows[..., P["jitter"]] > 0]
    for name, lo, hi in (
        ("brightness", 0.6, 1.4),
        ("contrast", 0.6, 1.4),
        ("saturation", 0.8, 1.2),
        ("hue", -0.1, 0.1),
    ):
        p = stats.kstest(jit[:, P[name]].numpy(), stats.uniform(lo, hi - lo).cdf).pvalue
        assert p > 0.01, f"{name} factor is not U({lo}, {hi}) (KS p={p:.4f})"
    sig = rows[..., P["blur_sigma"]][rows[..., P["blur_sigma"]] > 0].numpy()
    assert stats.kstest(sig, stats.uniform(0.1, 1.9).cdf).pvalue > 0.01
    orders = [tuple(int(v) for v in r[[P[f"order{k}"] for k in range(4)]]) for r in jit]
    counts = [orders.count(o) for o in permutations(range(4))]
    assert stats.chisquare(counts).pvalue > 0.01, "jitter op order is not a uniform permutation"
    assert n * 8 == rows[..., 0].numel()


def reference_ops(crop: np.ndarray, row) -> np.ndarray:
    """The reference's PIL / torchvision ops on one (already flipped) crop, with explicit parameters."""
    img = Image.fromarray(crop)
    if row[P["jitter"]]:
        fns = [
            lambda i: TF.adjust_brightness(i, row[P["brightness"]]),
            lambda i: TF.adjust_contrast(i, row[P["contrast"]]),
            lambda i: TF.adjust_saturation(i, row[P["saturation"]]),
            lambda i: TF.adjust_hue(i, row[P["hue"]]),
        ]
        for k in range(4):
            img = fns[int(row[P[f"order{k}"]])](img)
    if row[P["gray"]]:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if row[P["blur_sigma"]] > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius=row[P["blur_sigma"]]))
    if row[P["solarize"]]:
        img = ImageOps.solarize(img)
    return np.asarray(img)


def random_rows(n: int, seed: int) -> list[list[float]]:
    from esvit.data.multicrop import draw_params

    torch.manual_seed(seed)
    random.seed(seed)
    rows = [draw_params(0.5, 0.3) for _ in range(n)]
    return rows


def test_colour_ops_give_the_reference_pixels():
    crops = [np.asarray(photo((96, 96), seed=s)) for s in range(4)]
    diffs = {}
    for i, row in enumerate(random_rows(60, 2)):
        crop = np.ascontiguousarray(crops[i % 4])
        ours, theirs = apply_ops_uint8(crop.copy(), row).astype(float), reference_ops(crop, row).astype(float)
        key = "blur" if row[P["blur_sigma"]] > 0 else "no blur"
        diffs.setdefault(key, []).append(np.abs(ours - theirs).mean())
    # PIL's blur is three box passes, OpenCV's a true Gaussian: close, not equal; the rest differs by rounding
    assert np.mean(diffs["no blur"]) < 1.0 and max(diffs["no blur"]) < 3.0, diffs["no blur"]
    assert np.mean(diffs["blur"]) < 2.5, diffs["blur"]


def test_batched_device_ops_match_the_loader_ops():
    """The GPU-side path (torch, float, in batches), run on CPU: the same pixels as the OpenCV path."""
    rows = random_rows(24, 3)
    crops = [np.array(photo((64, 64), seed=s)) for s in range(24)]
    ours = torch.stack([torch.from_numpy(apply_ops_uint8(c.copy(), r)).permute(2, 0, 1) for c, r in zip(crops, rows)])
    batch = torch.stack([torch.from_numpy(c).permute(2, 0, 1) for c in crops])
    out = photometric(batch, torch.tensor(rows))
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    pixels = (out * std + mean) * 255
    diff = (pixels - ours.float()).abs().mean(dim=(1, 2, 3))
    assert diff.mean() < 1.5 and diff.max() < 4.0, diff


def test_batched_device_ops_never_read_a_device_tensor_on_the_host():
    """On the meta device any host read (nonzero, any, item, float) raises: the GPU-side colour ops run there,
    so on a GPU they queue kernels without waiting for the device."""
    rows = random_rows(24, 3)
    batch = torch.zeros(24, 3, 32, 32, dtype=torch.uint8, device="meta")
    out = photometric(batch, torch.tensor(rows))
    assert out.device.type == "meta" and out.shape == (24, 3, 32, 32)


@pytest.mark.parametrize("size,scale,image", [(96, (0.4, 1.0), (320, 240)), (32, (0.05, 0.4), (28, 28))])
def test_resize_is_the_references_resized_crop(size, scale, image):
    """Down- and up-sampling (ImageNet-sized and 28-px demo images): torchvision's PIL resized_crop, to a level."""
    img = photo(image)
    fast = FastMultiCrop(size, scale, [0], [16], (0.05, 0.4), photometric_on="device", draft=False)
    torch.manual_seed(4)
    random.seed(4)
    for _ in range(10):
        state = torch.get_rng_state()
        crops, params = fast(img)
        torch.set_rng_state(state)  # the same box again, through the reference's op
        top, left, h, w = T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3])
        ref = np.asarray(TF.resized_crop(img, top, left, h, w, [size, size], T.InterpolationMode.BICUBIC)).astype(float)
        ours = crops[0].permute(1, 2, 0).numpy().astype(float)
        if params[0, P["flip"]]:
            ours = ours[:, ::-1]
        assert np.abs(ours - ref).mean() < 0.05 and np.abs(ours - ref).max() <= 1


def test_reduced_scale_decode_only_when_every_crop_stays_large_enough(monkeypatch):
    assert decode_scale([(0, 0, 400, 500), (0, 0, 1000, 1000)], [96, 224]) == 4
    assert decode_scale([(0, 0, 400, 500), (0, 0, 900, 800)], [96, 224]) == 2  # 800 / 4 < 224
    assert decode_scale([(0, 0, 150, 300)], [96]) == 1  # 150 / 2 < 96
    from PIL import JpegImagePlugin

    sizes = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = real(self, mode, size)
        sizes.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    buf = io.BytesIO()
    photo((2048, 1536)).save(buf, format="JPEG", quality=90)
    kw = dict(
        global_size=224,
        global_scale=(0.4, 1.0),
        local_number=[2],
        local_size=[96],
        local_scale=(0.3, 0.4),
        photometric_on="device",
    )
    torch.manual_seed(6)
    random.seed(6)
    state = (torch.get_rng_state(), random.getstate())
    crops, _ = FastMultiCrop(**kw)(buf.getvalue())
    assert sizes and sizes[0][0] < 2048  # decoded at 1/2 or 1/4 of the size
    torch.set_rng_state(state[0])
    random.setstate(state[1])
    full, _ = FastMultiCrop(**kw, draft=False)(buf.getvalue())
    assert [tuple(c.shape) for c in crops] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 2
    for a, b in zip(crops, full):  # the same crops from the reduced-scale decode: closer than a 1-pixel shift
        a, b = a.float(), b.float()
        shift = (b[..., 1:] - b[..., :-1]).abs().mean()
        assert (a - b).abs().mean() < shift + 1.0, ((a - b).abs().mean(), shift)


def test_grayscale_rate_of_the_outputs_matches_the_reference_transform():
    """Measured on the outputs of both transforms (a grey crop has equal channels): ~0.2 for both."""
    img = photo((96, 72), seed=5)
    ref = MultiCropAugmentation(32, (0.4, 1.0), [2], [16], (0.05, 0.4))
    fast = FastMultiCrop(32, (0.4, 1.0), [2], [16], (0.05, 0.4))
    torch.manual_seed(5)
    random.seed(5)

    def gray_rate(crops_list):
        grey = [
            bool((c[0] - c[1]).abs().max() < 1e-3 and (c[1] - c[2]).abs().max() < 1e-3) for cs in crops_list for c in cs
        ]
        return np.mean(grey), len(grey)

    r, n = gray_rate(
        [
            [
                c * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
                + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
                for c in ref(img)
            ]
            for _ in range(300)
        ]
    )
    f, _ = gray_rate([[c.float() for c in fast(img)[0]] for _ in range(300)])
    sd = (0.2 * 0.8 / n) ** 0.5
    assert abs(r - 0.2) < 4 * sd and abs(f - 0.2) < 4 * sd, (r, f)


@pytest.mark.parametrize("where", ["loader", "device"])
def test_training_runs_on_the_fast_augmentation(digits_shards, tmp_path, where):
    from esvit.train.config import load_train_config
    from esvit.train.loop import train
    from tests.conftest import TINY

    cfg = load_train_config(
        None,
        [*TINY, f"data.shards={digits_shards}", "optim.epochs=1", "data.num_workers=0", f"data.photometric_on={where}"],
    )
    final = train(cfg, tmp_path / where, show_progress=False)
    assert final.exists()
