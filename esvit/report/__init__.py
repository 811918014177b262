"""``esvit report``: every metrics JSON under ``results/`` in tables beside the paper, plots and one HTML page.

Writes ``summary.csv`` (one row per result, with the stale flag), ``summary.md``, ``report.html`` (tables and
the figures embedded, a single self-contained file) and the figures as PNG.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from esvit.atomic import atomic_write_text
from esvit.report import plots
from esvit.errors import ReportError
from esvit.report.tables import (ablation_table, collect_metrics, imagenet_table, linear_table, mark_stale,
                                 paper_table, run_descriptions, transfer_table)  # fmt: skip

__all__ = ["build_report", "ReportError"]



DASH = "—"


def _fmt(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return DASH
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _md_table(df: pd.DataFrame, index: bool = True) -> str:
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=True, name=None):  # itertuples keeps each column's type (iterrows upcasts)
        cells = ([str(row[0])] if index else []) + [_fmt(v) for v in row[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _html_table(df: pd.DataFrame, cls: str, index: bool = True) -> str:
    head = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in df.itertuples(index=True, name=None):
        cells = ([str(row[0])] if index else []) + [_fmt(v) for v in row[1:]]
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _throughputs(bench_dir: Path) -> dict[str, float]:
    """arch -> images/s from ``esvit bench infer`` records (the paper's throughput column), newest wins."""
    out: dict[str, float] = {}
    path = bench_dir / "infer.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            for arch, v in (rec.get("img_s") or {}).items():
                out[arch] = float(v)
    return out


def build_report(results: str | Path = "results", out: str | Path | None = None, baseline: str | None = None,
                 paper_csv: str | Path | None = None) -> dict[str, Path]:  # fmt: skip
    """Build the report from ``results``; returns the written files by name.

    Args:
        baseline: the run the transfer table counts wins against (default: the first ``*_random`` run).
    """
    results = Path(results)
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    paper = paper_table(paper_csv) if paper_csv else paper_table()
    df = mark_stale(collect_metrics(results), results)
    desc = run_descriptions(results, df) if len(df) else pd.DataFrame(columns=["run", "arch", "paper_arch", "window", "tasks", "source"])
    runs = sorted(df.run.unique()) if len(df) else []
    if baseline is None:  # the paper counts wins against the supervised Swin-T; else the random initialisation
        baseline = next((r for r in runs if r.startswith("supervised")), None) or next((r for r in runs if r.endswith("_random")), None)
    elif runs and baseline not in runs:
        from esvit.fields import did_you_mean

        raise ReportError(f"--baseline {baseline!r} is not a run with results.{did_you_mean(baseline, runs)} Runs: {', '.join(runs)}")
    files: dict[str, Path] = {}

    # -- tables ------------------------------------------------------------------------------------------
    summary = df.drop(columns=["path"]).sort_values(["eval", "dataset", "run"])
    files["summary.csv"] = out / "summary.csv"
    atomic_write_text(files["summary.csv"], summary.to_csv(index=False))
    imnet = imagenet_table(df, desc, paper) if len(desc) else pd.DataFrame()
    tables = {ev: transfer_table(df, ev, baseline) for ev in ("probe", "knn")}
    lin = linear_table(df)
    counts = {"window": "Int64", "params_m": "Int64", "throughput_img_s": "Int64", "transfer18_wins": "Int64"}
    paper_shown = paper.astype(counts)
    headline = paper_shown[paper.table == 1][["method", "arch", "window", "tasks", "params_m", "throughput_img_s", "imagenet_linear", "imagenet_knn"]]
    transfer_ref = paper_shown[paper.table == 3][["method", "arch", "pretrain_data", "tasks", "imagenet_linear", "imagenet_knn", "transfer18_avg", "transfer18_wins"]]
    if len(desc):
        desc = desc.astype({"window": "Int64"})
    stale = summary.loc[summary["stale"].astype(bool), ["run", "dataset", "eval", "checkpoint"]]

    # -- figures -----------------------------------------------------------------------------------------
    figures: list[tuple[Path, str]] = []
    probe = tables["probe"]
    pair = [r for r in probe.table.columns if r != baseline][:7] + ([baseline] if baseline in probe.table.columns else [])
    figures.append((plots.transfer_bars(probe.table, pair, out / "transfer_bars.png", probe.metric),
                    f"Linear probe per dataset: {', '.join(pair) or 'no results yet'} (the paper's Figure 3 style)"))  # fmt: skip
    speeds = _throughputs(results / "bench")
    ours = [{"label": r["run"], "throughput": speeds[r["arch"]], "linear": r["linear"]}
            for _, r in imnet.iterrows() if r.get("linear") is not None and not pd.isna(r.get("linear")) and r["arch"] in speeds] if len(imnet) else []  # fmt: skip
    figures.append((plots.accuracy_vs_throughput(paper, ours, out / "accuracy_vs_throughput.png"),
                    "ImageNet linear top-1 vs throughput: the paper's Table 1 and this project's runs (the paper's Figure 1 style)"))  # fmt: skip
    logs = {p.parent.name: plots.read_log(p) for p in sorted(results.glob("pretrain/*/log.jsonl"))}
    figures.append((plots.training_curves(logs, out / "training_curves.png"),
                    "Pretraining curves (log.jsonl of each run)" if logs else "Pretraining curves: no run pretrained here"))  # fmt: skip
    corr = {p.parent.name: _read_json(p) for p in sorted(results.glob("viz/*/correspondence.json"))}
    corr = {run: c for run, c in corr.items() if c}
    for run in corr:
        png = results / "viz" / run / "correspondence.png"
        if png.is_file():
            figures.append((png, f"Region correspondence of {run}: each student region of view B (a crop of A) joined to "
                                 "its best teacher region in view A (green: the geometrically correct one)"))  # fmt: skip
    corr_table = pd.DataFrame([{"run": r, "accuracy_%": c["accuracy"], "chance_%": c.get("chance"), "regions_per_view": c.get("regions_per_view"),
                                "images": c.get("pairs"), "image_size": c.get("image_size")} for r, c in corr.items()])  # fmt: skip
    corr_note = ("Fraction of the student regions of view B (a random crop of 40-100 % of view A, resized and colour-"
                 "jittered) whose most similar teacher region in view A (the whole image) is the geometrically correct "
                 "one, at the resolution given (chance: 1 / regions). Paper: 95 % DINO DeiT-S, 66 % multi-stage "
                 "view-only, 91 % with the region loss.")  # fmt: skip
    ablation = ablation_table(df, results, corr) if len(df) else pd.DataFrame()
    paper_ablation = paper_shown[paper.table == 5][["arch", "window", "tasks", "imagenet_linear", "imagenet_knn"]]
    if len(ablation):
        sizes = sorted({f"{c['image_size']} px ({int(c['regions_per_view'] ** 0.5)} x {int(c['regions_per_view'] ** 0.5)} regions, "
                        f"chance {100 / c['regions_per_view']:.1f} %)" for r, c in corr.items()
                        if r in set(ablation.run) and c.get("regions_per_view")})  # fmt: skip
        ablation_note = ("The same architecture, crops and budget trained with the view loss only (V, region_loss_weight 0) and "
                         "with the view and region losses (V+R, 0.5), beside its random initialisation; top-1 on the held-out "
                         "test images, and the correspondence accuracy at the training resolution: " + ("; ".join(sizes) or "—")
                         + ". The paper (Swin, ImageNet-1K, Table 5 and its correspondence study): V+R adds 0.8-1.5 points of "
                         "linear and k-NN top-1 and lifts the correspondence accuracy from 66 % to 91 %.")  # fmt: skip

    has_imagenet = bool(len(imnet)) and imnet[["linear", "knn"]].notna().any().any()
    shown_tables = {}
    for ev in ("probe", "knn"):
        if not tables[ev].table.empty:
            shown = tables[ev].table.copy().astype(object)
            n_sets = tables[ev].suite_size
            shown.loc["present"] = [f"{int(v)}/{n_sets}" for v in tables[ev].table.loc["present"]]
            default = {"average": f"over all {n_sets}", "present": ""}
            shown.insert(0, "metric", [tables[ev].metric.get(d, default.get(d, _registry_metric(d))) for d in shown.index])
            shown_tables[ev] = shown
    titles = {"probe": "Transfer: linear probe", "knn": "Transfer: k-NN top-1"}

    # -- markdown ----------------------------------------------------------------------------------------
    md = ["# EsViT pipeline report", "", f"Results read: {len(df)} metrics files under `{results}`."]
    if len(desc):
        md += ["", "## Runs", "", _md_table(desc.set_index("run"))]
    md += ["", "## ImageNet-1K: this project beside the paper", ""]
    md += [_md_table(imnet.set_index("run")) if has_imagenet
           else "No ImageNet results yet (add `imagenet` to eval.linear_datasets / eval.datasets)."]  # fmt: skip
    md += ["", "### The paper's Table 1 (ImageNet-1K linear / k-NN top-1, throughput)", "", _md_table(headline, index=False)]
    for ev, shown in shown_tables.items():
        t, title = tables[ev], titles[ev]
        md += ["", f"## {title} (datasets x runs)", "", _md_table(shown)]
        if t.baseline:
            md += ["", f"Wins against `{t.baseline}` (datasets where the run scores higher, as the paper counts them): "
                   + ", ".join(f"{r} {n} of {t.compared[r]} compared" for r, n in t.wins.items())]
        if t.missing:
            md += ["", "Missing (—): " + ", ".join(f"{r}/{d}" for r, d in t.missing)]
    if len(lin):
        md += ["", "## Linear protocol (last-4-blocks features, top-1 after the last epoch and the best epoch's)", "",
               _md_table(lin, index=False)]  # fmt: skip
    md += ["", "### The paper's Table 3 (18-dataset average and #wins vs supervised)", "", _md_table(transfer_ref, index=False)]
    if len(ablation):
        md += ["", "## View vs view + region (ablation)", "", ablation_note, "", _md_table(ablation, index=False),
               "", "### The paper's Table 5 (ImageNet-1K linear / k-NN top-1)", "", _md_table(paper_ablation, index=False)]  # fmt: skip
    if corr:
        md += ["", "## Region correspondence", "", corr_note, "", _md_table(corr_table.set_index("run"))]
    md += ["", "## Stale results", "", _md_table(stale, index=False) if len(stale) else "None: every result used its run's newest checkpoint."]
    md += ["", "## Figures", ""] + [f"![{cap}]({p.name})" for p, cap in figures if p.parent == out]
    files["summary.md"] = out / "summary.md"
    atomic_write_text(files["summary.md"], "\n".join(md) + "\n")

    # -- html --------------------------------------------------------------------------------------------
    body = [f"<h1>EsViT pipeline report</h1><p>Results read: {len(df)} metrics files under <code>{html.escape(str(results))}</code>.</p>"]
    if len(desc):
        body += ["<h2>Runs</h2>", _html_table(desc.set_index("run"), "runs")]
    body += ["<h2>ImageNet-1K: this project beside the paper</h2>"]
    body += [_html_table(imnet.set_index("run"), "imagenet") if has_imagenet
             else "<p>No ImageNet results yet (add <code>imagenet</code> to eval.linear_datasets / eval.datasets).</p>"]  # fmt: skip
    body += ["<h3>The paper's Table 1</h3>", _html_table(headline, "paper", index=False)]
    for ev, shown in shown_tables.items():
        t, title = tables[ev], titles[ev]
        body += [f"<h2>{title}</h2>", _html_table(shown, f"transfer {ev}")]
        if t.baseline:
            body += [f"<p>Wins against <code>{html.escape(t.baseline)}</code> (datasets where the run scores higher): " + ", ".join(f"{html.escape(r)} {n} of {t.compared[r]} compared" for r, n in t.wins.items()) + "</p>"]
        if t.missing:
            body += ["<p>Missing (—): " + ", ".join(html.escape(f"{r}/{d}") for r, d in t.missing) + "</p>"]
    if len(lin):
        body += ["<h2>Linear protocol (last-4-blocks)</h2>", _html_table(lin, "linear", index=False)]
    body += ["<h3>The paper's Table 3</h3>", _html_table(transfer_ref, "paper", index=False)]
    if len(ablation):
        body += ["<h2>View vs view + region (ablation)</h2>", f"<p>{html.escape(ablation_note)}</p>",
                 _html_table(ablation, "ablation", index=False), "<h3>The paper's Table 5</h3>",
                 _html_table(paper_ablation, "paper", index=False)]  # fmt: skip
    if corr:
        body += ["<h2>Region correspondence</h2>", f"<p>{html.escape(corr_note)}</p>", _html_table(corr_table.set_index("run"), "correspondence")]
    body += ["<h2>Stale results</h2>", _html_table(stale, "stale", index=False) if len(stale) else "<p>None.</p>"]
    body += ["<h2>Figures</h2>"] + [_img(p, cap) for p, cap in figures]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
             "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}")  # fmt: skip
    # after load, the page records what rendered (tables, images with a decoded size) for automated checks
    check = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
             "document.body.dataset.rows=`${document.querySelectorAll('table tbody tr').length}`;"
             "document.body.dataset.images=`${im.filter(i=>i.complete&&i.naturalWidth>0).length}/${im.length}`;"
             "document.body.dataset.tables=`${document.querySelectorAll('table').length}`;});</script>")  # fmt: skip
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>EsViT report</title><style>{style}</style>{check}</head>"
            f"<body>{''.join(body)}</body></html>")  # fmt: skip
    files["report.html"] = out / "report.html"
    atomic_write_text(files["report.html"], page)
    for p, _ in figures:
        files[p.name] = p
    return files


def _registry_metric(dataset: str) -> str:
    """A transfer set's metric from the registry (for a row with no result yet)."""
    from esvit.data.transfer import load_registry

    return load_registry().get(dataset, {}).get("metric", "")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None
