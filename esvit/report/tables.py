"""The report's tables: the metrics records beside the paper's numbers.

Reads only the metrics records (:mod:`esvit.eval.record`, docs/design.md §3.4), the runs' resolved training
configs (``<run folder>/config.yaml``, for matching paper rows) and ``esvit/resources/paper_results.csv``.
The metrics files and run folders are given, or, by hand, every one under a results folder
(``results/{knn,probe,linear}/*/*/metrics.json``, ``results/pretrain/*``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from esvit.data.shards import file_sha256
from esvit.eval.record import RecordError, read_record
from esvit.imported import read_import_record
from esvit.resources import resource_path

__all__ = [
    "collect_metrics",
    "metrics_files",
    "run_folders",
    "paper_table",
    "run_descriptions",
    "imagenet_table",
    "transfer_table",
    "PAPER_CSV",
    "TransferTable",
    "mark_stale",
    "transfer_suite",
    "linear_table",
    "ablation_table",
]

PAPER_CSV = resource_path("paper_results.csv")
EVALS = ("knn", "probe", "linear")
# this project's arch names -> the paper's (arch, window)
PAPER_ARCH = {
    "swin_tiny_w7": ("Swin-T", 7),
    "swin_tiny_w14": ("Swin-T", 14),
    "swin_small_w7": ("Swin-S", 7),
    "swin_small_w14": ("Swin-S", 14),
    "swin_base_w7": ("Swin-B", 7),
    "swin_base_w14": ("Swin-B", 14),
    "deit_small": ("DeiT-S/16", None),
    "vit_small": ("DeiT-S/16", None),
    "resnet50": ("ResNet-50", None),
    "vil_tiny": ("ViL-T", None),
    "cvt_tiny": ("CvT-T", None),
    "pvt_tiny": ("PvT-T", None),
}

# The paper's Table 4 compares architectures at total batch 1024 (the others use 512): a run pretrained here at
# that batch is compared with its Table 4 row where the architecture has one.
ARCH_TABLE_BATCH = {4: 1024}


def metrics_files(results: str | Path) -> list[Path]:
    """Every ``results/{eval}/{run}/{dataset}/metrics.json`` under ``results`` (the report by hand)."""
    return [path for ev in EVALS for path in sorted(Path(results).glob(f"{ev}/*/*/metrics.json"))]


def run_folders(results: str | Path) -> dict[str, Path]:
    """Every run folder under ``results/pretrain``, by name (the report by hand)."""
    return {path.name: path for path in sorted(Path(results).glob("pretrain/*")) if path.is_dir()}


def collect_metrics(results: str | Path | None = None, files: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """One row per metrics record: the ``files`` given, else every one under ``results``
    (:func:`metrics_files`); rows in the order of :data:`EVALS`, then of the files' paths. A file that is not a
    readable record is reported and skipped, not fatal."""
    records = []
    for path in (Path(f) for f in files) if files is not None else metrics_files(results):
        try:
            records.append((path, read_record(path)))
        except RecordError as exc:
            print(f"esvit: warning: skipping unreadable {exc.path} ({exc.reason})", file=sys.stderr)
    order = {ev: i for i, ev in enumerate(EVALS)}
    records.sort(key=lambda item: (order.get(item[1].family, len(EVALS)), item[0]))
    rows = [
        {
            "run": m.run,
            "arch": m.arch,
            "dataset": m.dataset,
            "eval": m.family,
            "metric": m.metric_name,
            "value": m.value,
            "best_value": m.metrics.get("best_top1"),
            "n_train": m.n_train,
            "n_test": m.n_test,
            "checkpoint": m.checkpoint,
            "checkpoint_sha256": m.checkpoint_sha256,
            "wall_s": m.wall_s,
            "path": str(path),
        }
        for path, m in records
    ]
    cols = [
        "run",
        "arch",
        "dataset",
        "eval",
        "metric",
        "value",
        "best_value",
        "n_train",
        "n_test",
        "checkpoint",
        "checkpoint_sha256",
        "wall_s",
        "path",
    ]
    return pd.DataFrame(rows, columns=cols)


def mark_stale(df: pd.DataFrame, results: str | Path, run_dirs: Mapping[str, Path] | None = None) -> pd.DataFrame:
    """Flag results whose checkpoint changed since they were computed, or is older than the run's newest
    checkpoint (a run trained further, or re-trained, after its evaluation).

    Args:
        results: the results folder (a checkpoint path recorded relative is relative to its parent).
        run_dirs: the run folders by name (default: :func:`run_folders` of ``results``).
    """
    dirs = run_folders(results) if run_dirs is None else run_dirs
    hashes: dict[str, str | None] = {}

    def current(path: str) -> str | None:
        if path not in hashes:
            hashes[path] = file_sha256(path) if Path(path).is_file() else None
        return hashes[path]

    stale = []
    for _, r in df.iterrows():
        ck = r["checkpoint"]
        if not ck or not isinstance(ck, str):  # random init: never stale
            stale.append(False)
            continue
        if not Path(ck).is_absolute():  # recorded relative to the workflow's directory, which holds results/
            ck = str(Path(results).parent / ck)
        run_dir = dirs.get(r["run"])
        newest = max((p.stat().st_mtime for p in Path(run_dir).glob("*.pth")), default=None) if run_dir else None
        changed = current(ck) != r["checkpoint_sha256"]
        older = newest is not None and Path(ck).is_file() and Path(ck).stat().st_mtime < newest - 1
        stale.append(bool(changed or older))
    return df.assign(stale=stale)


def paper_table(path: str | Path = PAPER_CSV) -> pd.DataFrame:
    return pd.read_csv(path)


def run_descriptions(results: str | Path, df: pd.DataFrame, run_dirs: Mapping[str, Path] | None = None) -> pd.DataFrame:
    """Per run: arch, the paper's (arch, window, tasks) it corresponds to, the total batch it was pretrained at,
    and where that came from (a run pretrained here: its folder's config.yaml; ``run_dirs`` default to
    :func:`run_folders` of ``results``)."""
    dirs = run_folders(results) if run_dirs is None else run_dirs
    rows = []
    for run, arch in df.groupby("run")["arch"].first().items():
        cfg_path = Path(dirs[run]) / "config.yaml" if run in dirs else None
        tasks, batch = None, None
        source = "a checkpoint without an import record (tasks unknown: re-import it with `esvit import`)"
        if cfg_path is not None and cfg_path.is_file():
            cfg = yaml.safe_load(cfg_path.read_text())
            tasks = "V+R" if cfg.get("loss", {}).get("region_loss_weight", 0) > 0 else "V"
            arch = cfg.get("model", {}).get("arch", arch)
            source = f"pretrained here ({cfg.get('optim', {}).get('epochs')} epochs)"
            batch = _total_batch(cfg, Path(dirs[run]))
        elif run.endswith("_random"):
            tasks, source = None, "random initialisation"
        else:  # a released / imported checkpoint: the tasks its official run trained, from its import record
            record = next(filter(None, map(read_import_record, _checkpoints(df, run, results))), None)
            arch = record.get("arch", arch) if record else arch
            if record and record.get("tasks"):
                tasks, source = record["tasks"], f"imported ({record['tasks']}: the official run's own arguments)"
            elif record and record.get("format") == "timm":
                source = "imported timm weights (supervised)"
            elif record:
                source = "imported (its arguments do not say V or V+R: no paper row)"
        paper_arch, window = PAPER_ARCH.get(arch, (None, None))
        rows.append(
            {
                "run": run,
                "arch": arch,
                "paper_arch": paper_arch,
                "window": window,
                "tasks": tasks,
                "source": source,
                "batch": batch,
            }
        )
    out = pd.DataFrame(rows, columns=["run", "arch", "paper_arch", "window", "tasks", "source", "batch"])
    return out.astype({"batch": "Int64"})


def _total_batch(cfg: dict, run_dir: Path) -> int | None:
    """The total batch a run trained at: ``optim.total_batch_size``, else the per-device batch times the
    processes its ``done.json`` names (None for a run not finished or not recorded)."""
    optim = cfg.get("optim", {})
    if optim.get("total_batch_size"):
        return int(optim["total_batch_size"])
    per_device = optim.get("batch_size_per_device")
    try:
        world = json.loads((run_dir / "done.json").read_text()).get("world_size")
    except (OSError, ValueError):
        world = None
    return int(per_device) * int(world) if per_device and world else None


def _checkpoints(df: pd.DataFrame, run: str, results: str | Path) -> list[Path]:
    """The checkpoint files a run's results were computed from (relative paths: relative to the workflow folder,
    which holds ``results``)."""
    paths = []
    for ck in df[df.run == run]["checkpoint"].dropna().unique():
        if isinstance(ck, str) and ck:
            paths.append(Path(ck) if Path(ck).is_absolute() else Path(results).parent / ck)
    return paths


def _paper_row(paper: pd.DataFrame, desc: pd.Series) -> pd.Series | None:
    if desc["paper_arch"] is None or desc["tasks"] is None:
        return None
    rows = paper[
        (paper.method == "EsViT")
        & (paper.arch == desc["paper_arch"])
        & (paper.tasks == desc["tasks"])
        & (paper.pretrain_data == "ImageNet-1K")
    ]
    if pd.notna(desc["window"]):  # (None becomes NaN in the descriptions' frame: an arch without a window)
        rows = rows[rows.window == desc["window"]]
    rows = rows.sort_values("table")  # Table 1 (the headline) first
    batch = desc.get("batch")
    for table, table_batch in ARCH_TABLE_BATCH.items():  # a run at Table 4's batch: its Table 4 row first
        if pd.notna(batch) and int(batch) == table_batch and (rows.table == table).any():
            rows = rows[rows.table == table]
    return rows.iloc[0] if len(rows) else None


def _paper_label(ref: pd.Series) -> str:
    """``Table 4: EsViT Swin-T/W7 V+R`` (no window for an architecture without one)."""
    window = f"/W{int(ref['window'])}" if pd.notna(ref["window"]) else ""
    return f"Table {ref['table']}: EsViT {ref['arch']}{window} {ref['tasks']}"


def imagenet_table(
    df: pd.DataFrame, desc: pd.DataFrame, paper: pd.DataFrame, dataset: str = "imagenet"
) -> pd.DataFrame:
    """ImageNet linear / k-NN per run beside the matching paper row, with the deltas."""
    rows = []
    for _, d in desc.iterrows():
        mine = df[(df.run == d["run"]) & (df.dataset == dataset)]
        linear = mine[mine["eval"] == "linear"]["value"]
        knn = mine[mine["eval"] == "knn"]["value"]
        ref = _paper_row(paper, d)
        row = {
            "run": d["run"],
            "arch": d["arch"],
            "tasks": d["tasks"] or "—",
            "linear": linear.iloc[0] if len(linear) else None,
            "knn": knn.iloc[0] if len(knn) else None,
            "paper_row": _paper_label(ref) if ref is not None else "—",
            "paper_linear": ref["imagenet_linear"] if ref is not None else None,
            "paper_knn": ref["imagenet_knn"] if ref is not None else None,
        }
        row["delta_linear"] = (
            row["linear"] - row["paper_linear"]
            if row["linear"] is not None and row["paper_linear"] is not None
            else None
        )
        row["delta_knn"] = (
            row["knn"] - row["paper_knn"] if row["knn"] is not None and row["paper_knn"] is not None else None
        )
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class TransferTable:
    table: pd.DataFrame  # datasets x runs (value), plus "average" (over the whole suite) and "present" rows
    metric: dict[str, str]  # dataset -> metric name
    wins: dict[str, int] = field(default_factory=dict)  # run -> datasets where it beats the baseline
    baseline: str | None = None
    missing: list[tuple[str, str]] = field(default_factory=list)  # (run, dataset) without a result
    compared: dict[str, int] = field(default_factory=dict)  # run -> datasets where it and the baseline both have one
    suite_size: int = 0  # datasets the average is over


def transfer_suite(datasets: list[str]) -> tuple[list[str], list[str]]:
    """(the datasets a transfer average is taken over, the others shown beside them): the 18-set suite when
    any result is on one of its sets (so a set with no result at all still counts as missing, and a set outside
    the suite never enters its average), else every dataset present."""
    from esvit.data.transfer import load_registry

    suite = list(load_registry())
    if set(datasets) & set(suite):
        return suite, sorted(set(datasets) - set(suite))
    return sorted(datasets), []


def transfer_table(
    df: pd.DataFrame,
    eval_name: str = "probe",
    baseline: str | None = None,
    exclude: tuple[str, ...] = ("imagenet",),
    suite: list[str] | None = None,
) -> TransferTable:
    """Datasets as rows, runs as columns (the paper's Figure 3 / Table 3), with the average and #wins.

    Rows are the whole ``suite`` (default :func:`transfer_suite`), then any other dataset; the average is over
    the suite only and missing (—) while any of its sets is; the "present" row says how many of the suite's sets
    each run has. Wins count the suite's sets where both the run and the baseline have a result.
    """
    sub = df[(df["eval"] == eval_name) & ~df.dataset.isin(exclude)]
    if sub.empty:
        return TransferTable(pd.DataFrame(), {}, {}, baseline, [])
    table = sub.pivot_table(index="dataset", columns="run", values="value", aggfunc="first")
    rows, extras = (
        (suite, sorted(set(table.index) - set(suite))) if suite is not None else transfer_suite(list(table.index))
    )
    if eval_name == "knn":  # k-NN classification has no multi-label set (VOC 2007)
        from esvit.data.transfer import load_registry

        rows = [d for d in rows if not load_registry().get(d, {}).get("multilabel")]
    rows = [d for d in rows if d not in exclude]
    table = table.reindex(rows + extras)
    metric = sub.groupby("dataset")["metric"].first().to_dict()
    missing = [(r, d) for d in rows + extras for r in table.columns if pd.isna(table.loc[d, r])]
    in_suite = table.loc[rows]
    table.loc["average"] = in_suite.mean(axis=0, skipna=False)  # over fewer datasets it would not be comparable
    table.loc["present"] = in_suite.notna().sum(axis=0).astype(float)
    wins, compared = {}, {}
    if baseline and baseline in table.columns:
        for run in table.columns:
            if run != baseline:
                both = in_suite[run].notna() & in_suite[baseline].notna()
                wins[run] = int(
                    (in_suite[run][both] > in_suite[baseline][both]).sum()
                )  # as the paper counts: strictly better
                compared[run] = int(both.sum())
    return TransferTable(
        table, metric, wins, baseline if baseline in table.columns else None, missing, compared, len(rows)
    )


def linear_table(df: pd.DataFrame) -> pd.DataFrame:
    """The linear protocol (last-4-blocks) per dataset and run: top-1 after the last epoch and the best epoch's."""
    sub = df[df["eval"] == "linear"]
    cols = ["dataset", "run", "arch", "top1_last", "top1_best", "n_train", "n_test"]
    if sub.empty:
        return pd.DataFrame(columns=cols)
    out = sub.rename(columns={"value": "top1_last", "best_value": "top1_best"})[cols]
    return out.sort_values(["dataset", "run"]).reset_index(drop=True)


def ablation_table(
    df: pd.DataFrame, results: str | Path, correspondence: dict[str, dict], run_dirs: Mapping[str, Path] | None = None
) -> pd.DataFrame:
    """The view-only vs view + region ablation, as the paper's Table 5: one row per run pretrained here with the
    same architecture and crops as another run that differs in ``loss.region_loss_weight`` (any seed), the
    random initialisation of that architecture, and the mean of each task over its seeds. Columns: k-NN and
    probe (and linear protocol) top-1 per dataset, and the region correspondence accuracy. Empty when no
    such pair of runs exists. The runs pretrained here are ``run_dirs`` (default: :func:`run_folders` of
    ``results``)."""
    dirs = run_folders(results) if run_dirs is None else run_dirs
    runs = []
    for path in sorted(p for p in (Path(d) / "config.yaml" for d in dirs.values()) if p.is_file()):
        cfg = yaml.safe_load(path.read_text()) or {}
        key = (cfg.get("model", {}).get("arch"), cfg.get("crops", {}).get("global_size"))
        weight = float(cfg.get("loss", {}).get("region_loss_weight", 0) or 0)
        runs.append(
            {
                "run": path.parent.name,
                "key": key,
                "tasks": "V+R" if weight > 0 else "V",
                "seed": cfg.get("run", {}).get("seed", 0),
            }
        )
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["key"], []).append(r)
    rows: list[dict] = []
    for (arch, _size), members in groups.items():
        if {m["tasks"] for m in members} != {"V", "V+R"}:
            continue
        random = [r for r in df[df.arch == arch].run.unique() if r.endswith("_random")]
        members = sorted(members, key=lambda m: (m["tasks"] != "V", m["seed"], m["run"]))
        rows += [{"run": r, "tasks": "random init", "seed": None} for r in random[:1]]
        rows += [{"run": m["run"], "tasks": m["tasks"], "seed": m["seed"]} for m in members]
    if not rows:
        return pd.DataFrame()
    cols: list[tuple[str, str]] = []
    for ev in ("knn", "probe", "linear"):
        for dataset in sorted(df[df["eval"] == ev].dataset.unique()):
            cols.append((ev, dataset))
    table = []
    for row in rows:
        mine = df[df.run == row["run"]]
        for ev, dataset in cols:
            v = mine[(mine["eval"] == ev) & (mine.dataset == dataset)]["value"]
            row[f"{ev} {dataset}"] = float(v.iloc[0]) if len(v) else None
        c = correspondence.get(row["run"]) or {}
        row["correspondence_%"] = c.get("accuracy")
        table.append(row)
    out = pd.DataFrame(table)
    means = []
    for tasks in ("V", "V+R"):
        part = out[out.tasks == tasks]
        if len(part) > 1:
            mean = part.drop(columns=["run", "tasks", "seed"]).mean(numeric_only=True).to_dict()
            means.append({"run": f"{tasks}, mean of {len(part)} seeds", "tasks": tasks, "seed": None, **mean})
    out = pd.concat([out, pd.DataFrame(means)], ignore_index=True) if means else out
    return out.astype({"seed": "Int64"})
