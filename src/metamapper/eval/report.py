"""Results as JSON, a markdown table, and matplotlib plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pct(x: object) -> str:
    return "—" if not isinstance(x, (int, float)) or x != x else f"{100 * x:.1f}"


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table: one row per (method, dataset, ways, shots) result."""
    head = ("| method | dataset | ways | shots | accuracy % | 95% CI ± | 0 steps % | tasks |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.get('label', r.get('method'))} | {r.get('dataset', '')} | {r.get('ways', '')} | "
            f"{r.get('shots', '')} | {_pct(r.get('accuracy'))} | {_pct(r.get('ci95'))} | "
            f"{_pct(r.get('accuracy_0_steps'))} | {r.get('n_tasks', '')} |"
        )
    return "\n".join(lines)


def write_results(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    Path(path).write_text(json.dumps(list(rows), indent=2))


def plot_accuracy_vs_shots(rows: Sequence[dict[str, Any]], path: str | Path, *,
                           chance: float | None = 0.5) -> Path:
    """One panel per dataset: accuracy (with 95% CI) against shots, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r.get("dataset", "") for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        sub = [r for r in rows if r.get("dataset", "") == ds]
        for label in dict.fromkeys(r.get("label", r["method"]) for r in sub):
            pts = sorted((r["shots"], r["accuracy"], r["ci95"]) for r in sub
                         if r.get("label", r["method"]) == label)
            xs = [p[0] for p in pts]
            ax.errorbar(xs, [100 * p[1] for p in pts], yerr=[100 * (p[2] or 0) for p in pts],
                        marker="o", capsize=3, label=label)
        if chance is not None:
            ax.axhline(100 * chance, color="grey", ls="--", lw=1, label="chance")
        ax.set_title(ds)
        ax.set_xlabel("shots")
        ax.set_ylabel("exact match %")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_training_curves(metrics_file: str | Path, path: str | Path) -> Path:
    """Training loss and validation accuracy from a run's ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    train = [r for r in recs if "loss" in r]
    val = [r for r in recs if "val_accuracy" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    ax[0].set_xlabel("meta-update")
    ax[0].set_ylabel("query loss")
    ax[1].plot([r["step"] for r in val], [100 * r["val_accuracy"] for r in val], marker="o")
    ax[1].set_xlabel("meta-update")
    ax[1].set_ylabel("validation exact match %")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
