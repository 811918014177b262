"""`esvit report` on a results tree written by hand: paper matching, deltas, averages, wins, missing and
stale results, and figures that are real PNGs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from PIL import Image

from esvit.report import build_report
from esvit.report.tables import PAPER_CSV, transfer_table
from tests.conftest import run_cli
from tests.conftest import write_metrics as _metrics


def test_report_tables_against_the_paper(results, tmp_path):
    files = build_report(results, tmp_path / "report")
    summary = pd.read_csv(files["summary.csv"])
    assert len(summary) == 8 and summary.stale.sum() == 1  # 1 linear + 2 k-NN + 5 probes
    assert summary[summary.stale].iloc[0]["checkpoint"].endswith("checkpoint0001.pth")
    md = files["summary.md"].read_text()
    # Table 1: EsViT Swin-T/W7 V+R = 78.1 linear, 75.7 k-NN
    paper = pd.read_csv(PAPER_CSV)
    ref = paper[(paper.table == 1) & (paper.arch == "Swin-T") & (paper.window == 7) & (paper.method == "EsViT")].iloc[0]
    row = next(line for line in md.splitlines() if line.startswith("| tiny |") and "Table 1" in line)
    assert (
        f"{ref.imagenet_linear:.2f}" in row
        and f"{77.0 - ref.imagenet_linear:.2f}" in row
        and f"{74.0 - ref.imagenet_knn:.2f}" in row
    )
    avg = next(line for line in md.splitlines() if line.startswith("| average |"))
    assert avg.count("—") == 2  # cifar10 and dtd are 2 of the 18 sets: no average of 2 (pets is outside the suite)
    assert next(line for line in md.splitlines() if line.startswith("| present |")).count("2/18") == 2
    assert "| pets | accuracy | 80.00 | — |" in md  # shown, outside the average
    assert "Wins against `tiny_random`" in md and ": tiny 1 of 2 compared" in md
    lin = md.split("## Linear protocol", 1)[1].split("\n#", 1)[0]  # the linear protocol in the markdown too
    assert "| imagenet | tiny | swin_tiny_w7 | 77.00 |" in lin
    assert "Missing (—): " in md and "tiny_random/pets" in md.split("Missing (—): ", 1)[1].split("\n")[0]
    for name in ("transfer_bars.png", "accuracy_vs_throughput.png", "training_curves.png"):
        with Image.open(files[name]) as im:
            assert im.format == "PNG" and im.width > 200
    page = files["report.html"].read_text()
    assert page.count("<img") == 3 and page.count("<table") >= 5 and "data:image/png;base64," in page


def test_table4_runs_and_released_checkpoints_meet_their_own_paper_rows(tmp_path):
    """A run pretrained at Table 4's batch (1024) meets its Table 4 row, one at 512 Table 1's; a released
    checkpoint meets the row of the tasks its official run trained (its import record), a supervised one none."""
    paper = pd.read_csv(PAPER_CSV)
    res = tmp_path / "results"

    def pretrained(run, arch, region, batch):
        d = res / "pretrain" / run
        d.mkdir(parents=True)
        cfg = {"model": {"arch": arch}, "loss": {"region_loss_weight": region}, "optim": {"epochs": 300}}
        cfg["optim"]["total_batch_size"] = batch
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "final.pth").write_bytes(b"w")
        _metrics(res, "linear", run, "imagenet", 70.0, d / "final.pth", arch=arch)

    def imported(run, arch, tasks, fmt="official"):
        d = res / "imported" / run
        d.mkdir(parents=True)
        (d / "final.pth").write_bytes(b"w")
        (d / "final.import.json").write_text(json.dumps({"arch": arch, "format": fmt, "tasks": tasks}))
        _metrics(res, "linear", run, "imagenet", 70.0, d / "final.pth", arch="swin_tiny_w7")

    pretrained("cvt_vr", "cvt_tiny", 0.5, 1024)
    pretrained("swin_view_b1024", "swin_tiny_w7", 0.0, 1024)
    pretrained("swin_vr_b512", "swin_tiny_w7", 0.5, 512)
    imported("released_vil_v", "vil_tiny", "V")
    imported("released_cvt_vr", "cvt_tiny", "V+R")
    imported("supervised", "swin_tiny_w7", None, fmt="timm")
    md = build_report(res, tmp_path / "report")["summary.md"].read_text()
    imagenet = md.split("ImageNet-1K: this project beside the paper", 1)[1].split("\n#", 1)[0]

    def row(run):
        return next(line for line in imagenet.splitlines() if line.startswith(f"| {run} |"))

    def ref(table, arch, tasks):
        return paper[(paper.table == table) & (paper.arch == arch) & (paper.tasks == tasks)].iloc[0]

    for run, table, arch, tasks in [
        ("cvt_vr", 4, "CvT-T", "V+R"),
        ("swin_view_b1024", 4, "Swin-T", "V"),
        ("swin_vr_b512", 1, "Swin-T", "V+R"),
        ("released_vil_v", 4, "ViL-T", "V"),
        ("released_cvt_vr", 4, "CvT-T", "V+R"),
    ]:
        want = ref(table, arch, tasks)
        line = row(run)
        assert f"Table {table}: EsViT {arch}" in line and f" {tasks} |" in line, line
        assert f"{want.imagenet_linear:.2f}" in line and f"{70.0 - want.imagenet_linear:.2f}" in line, line
    assert "Table" not in row("supervised")  # timm's supervised weights: no EsViT row to meet
    assert "ViL-T/W" not in md  # no window shown for an architecture without one
    table4 = md.split("The paper's Table 4", 1)[1].split("\n#", 1)[0]  # the reference rows, shown
    assert "| CvT-T | V+R | 29 | 848 | 78.50 | 76.70 |" in table4.replace(".0 |", " |"), table4
    runs = md.split("ImageNet-1K: this project beside the paper", 1)[0]
    assert "| 1024 |" in next(line for line in runs.splitlines() if line.startswith("| cvt_vr |"))


def test_wins_count_strictly_better_datasets():
    df = pd.DataFrame(
        [
            {"run": r, "dataset": d, "eval": "probe", "metric": "accuracy", "value": v}
            for r, d, v in [
                ("a", "x", 1.0),
                ("a", "y", 5.0),
                ("a", "z", 3.0),
                ("b", "x", 2.0),
                ("b", "y", 5.0),
                ("b", "z", 1.0),
            ]
        ]
    )
    t = transfer_table(df, "probe", baseline="b")
    assert t.wins == {"a": 1} and t.table.loc["average", "a"] == pytest.approx(3.0)


def test_cli_report_and_a_missing_results_folder(results, tmp_path):
    proc = run_cli("report", "--results", str(results), "--out", str(tmp_path / "r"))
    assert proc.returncode == 0 and "report.html" in proc.stdout, proc.stderr
    bad = run_cli("report", "--results", str(tmp_path / "nope"))
    assert bad.returncode != 0 and "does not exist" in bad.stderr


def test_the_transfer_average_is_over_the_whole_suite_and_wins_are_counted_against_supervised(tmp_path):
    """Results on 2 of the 18 sets: every set is a row (missing ones marked), the average is missing until all
    are there (not an average of the two), the present count says so, and the supervised run is the
    baseline of the wins by default."""
    res = tmp_path / "results"
    for run, scores in (("esvit_t", (91.0, 70.0)), ("supervised_swin_tiny", (90.0, 72.0)), ("esvit_s", (95.0, 75.0))):
        for ds, v in zip(("cifar10", "dtd"), scores):
            _metrics(res, "probe", run, ds, v, None, metric="accuracy", sha="x")
    files = build_report(res, tmp_path / "report")
    md = files["summary.md"].read_text()
    probe = md.split("## Transfer: linear probe", 1)[1].split("\n## ", 1)[0]
    rows = {
        ln.split("|")[1].strip(): ln
        for ln in probe.splitlines()
        if ln.startswith("| ") and not ln.startswith("| dataset")
    }
    from esvit.data.transfer import load_registry

    assert set(load_registry()) <= set(rows)  # all 18 sets listed
    assert rows["food101"].count("—") == 3 and rows["average"].count("—") == 3  # no average of 2 sets out of 18
    assert rows["present"].count("2/18") == 3
    assert (
        "Wins against `supervised_swin_tiny`" in md
        and "esvit_t 1 of 2 compared" in md
        and "esvit_s 2 of 2 compared" in md
    )
    t = transfer_table(pd.read_csv(files["summary.csv"]), "probe", "supervised_swin_tiny")
    assert len(t.missing) == 3 * 16 and t.table.loc["present", "esvit_t"] == 2


def test_the_bars_show_every_run_when_there_is_no_random_baseline(tmp_path):
    res = tmp_path / "results"
    for run in ("run_a", "run_b", "run_c"):
        _metrics(res, "probe", run, "digits", 80.0 + len(run), None, metric="accuracy", sha="x")
    files = build_report(res, tmp_path / "report")
    page = files["report.html"].read_text()
    assert "Linear probe per dataset: run_a, run_b, run_c" in page


def test_a_set_outside_the_suite_never_fills_the_average_and_an_unknown_baseline_is_refused(tmp_path):
    """17 of the 18 sets and one in-house set: the average stays missing (17/18), the in-house row is shown
    beside; a --baseline that is no run is an error naming the runs."""
    from esvit.data.transfer import load_registry

    res = tmp_path / "results"
    suite = list(load_registry())
    for i, ds in enumerate(suite[:-1] + ["my_inhouse"]):
        _metrics(res, "probe", "esvit_small", ds, 50.0 + i, None, metric="accuracy", sha="x")
    md = build_report(res, tmp_path / "report")["summary.md"].read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "—" in rows["average"] and "17/18" in rows["present"] and "| my_inhouse |" in md
    assert suite[-1] in rows and "—" in rows[suite[-1]]
    bad = run_cli("report", "--results", str(res), "--out", str(tmp_path / "r2"), "--baseline", "esvit_smal")
    assert bad.returncode == 2 and "Did you mean 'esvit_small'" in bad.stderr and "Traceback" not in bad.stderr


def test_the_ablation_table_pairs_view_and_view_region_runs_of_one_architecture(tmp_path):
    """Runs that differ only in the region-loss weight (two seeds each) form the ablation beside their one random
    initialisation, with per-task means over the seeds; a run of another architecture stays out of it."""
    res = tmp_path / "results"
    runs = {
        "vr0": (0.5, 0, "swin_pico"),
        "vr1": (0.5, 1, "swin_pico"),
        "v0": (0.0, 0, "swin_pico"),
        "v1": (0.0, 1, "swin_pico"),
        "other": (0.5, 0, "swin_nano"),
    }
    knn = {"vr0": 80.0, "vr1": 82.0, "v0": 70.0, "v1": 74.0, "other": 99.0, "vr0_random": 60.0}
    corr = {"vr0": 30.0, "vr1": 34.0, "v0": 20.0, "v1": 22.0, "other": 50.0, "vr0_random": 10.0}
    for run, (weight, seed, arch) in runs.items():
        (res / "pretrain" / run).mkdir(parents=True)
        (res / "pretrain" / run / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "model": {"arch": arch},
                    "crops": {"global_size": 32},
                    "loss": {"region_loss_weight": weight},
                    "run": {"seed": seed},
                }
            )
        )
    for run, value in knn.items():
        _metrics(res, "knn", run, "fashion_mnist", value, None)
        (res / "viz" / run).mkdir(parents=True)
        (res / "viz" / run / "correspondence.json").write_text(
            json.dumps({"accuracy": corr[run], "pairs": 512, "regions_per_view": 16, "image_size": 32})
        )
    from esvit.report.tables import ablation_table, collect_metrics

    df = collect_metrics(res)
    df.loc[df.run == "other", "arch"] = "swin_nano"
    df.loc[df.run != "other", "arch"] = "swin_pico"
    table = ablation_table(
        df, res, {r: {"accuracy": v, "regions_per_view": 16, "image_size": 32} for r, v in corr.items()}
    )
    assert list(table.run) == ["vr0_random", "v0", "v1", "vr0", "vr1", "V, mean of 2 seeds", "V+R, mean of 2 seeds"]
    assert list(table.tasks) == ["random init", "V", "V", "V+R", "V+R", "V", "V+R"]
    by_run = table.set_index("run")
    assert by_run.loc["V, mean of 2 seeds", "knn fashion_mnist"] == pytest.approx(72.0)
    assert by_run.loc["V+R, mean of 2 seeds", "correspondence_%"] == pytest.approx(32.0)
    assert by_run.loc["vr1", "seed"] == 1 and pd.isna(by_run.loc["vr0_random", "seed"])

    files = build_report(res, tmp_path / "report")
    md = files["summary.md"].read_text()
    section = md.split("## View vs view + region (ablation)", 1)[1].split("\n## ", 1)[0]
    assert "32 px (4 x 4 regions, chance 6.2 %)" in section and "| vr1 | V+R | 1 | 82.00 | 34.00 |" in section
    assert "other" not in section and "The paper's Table 5" in section
    assert "View vs view + region" in files["report.html"].read_text()


def test_no_ablation_section_without_a_view_and_a_view_region_run(results, tmp_path):
    md = build_report(results, tmp_path / "report")["summary.md"].read_text()
    assert "View vs view + region" not in md


def test_the_report_reads_the_files_it_is_given_and_nothing_else(results, tmp_path):
    """Given every file under results/ (as the workflow's rule passes them), the report is the by-hand one byte for
    byte; a metrics file left out (a run no longer in the config) stays out of it."""
    from esvit.report.build import ReportInputs

    by_hand = build_report(results, tmp_path / "by_hand")
    metrics = [str(p) for p in sorted(results.glob("*/*/*/metrics.json"), reverse=True)]  # any order
    proc = run_cli(
        "report",
        "--results",
        str(results),
        "--out",
        str(tmp_path / "given"),
        "--metrics",
        *metrics,
        "--runs",
        str(results / "pretrain" / "tiny" / "log.jsonl"),
        "--viz",
        "--bench",
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.csv", "summary.md", "report.html", "training_curves.png"):
        assert (tmp_path / "given" / name).read_bytes() == by_hand[name].read_bytes(), name
    assert "<script" not in by_hand["report.html"].read_text()
    kept = [m for m in metrics if "tiny_random" not in m]
    files = build_report(ReportInputs.given(results, kept, [results / "pretrain" / "tiny"]), tmp_path / "fewer")
    summary = pd.read_csv(files["summary.csv"])
    assert len(summary) == 6 and "tiny_random" not in set(summary.run)
    bad = run_cli("report", "--metrics", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r"))
    assert bad.returncode == 2 and "metrics file" in bad.stderr and "nope.json' does not exist" in bad.stderr


def test_a_metrics_file_that_is_not_a_record_is_skipped_naming_it(results, tmp_path, capsys):
    bad = results / "knn" / "tiny" / "dtd" / "metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"run": "tiny", "dataset": "dtd", "eval": "knn", "metric_name": "top1"}))
    files = build_report(results, tmp_path / "report")
    assert len(pd.read_csv(files["summary.csv"])) == 8
    err = capsys.readouterr().err
    assert f"skipping unreadable {bad}" in err and "'value'" in err
