"""``esvit report``: metrics records in tables beside the paper, figures, and one document rendered twice.

Writes ``summary.csv`` (one row per result, with the stale flag), ``summary.md``, ``report.html`` (tables and
the figures embedded, a single self-contained file) and the figures as PNG. What it reads is a
:class:`ReportInputs`: the files the workflow's ``build_report`` rule declares, or, by hand, everything under a
results folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from esvit.atomic import atomic_write_text
from esvit.errors import ReportError
from esvit.fields import did_you_mean
from esvit.report import plots
from esvit.report.render import to_html, to_markdown
from esvit.report.sections import ReportData, correspondence_table, report_sections, shown_transfer
from esvit.report.tables import (
    ablation_table,
    collect_metrics,
    imagenet_table,
    linear_table,
    mark_stale,
    metrics_files,
    paper_table,
    run_descriptions,
    run_folders,
    transfer_table,
)

__all__ = ["build_report", "ReportInputs"]

PathLike = str | os.PathLike


@dataclass
class ReportInputs:
    """What a report reads.

    Attributes:
        results: the results folder: named on the page, the default output folder (``<results>/report``), and
            the base of checkpoint paths recorded relative (they are relative to its parent).
        metrics: the metrics records (``results/{knn,probe,linear}/<model>/<dataset>/metrics.json``).
        runs: the folders of the runs pretrained here, by name (``log.jsonl``, ``config.yaml``, checkpoints).
        viz: each model's ``correspondence.json`` (``esvit viz``; its ``correspondence.png`` beside it), by model.
        bench: ``esvit bench infer`` record files (JSON lines; a later record of an arch wins).
    """

    results: Path
    metrics: list[Path] = field(default_factory=list)
    runs: dict[str, Path] = field(default_factory=dict)
    viz: dict[str, Path] = field(default_factory=dict)
    bench: list[Path] = field(default_factory=list)

    @classmethod
    def scan(cls, results: PathLike = "results") -> ReportInputs:
        """By hand: every metrics record, run folder, correspondence record and ``bench/infer.jsonl`` under
        ``results``."""
        results = Path(results)
        bench = results / "bench" / "infer.jsonl"
        return cls(
            results,
            metrics_files(results),
            run_folders(results),
            {p.parent.name: p for p in sorted(results.glob("viz/*/correspondence.json"))},
            [bench] if bench.is_file() else [],
        )

    @classmethod
    def given(
        cls,
        results: PathLike = "results",
        metrics: Iterable[PathLike] = (),
        runs: Iterable[PathLike] = (),
        viz: Iterable[PathLike] = (),
        bench: Iterable[PathLike] = (),
    ) -> ReportInputs:
        """Exactly these files (what the workflow's rule declares): nothing else is looked for.

        Args:
            runs: each run's folder, or a file in it (its ``done.json``).
            viz: ``correspondence.json`` files, each in a folder named after its model.

        Raises:
            ReportError: a file given does not exist.
        """
        files = {
            "metrics": [Path(p) for p in metrics],
            "runs": [Path(p) for p in runs],
            "viz": [Path(p) for p in viz],
            "bench": [Path(p) for p in bench],
        }
        for kind, paths in files.items():
            for path in paths:
                if not path.exists():
                    raise ReportError(f"{kind} file {str(path)!r} does not exist")
        run_dirs = [p if p.is_dir() else p.parent for p in files["runs"]]
        return cls(
            Path(results),
            files["metrics"],
            {d.name: d for d in sorted(run_dirs)},
            {p.parent.name: p for p in sorted(files["viz"])},
            files["bench"],
        )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _throughputs(files: list[Path]) -> dict[str, float]:
    """arch -> images/s from ``esvit bench infer`` records (the paper's throughput column), newest wins."""
    out: dict[str, float] = {}
    for path in files:
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            for arch, v in (rec.get("img_s") or {}).items():
                out[arch] = float(v)
    return out


def _pick_baseline(runs: list[str], baseline: str | None) -> str | None:
    """The run wins are counted against: as asked, else a supervised run (as the paper counts them), else the
    first random initialisation."""
    if baseline is None:
        supervised = next((r for r in runs if r.startswith("supervised")), None)
        return supervised or next((r for r in runs if r.endswith("_random")), None)
    if runs and baseline not in runs:
        raise ReportError(
            f"--baseline {baseline!r} is not a run with results.{did_you_mean(baseline, runs)} Runs: {', '.join(runs)}"
        )
    return baseline


def build_report(
    results: PathLike | ReportInputs = "results",
    out: PathLike | None = None,
    baseline: str | None = None,
    paper_csv: PathLike | None = None,
) -> dict[str, Path]:
    """Build the report; returns the written files by name.

    Args:
        results: the results folder (everything under it is read, :meth:`ReportInputs.scan`), or the inputs.
        out: the output folder (default ``<results>/report``).
        baseline: the run the transfer table counts wins against (default: a supervised run, else the first
            ``*_random`` run).
        paper_csv: the paper's numbers (default ``esvit/resources/paper_results.csv``).
    """
    inputs = results if isinstance(results, ReportInputs) else ReportInputs.scan(results)
    results = inputs.results
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    paper = paper_table(paper_csv) if paper_csv else paper_table()
    df = mark_stale(collect_metrics(files=inputs.metrics), results, inputs.runs)
    desc = (
        run_descriptions(results, df, inputs.runs)
        if len(df)
        else pd.DataFrame(columns=["run", "arch", "paper_arch", "window", "tasks", "source"])
    )
    baseline = _pick_baseline(sorted(df.run.unique()) if len(df) else [], baseline)
    files: dict[str, Path] = {}

    # -- tables ------------------------------------------------------------------------------------------
    summary = df.drop(columns=["path"]).sort_values(["eval", "dataset", "run"])
    files["summary.csv"] = out / "summary.csv"
    atomic_write_text(files["summary.csv"], summary.to_csv(index=False))
    imnet = imagenet_table(df, desc, paper) if len(desc) else pd.DataFrame()
    tables = {ev: transfer_table(df, ev, baseline) for ev in ("probe", "knn")}
    counts = {"window": "Int64", "params_m": "Int64", "throughput_img_s": "Int64", "transfer18_wins": "Int64"}
    paper_shown = paper.astype(counts)
    if len(desc):
        desc = desc.astype({"window": "Int64"})
    corr = {run: c for run, c in ((run, _read_json(p)) for run, p in inputs.viz.items()) if c}

    # -- figures -----------------------------------------------------------------------------------------
    figures: list[tuple[Path, str]] = []
    probe = tables["probe"]
    columns = list(probe.table.columns)
    pair = [r for r in columns if r != baseline][:7] + ([baseline] if baseline in columns else [])
    figures.append(
        (
            plots.transfer_bars(probe.table, pair, out / "transfer_bars.png", probe.metric),
            f"Linear probe per dataset: {', '.join(pair) or 'no results yet'} (the paper's Figure 3 style)",
        )
    )
    speeds = _throughputs(inputs.bench)
    ours = [
        {"label": r["run"], "throughput": speeds[r["arch"]], "linear": r["linear"]}
        for _, r in imnet.iterrows()
        if r.get("linear") is not None and not pd.isna(r.get("linear")) and r["arch"] in speeds
    ]
    figures.append(
        (
            plots.accuracy_vs_throughput(paper, ours, out / "accuracy_vs_throughput.png"),
            "ImageNet linear top-1 vs throughput: the paper's Table 1 and this project's runs (the paper's "
            "Figure 1 style)",
        )
    )
    logs = {
        p.parent.name: plots.read_log(p)
        for p in sorted(p for p in (Path(d) / "log.jsonl" for d in inputs.runs.values()) if p.is_file())
    }
    curves = "Pretraining curves (log.jsonl of each run)" if logs else "Pretraining curves: no run pretrained here"
    figures.append((plots.training_curves(logs, out / "training_curves.png"), curves))
    for run, path in inputs.viz.items():
        png = path.parent / "correspondence.png"
        if run in corr and png.is_file():
            figures.append(
                (
                    png,
                    f"Region correspondence of {run}: each student region of view B (a crop of A) joined "
                    "to its best teacher region in view A (green: the geometrically correct one)",
                )
            )

    # -- the document, rendered twice ------------------------------------------------------------------------
    data = ReportData(
        results=results,
        n_metrics=len(df),
        runs=desc,
        imagenet=imnet,
        has_imagenet=bool(len(imnet)) and imnet[["linear", "knn"]].notna().any().any(),
        headline=paper_shown[paper.table == 1][
            ["method", "arch", "window", "tasks", "params_m", "throughput_img_s", "imagenet_linear", "imagenet_knn"]
        ],
        architectures=paper_shown[paper.table == 4][
            ["arch", "tasks", "params_m", "throughput_img_s", "imagenet_linear", "imagenet_knn"]
        ],
        transfer={ev: (t, shown_transfer(t)) for ev, t in tables.items() if not t.table.empty},
        linear=linear_table(df),
        transfer_ref=paper_shown[paper.table == 3][
            [
                "method",
                "arch",
                "pretrain_data",
                "tasks",
                "imagenet_linear",
                "imagenet_knn",
                "transfer18_avg",
                "transfer18_wins",
            ]
        ],
        ablation=ablation_table(df, results, corr, inputs.runs) if len(df) else pd.DataFrame(),
        paper_ablation=paper_shown[paper.table == 5][["arch", "window", "tasks", "imagenet_linear", "imagenet_knn"]],
        correspondence=corr,
        correspondence_table=correspondence_table(corr),
        stale=summary.loc[summary["stale"].astype(bool), ["run", "dataset", "eval", "checkpoint"]],
        figures=figures,
        out=out,
    )
    sections = report_sections(data)
    files["summary.md"] = out / "summary.md"
    atomic_write_text(files["summary.md"], to_markdown(sections))
    files["report.html"] = out / "report.html"
    atomic_write_text(files["report.html"], to_html(sections))
    for p, _ in figures:
        files[p.name] = p
    return files
