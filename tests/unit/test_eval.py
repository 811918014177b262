"""Evaluation maths against independent references: naive k-NN, scikit-learn's LogisticRegression and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from esvit.eval.knn import knn_classify
from esvit.eval.metrics import accuracy, map_11point, mean_per_class
from esvit.eval.probe import LAMBDA_GRID, fit_logreg, lambda_search, run_probe, standardize


def gaussian_mixture(n: int, d: int, classes: int, seed: int, spread: float = 2.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * spread / np.sqrt(d) * 3
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(size=(n, d))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def naive_knn(train, train_y, test, test_y, k, t):
    train = train / train.norm(dim=1, keepdim=True)
    test = test / test.norm(dim=1, keepdim=True)
    hits = 0
    for q, y in zip(test, test_y):
        sims = [(float(q @ b), int(label)) for b, label in zip(train, train_y)]
        sims.sort(key=lambda s: -s[0])
        votes = {}
        for s, label in sims[:k]:
            votes[label] = votes.get(label, 0.0) + np.exp(s / t)
        hits += max(votes, key=votes.get) == int(y)
    return 100.0 * hits / len(test)


def test_knn_matches_a_naive_implementation_with_chunking():
    x, y = gaussian_mixture(260, 16, 5, seed=0, spread=0.7)
    train, train_y, test, test_y = x[:200], y[:200], x[200:], y[200:]
    got = knn_classify(train, train_y, test.half(), test_y, ks=(1, 10, 20, 250), query_chunk=7, bank_chunk=33)
    for k in (1, 10, 20):
        assert got[k] == pytest.approx(naive_knn(train, train_y, test, test_y, k, 0.07))
    assert got[250] == pytest.approx(naive_knn(train, train_y, test, test_y, 200, 0.07))  # k clamped to the bank


def test_metrics_against_references():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 6, generator=gen)
    labels = torch.randint(0, 6, (300,), generator=gen)
    assert accuracy(scores, labels) == pytest.approx(100 * float((scores.argmax(1) == labels).float().mean()))
    assert mean_per_class(scores, labels) == pytest.approx(100 * balanced_accuracy_score(labels, scores.argmax(1)))
    targets = (torch.rand(300, 4, generator=gen) < 0.3).long()
    ml_scores = targets * 0.5 + torch.rand(300, 4, generator=gen)
    ref = []
    for c in range(4):  # VOC devkit's 11-point AP
        order = np.argsort(-ml_scores[:, c].numpy())
        t = targets[order, c].numpy()
        tp, fp = np.cumsum(t), np.cumsum(1 - t)
        rec, prec = tp / t.sum(), tp / np.maximum(tp + fp, 1e-12)
        ref.append(np.mean([prec[rec >= r].max() if (rec >= r).any() else 0 for r in np.arange(0, 1.1, 0.1)]))
    assert map_11point(ml_scores, targets) == pytest.approx(100 * np.mean(ref), abs=1e-4)


def test_lambda_search_finds_the_peak_with_few_evaluations():
    peak = 37
    calls = []

    def evaluate(i):
        calls.append(i)
        return -abs(i - peak)

    best, scores = lambda_search(evaluate)
    assert best == peak
    assert calls[:7] == [96, 80, 64, 48, 32, 16, 0] and len(calls) <= 7 + 8
    assert len(LAMBDA_GRID) == 97 and LAMBDA_GRID[48] == pytest.approx(1.0)


@pytest.mark.parametrize("lam", [1e-2, 1.0, 100.0])
def test_fit_matches_sklearn_logistic_regression(lam):
    x, y = gaussian_mixture(600, 20, 4, seed=1)
    (xs,) = standardize(x)
    ours = fit_logreg(xs, y, 4, lam, tol=1e-7)
    ref = LogisticRegression(C=1.0 / lam, max_iter=5000, tol=1e-8).fit(xs.double().numpy(), y.numpy())
    pred_ref = torch.tensor(ref.decision_function(xs.double().numpy()))
    agree = (ours.logits(xs).argmax(1) == pred_ref.argmax(1)).float().mean()
    assert agree >= 0.995
    # the same optimum up to softmax's shift invariance: compare centred weights
    w = ours.weight - ours.weight.mean(0)
    w_ref = torch.tensor(ref.coef_, dtype=torch.float32)
    w_ref = w_ref - w_ref.mean(0)
    assert torch.allclose(w, w_ref, atol=2e-3 * max(1.0, float(w_ref.abs().max())))


def test_probe_agrees_with_a_sklearn_search_within_half_a_point():
    x, y = gaussian_mixture(3000, 32, 10, seed=2, spread=1.2)
    res = run_probe(x[:2000], y[:2000], x[2000:], y[2000:])
    # scikit-learn with the same split, standardisation and search
    from esvit.data.sources import stratified_split

    parts = stratified_split(y[:2000].numpy(), 0.2, 0)
    fx, fy, vx, vy = (
        x[:2000][parts["train"]],
        y[:2000][parts["train"]],
        x[:2000][parts["test"]],
        y[:2000][parts["test"]],
    )
    fxs, vxs = standardize(fx, vx)

    def evaluate(i):
        m = LogisticRegression(C=1 / LAMBDA_GRID[i], max_iter=1000).fit(fxs.numpy(), fy.numpy())
        return 100 * float((m.predict(vxs.numpy()) == vy.numpy()).mean())

    best, _ = lambda_search(evaluate)
    all_x, all_y = torch.cat([fx, vx]), torch.cat([fy, vy])
    axs, txs = standardize(all_x, x[2000:])
    m = LogisticRegression(C=1 / LAMBDA_GRID[best], max_iter=1000).fit(axs.numpy(), all_y.numpy())
    ref = 100 * float((m.predict(txs.numpy()) == y[2000:].numpy()).mean())
    assert abs(res.value - ref) <= 0.5, (res.value, ref, res.best_lambda, LAMBDA_GRID[best])
    assert res.n_train == 1600 and res.n_val == 400 and res.n_test == 1000


# ------------------------------------------------------------------------------------------ feature cache


def test_extract_caches_every_sample_once_resumes_after_a_kill_and_invalidates(digits_shards, tmp_path):
    import json

    from esvit.eval.features import extract, load_backbone, load_features

    net, meta = load_backbone(None, "swin_pico", seed=0)
    ref = extract(
        net,
        digits_shards,
        tmp_path / "ref.pt",
        meta,
        image_size=32,
        batch_size=64,
        num_workers=0,
        part_batches=3,
        show_progress=False,
    )
    total = json.loads((digits_shards / "manifest.json").read_text())["total"]
    assert len(ref["keys"]) == len(set(ref["keys"])) == total
    assert ref["pooled"].dtype == torch.float16 and ref["pooled"].shape == (total, 192)
    assert ref["last_blocks"].shape[0] == total and ref["meta"]["checkpoint_sha256"] == "random-init-seed0"

    class Dying(torch.nn.Module):  # the backbone dies at its 8th batch, as a killed job would
        def __init__(self, inner, die_at=None):
            super().__init__()
            self.inner, self.calls, self.die_at = inner, 0, die_at

        def pooled_and_last_blocks(self, x, n):
            self.calls += 1
            if self.calls == self.die_at:
                raise KeyboardInterrupt
            return self.inner.pooled_and_last_blocks(x, n)

    out = tmp_path / "f.pt"
    with pytest.raises(KeyboardInterrupt):
        extract(
            Dying(net, die_at=8),
            digits_shards,
            out,
            meta,
            image_size=32,
            batch_size=64,
            num_workers=0,
            part_batches=3,
            show_progress=False,
        )
    assert not out.exists() and len(list((tmp_path / "f.pt.parts").glob("part-*.pt"))) == 2
    again = Dying(net)
    res = extract(
        again,
        digits_shards,
        out,
        meta,
        image_size=32,
        batch_size=64,
        num_workers=0,
        part_batches=3,
        show_progress=False,
    )
    assert again.calls == -(-total // 64) - 6  # the 6 batches in the parts were not recomputed
    assert res["keys"] == ref["keys"] and torch.equal(res["pooled"], ref["pooled"])
    assert load_features(out)["meta"] == ref["meta"]
    net2, meta2 = load_backbone(None, "swin_pico", seed=1)  # another model: the cache is recomputed
    res2 = extract(net2, digits_shards, out, meta2, image_size=32, batch_size=64, num_workers=0, show_progress=False)
    assert res2["meta"]["checkpoint_sha256"] == "random-init-seed1" and not torch.equal(res2["pooled"], ref["pooled"])


def test_cli_extract_knn_probe_write_the_metrics_contract(digits_shards, tmp_path):
    import json

    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source
    from tests.conftest import run_cli

    test_shards = tmp_path / "test"
    write_shards(get_source("digits"), "digits", "test", test_shards, ShardConfig(workers=1), progress=False)
    for split, shards in (("train", digits_shards), ("test", test_shards)):
        proc = run_cli(
            "extract",
            "--random-init",
            "--arch",
            "swin_pico",
            "--shards",
            str(shards),
            "--out",
            str(tmp_path / f"{split}.pt"),
            "--image-size",
            "32",
            "--workers",
            "0",
            "--no-progress",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    for ev, extra in (("knn", ()), ("probe", ()), ("linear", ("--epochs", "3", "--no-progress"))):
        out = tmp_path / f"{ev}.json"
        proc = run_cli(
            ev,
            "--train",
            str(tmp_path / "train.pt"),
            "--test",
            str(tmp_path / "test.pt"),
            "--out",
            str(out),
            "--run",
            "r",
            "--dataset",
            "digits",
            *extra,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        m = json.loads(out.read_text())
        assert {
            "run",
            "arch",
            "dataset",
            "eval",
            "metric_name",
            "value",
            "metrics",
            "n_train",
            "n_test",
            "hparams",
            "checkpoint",
            "wall_s",
        } <= set(m)
        assert (
            m["eval"] == (ev if ev != "linear" else "linear_fast")
            and m["n_train"] == 1438
            and m["n_test"] == 359
            and 10 < m["value"] <= 100
        )
    bad = run_cli(
        "knn",
        "--train",
        str(tmp_path / "nope.pt"),
        "--test",
        str(tmp_path / "test.pt"),
        "--out",
        str(tmp_path / "x.json"),
        "--run",
        "r",
        "--dataset",
        "d",
    )
    assert bad.returncode == 1 and "esvit extract" in bad.stderr


def test_linear_fast_reaches_the_accuracy_of_an_unregularised_sklearn_fit():
    from esvit.eval.linear import linear_fast

    x, y = gaussian_mixture(3000, 32, 6, seed=3, spread=0.8)
    train_x, train_y, val_x, val_y = x[:2400].half(), y[:2400], x[2400:].half(), y[2400:]
    res = linear_fast(train_x, train_y, val_x, val_y, epochs=30, batch_size=128, base_lr=0.5, show_progress=False)
    ref = LogisticRegression(C=1e4, max_iter=2000).fit(train_x.float().numpy(), train_y.numpy())
    ref_acc = 100 * float((ref.predict(val_x.float().numpy()) == val_y.numpy()).mean())
    assert len(res.history) == 30 and res.best_top1 == max(res.history) and res.top1 == res.history[-1]
    assert res.lr == pytest.approx(0.5 * 128 / 256)
    assert abs(res.top1 - ref_acc) < 1.5, (res.top1, ref_acc)
    again = linear_fast(train_x, train_y, val_x, val_y, epochs=30, batch_size=128, base_lr=0.5, show_progress=False)
    assert again.history == res.history  # seeded


def test_linear_paper_mode_trains_only_the_head_on_augmented_views(digits_shards, tmp_path):
    from esvit.eval.features import extract, load_backbone
    from esvit.eval.linear import linear_paper

    net, meta = load_backbone(None, "swin_pico", seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    val = extract(
        net, digits_shards, tmp_path / "val.pt", meta, image_size=32, batch_size=64, num_workers=0, show_progress=False
    )
    res = linear_paper(
        net,
        digits_shards,
        val["last_blocks"],
        val["labels"],
        image_size=32,
        epochs=3,
        batch_size=64,
        base_lr=0.5,
        num_workers=0,
        show_progress=False,
    )
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the backbone stayed frozen
    assert len(res.history) == 3 and res.best_top1 > 30  # 10 classes: chance is 10 %


@pytest.mark.parametrize("lam", [0.1, 10.0])
def test_multilabel_fit_is_one_sklearn_binary_regression_per_class(lam):
    x, y = gaussian_mixture(500, 12, 4, seed=5)
    gen = torch.Generator().manual_seed(0)
    targets = torch.nn.functional.one_hot(y, 4).float()
    targets[torch.rand(500, generator=gen) < 0.3, 2] = 1.0  # a second label on some images
    (xs,) = standardize(x)
    ours = fit_logreg(xs.double(), targets.double(), 4, lam, tol=1e-9)  # float64: compare the optimum itself
    for c in range(4):
        ref = LogisticRegression(C=1.0 / lam, max_iter=5000, tol=1e-8).fit(xs.double().numpy(), targets[:, c].numpy())
        assert torch.allclose(ours.weight[c], torch.tensor(ref.coef_[0]), atol=2e-3)
        assert ours.bias[c] == pytest.approx(float(ref.intercept_[0]), abs=2e-3)


def test_multilabel_probe_scores_11point_map():
    x, y = gaussian_mixture(900, 16, 5, seed=6, spread=1.5)
    targets = torch.nn.functional.one_hot(y, 5)
    targets[::3, 0] = 1
    res = run_probe(x[:700], targets[:700], x[700:], targets[700:], "11point_mAP")
    assert res.metric == "11point_mAP" and 30 < res.value <= 100 and res.n_val == 140


def test_interpolated_start_lies_between_the_fitted_neighbours():
    from esvit.eval.probe import LogReg, _start

    models = {10: LogReg(torch.zeros(2, 3), torch.zeros(2)), 20: LogReg(torch.full((2, 3), 4.0), torch.ones(2))}
    mid = _start(models, 15)
    assert torch.equal(mid.weight, torch.full((2, 3), 2.0)) and torch.equal(mid.bias, torch.full((2,), 0.5))
    assert _start(models, 12).weight[0, 0] == pytest.approx(0.8)
    assert _start(models, 30) is models[20] and _start(models, 4) is models[10] and _start({}, 3) is None


def test_search_scores_do_not_depend_on_where_each_fit_started():
    """Every lambda the search scored, refit from scratch: the same validation score up to the solver's tolerance
    (two of 240 samples), the same best score (the starts are a speed-up, not a change of answer)."""
    from esvit.data.sources import stratified_split
    from esvit.eval.metrics import METRICS

    x, y = gaussian_mixture(1500, 48, 6, seed=8, spread=0.9)
    res = run_probe(x[:1200], y[:1200], x[1200:], y[1200:])
    parts = stratified_split(y[:1200].numpy(), 0.2, 0)
    fx, vx = standardize(x[:1200][parts["train"]], x[:1200][parts["test"]])
    fy, vy = y[:1200][parts["train"]], y[:1200][parts["test"]]
    assert len(res.val_scores) >= 12
    cold = {lam: METRICS["accuracy"](fit_logreg(fx, fy, 6, lam).logits(vx), vy) for lam in res.val_scores}
    for lam, score in res.val_scores.items():
        assert abs(cold[lam] - score) <= 2 * 100 / len(vy) + 1e-6, (lam, cold[lam], score)
    assert max(cold.values()) == pytest.approx(max(res.val_scores.values()))


def test_probe_knn_and_extraction_report_progress_with_totals(digits_shards, tmp_path, capsys):
    """Long evaluation work says how far it is: the probe counts its fits, k-NN its queries, extraction its images
    against the shards' total (with loader workers too). Off a terminal: a line at least at the end."""
    from esvit.eval.features import extract
    from esvit.models import Backbone

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 8, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    run_probe(x[:200], y[:200], x[200:], y[200:], show_progress=True)
    knn_classify(x[:200], y[:200], x[200:], y[200:], show_progress=True, query_chunk=30)
    cache = extract(
        Backbone("swin_pico"),
        digits_shards,
        tmp_path / "train.pt",
        {"arch": "swin_pico"},
        image_size=32,
        batch_size=64,
        num_workers=2,
    )
    err = capsys.readouterr().err
    fits = [line for line in err.splitlines() if line.startswith("probe accuracy:")][-1]
    done, total = map(int, fits.split(":")[1].split()[0].split("/"))
    assert total == 16 and 7 < done <= total  # 7 coarse fits, the halving, the refit
    assert "k-NN: 100/100 img" in err
    n = len(cache["keys"])
    assert f"extract train: {n}/{n} img" in err
