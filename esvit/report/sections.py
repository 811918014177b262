"""The report's sections, in order: each a heading, its notes and its table or figures (:mod:`esvit.report.render`
draws them as markdown and as HTML)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from esvit.report.render import Code, Detail, Figures, Section, Table
from esvit.report.tables import TransferTable

__all__ = ["ReportData", "report_sections", "shown_transfer", "correspondence_table", "CORRESPONDENCE_NOTE"]

TRANSFER_TITLES = {"probe": "Transfer: linear probe", "knn": "Transfer: k-NN top-1"}
CORRESPONDENCE_NOTE = (
    "Fraction of the student regions of view B (a random crop of 40-100 % of view A, resized and colour-jittered) "
    "whose most similar teacher region in view A (the whole image) is the geometrically correct one, at the "
    "resolution given (chance: 1 / regions). Paper: 95 % DINO DeiT-S, 66 % multi-stage view-only, 91 % with the "
    "region loss."
)


@dataclass
class ReportData:
    """What the sections show (built by :func:`esvit.report.build.build_report`).

    Attributes:
        results: the results folder named on the page; n_metrics: how many metrics records were read.
        runs: the run descriptions; imagenet: ImageNet per run beside the paper (``has_imagenet``: any value).
        headline, architectures, transfer_ref, paper_ablation: the paper's Tables 1, 4, 3 and 5 (Table 4, the
            architectures at batch 1024, is shown when a run meets one of its rows).
        transfer: per evaluation (probe, knn) with results, its table and the table as shown.
        correspondence: each model's correspondence record; correspondence_table: them as a table.
        figures: (PNG, caption); out: the report folder (the markdown links only the figures in it).
    """

    results: Path
    n_metrics: int
    runs: pd.DataFrame
    imagenet: pd.DataFrame
    has_imagenet: bool
    headline: pd.DataFrame
    architectures: pd.DataFrame
    transfer: dict[str, tuple[TransferTable, pd.DataFrame]]
    linear: pd.DataFrame
    transfer_ref: pd.DataFrame
    ablation: pd.DataFrame
    paper_ablation: pd.DataFrame
    correspondence: dict[str, dict]
    correspondence_table: pd.DataFrame
    stale: pd.DataFrame
    figures: list[tuple[Path, str]]
    out: Path


def _registry_metric(dataset: str) -> str:
    """A transfer set's metric from the registry (for a row with no result yet)."""
    from esvit.data.transfer import load_registry

    return load_registry().get(dataset, {}).get("metric", "")


def shown_transfer(t: TransferTable) -> pd.DataFrame:
    """A transfer table as shown: the metric of each row first, and "present" as a count of the suite."""
    shown = t.table.copy().astype(object)
    shown.loc["present"] = [f"{int(v)}/{t.suite_size}" for v in t.table.loc["present"]]
    default = {"average": f"over all {t.suite_size}", "present": ""}
    shown.insert(0, "metric", [t.metric.get(d, default.get(d, _registry_metric(d))) for d in shown.index])
    return shown


def correspondence_table(corr: dict[str, dict]) -> pd.DataFrame:
    """One row per model's correspondence record."""
    return pd.DataFrame(
        [
            {
                "run": r,
                "accuracy_%": c["accuracy"],
                "chance_%": c.get("chance"),
                "regions_per_view": c.get("regions_per_view"),
                "images": c.get("pairs"),
                "image_size": c.get("image_size"),
            }
            for r, c in corr.items()
        ]
    )


def _ablation_note(ablation: pd.DataFrame, corr: dict[str, dict]) -> str:
    sizes = sorted(
        {
            f"{c['image_size']} px ({int(c['regions_per_view'] ** 0.5)} x {int(c['regions_per_view'] ** 0.5)} "
            f"regions, chance {100 / c['regions_per_view']:.1f} %)"
            for r, c in corr.items()
            if r in set(ablation.run) and c.get("regions_per_view")
        }
    )
    return (
        "The same architecture, crops and budget trained with the view loss only (V, region_loss_weight 0) and "
        "with the view and region losses (V+R, 0.5), beside its random initialisation; top-1 on the held-out "
        "test images, and the correspondence accuracy at the training resolution: "
        + ("; ".join(sizes) or "—")
        + ". The paper (Swin, ImageNet-1K, Table 5 and its correspondence study): V+R adds 0.8-1.5 points of "
        "linear and k-NN top-1 and lifts the correspondence accuracy from 66 % to 91 %."
    )


def _transfer_sections(d: ReportData) -> list[Section]:
    sections = []
    for ev, (t, shown) in d.transfer.items():
        blocks = [Table(shown, f"transfer {ev}")]
        if t.baseline:
            wins = ", ".join(f"{r} {n} of {t.compared[r]} compared" for r, n in t.wins.items())
            blocks.append(
                (
                    "Wins against ",
                    Code(t.baseline),
                    " (datasets where the run scores higher",
                    Detail(", as the paper counts them"),
                    "): " + wins,
                )
            )
        if t.missing:
            blocks.append(("Missing (—): " + ", ".join(f"{r}/{ds}" for r, ds in t.missing),))
        sections.append(Section((TRANSFER_TITLES[ev], Detail(" (datasets x runs)")), 2, blocks))
    return sections


def report_sections(d: ReportData) -> list[Section]:
    """The report, top to bottom."""
    sections = [
        Section(
            ("EsViT pipeline report",),
            1,
            [("Results read: ", f"{d.n_metrics} metrics files under ", Code(str(d.results)), ".")],
        )
    ]
    if len(d.runs):
        sections.append(Section(("Runs",), 2, [Table(d.runs.set_index("run"), "runs")]))
    sections.append(
        Section(
            ("ImageNet-1K: this project beside the paper",),
            2,
            [
                Table(d.imagenet.set_index("run"), "imagenet")
                if d.has_imagenet
                else ("No ImageNet results yet (add ", Code("imagenet"), " to eval.linear_datasets / eval.datasets)."),
            ],
        )
    )
    sections.append(
        Section(
            ("The paper's Table 1", Detail(" (ImageNet-1K linear / k-NN top-1, throughput)")),
            3,
            [Table(d.headline, "paper", index=False)],
        )
    )
    if d.has_imagenet and d.imagenet["paper_row"].astype(str).str.startswith("Table 4").any():
        sections.append(
            Section(
                ("The paper's Table 4", Detail(" (architectures at batch 1024: ImageNet-1K linear / k-NN top-1)")),
                3,
                [Table(d.architectures, "paper", index=False)],
            )
        )
    sections += _transfer_sections(d)
    if len(d.linear):
        sections.append(
            Section(
                (
                    "Linear protocol (last-4-blocks",
                    Detail(" features, top-1 after the last epoch and the best epoch's"),
                    ")",
                ),
                2,
                [Table(d.linear, "linear", index=False)],
            )
        )
    sections.append(
        Section(
            ("The paper's Table 3", Detail(" (18-dataset average and #wins vs supervised)")),
            3,
            [Table(d.transfer_ref, "paper", index=False)],
        )
    )
    if len(d.ablation):
        sections.append(
            Section(
                ("View vs view + region (ablation)",),
                2,
                [(_ablation_note(d.ablation, d.correspondence),), Table(d.ablation, "ablation", index=False)],
            )
        )
        sections.append(
            Section(
                ("The paper's Table 5", Detail(" (ImageNet-1K linear / k-NN top-1)")),
                3,
                [Table(d.paper_ablation, "paper", index=False)],
            )
        )
    if d.correspondence:
        sections.append(
            Section(
                ("Region correspondence",),
                2,
                [(CORRESPONDENCE_NOTE,), Table(d.correspondence_table.set_index("run"), "correspondence")],
            )
        )
    sections.append(
        Section(
            ("Stale results",),
            2,
            [
                Table(d.stale, "stale", index=False)
                if len(d.stale)
                else ("None", Detail(": every result used its run's newest checkpoint"), "."),
            ],
        )
    )
    sections.append(Section(("Figures",), 2, [Figures(d.figures, d.out)]))
    return sections
