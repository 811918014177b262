"""The report's figures (matplotlib, Agg): transfer bars (Figure 3 style), accuracy vs throughput (Figure 1
style) and training curves. Each function writes one PNG atomically and returns its path."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from esvit.atomic import atomic_path  # noqa: E402

__all__ = ["transfer_bars", "accuracy_vs_throughput", "training_curves"]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _empty(path: Path, text: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return _save(fig, path)


def transfer_bars(table: pd.DataFrame, runs: list[str], path: Path, metric: dict[str, str] | None = None) -> Path:
    """Per-dataset bars of the runs side by side (the paper's Figure 3); a missing result is marked "n/a"."""
    if table.empty or not runs:
        return _empty(path, "Transfer: no linear-probe results yet")
    data = table.drop(index=["average", "present"], errors="ignore")[runs]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(data) + 2), 3.6))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(data))]
        ax.bar(xs, data[run].fillna(0), width, label=run)
        for x, v in zip(xs, data[run]):
            if pd.isna(v):
                ax.text(x, 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="#a00")
    labels = [f"{d}\n({(metric or {}).get(d, '')})" if metric else d for d in data.index]
    ax.set_xticks(
        range(len(data)),
        labels,
        rotation=45 if len(data) > 4 else 0,
        ha="right" if len(data) > 4 else "center",
        fontsize=8,
    )
    ax.set_ylabel("linear probe score (%)")
    ax.set_title("Transfer: linear probe per dataset")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def accuracy_vs_throughput(paper: pd.DataFrame, ours: list[dict], path: Path) -> Path:
    """ImageNet linear top-1 vs inference throughput (the paper's Figure 1): the paper's Table 1 points and
    this project's runs that have both numbers (``ours``: dicts with label, throughput, linear)."""
    t1 = paper[(paper.table == 1) & paper.throughput_img_s.notna() & paper.imagenet_linear.notna()]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, g in t1.groupby("method"):
        ax.scatter(
            g.throughput_img_s,
            g.imagenet_linear,
            label=f"{method} (paper)",
            s=28,
            marker="*" if method == "EsViT" else "o",
        )
        for _, r in g.iterrows():
            ax.annotate(
                f"{r['arch']}{'/W' + str(int(r['window'])) if pd.notna(r['window']) else ''}",
                (r.throughput_img_s, r.imagenet_linear),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
    for p in ours:
        ax.scatter([p["throughput"]], [p["linear"]], marker="D", s=40, color="black")
        ax.annotate(
            p["label"] + " (this project)",
            (p["throughput"], p["linear"]),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("throughput (images/s, log scale; paper: one V100, batch 128)")
    ax.set_ylabel("ImageNet linear top-1 (%)")
    ax.set_title(
        "Accuracy vs throughput" + ("" if ours else " (no run of this project has both numbers yet)"), fontsize=9
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def read_log(path: str | Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def training_curves(logs: dict[str, pd.DataFrame], path: Path) -> Path:
    """Total, view and region loss, learning rate and teacher temperature per step, one line per run."""
    if not logs:
        return _empty(path, "No pretraining log (released checkpoints only)")
    panels = [
        ("loss", "total loss"),
        ("loss_view", "view loss L_V"),
        ("loss_region", "region loss L_R"),
        ("lr", "learning rate"),
        ("teacher_temp", "teacher temperature"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8))
    for ax, (key, title) in zip(axes, panels):
        for run, log in logs.items():
            if key in log and log[key].notna().any():
                ax.plot(log["step"], log[key], label=run, lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
