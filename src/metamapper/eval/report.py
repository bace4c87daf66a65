"""Results as JSON, a markdown table, and matplotlib plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pct(x: object) -> str:
    return "—" if not isinstance(x, (int, float)) or x != x else f"{100 * x:.1f}"


def _interval(ci: object) -> tuple[float, float] | None:
    """A result's ``ci95`` as ``(low, high)``; None when absent or not finite."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
            isinstance(x, (int, float)) and x == x for x in ci):
        return float(ci[0]), float(ci[1])
    return None


def format_accuracy(accuracy: object, ci95: object) -> str:
    """``"50.0 (28.0–72.0)"``: the accuracy in percent with its (asymmetric) 95% interval.

    Results written before intervals were asymmetric hold a half-width: ``"50.0 ± 10.0"``.

    Example::

        >>> format_accuracy(0.0, (0.0, 0.1611))
        '0.0 (0.0–16.1)'
    """
    acc = _pct(accuracy)
    ci = _interval(ci95)
    if ci is not None:
        return f"{acc} ({_pct(ci[0])}–{_pct(ci[1])})"
    if isinstance(ci95, (int, float)) and ci95 == ci95:  # an older result: a half-width
        return f"{acc} ± {_pct(ci95)}"
    return acc


def result_name(row: dict[str, Any]) -> str | None:
    """What a result is called in a comparison: its ``label``, else the run it scored
    (``--checkpoint`` as given, else the run folder's name) and the checkpoint's step; None when
    it records neither.

    Example::

        >>> result_name({"source": "runs/a", "checkpoint": {"run": "/x/runs/a", "step": 40}})
        'runs/a@40'
    """
    if row.get("label"):
        return str(row["label"])
    ckpt = row.get("checkpoint")
    ckpt = ckpt if isinstance(ckpt, dict) else {}  # a result from before checkpoint records
    run = row.get("source") or Path(str(ckpt.get("run") or row.get("run") or "")).name
    if not run:
        return None
    return f"{run}@{ckpt['step']}" if ckpt.get("step") is not None else str(run)


def _series(row: dict[str, Any]) -> str:
    """A result's line in a plot: its label, else its run and method, else its method."""
    if row.get("label"):
        return str(row["label"])
    name = result_name(row)
    return f"{name} ({row.get('method')})" if name else str(row.get("method"))


def load_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The result rows of results files: ``metamapper evaluate --out`` (one result) or a list of
    them (the demo's ``results.json``). Files written before results recorded their provenance
    load too (the missing fields show as blanks).

    Raises:
        ValueError: a file is not JSON or holds no result (names the file).
    """
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a results file (not JSON: {e})") from None
        items = data if isinstance(data, list) else [data]
        if not items or not all(isinstance(r, dict) and "accuracy" in r for r in items):
            raise ValueError(f"{path} is not a results file (expected a result with an "
                             "'accuracy', or a list of them)")
        rows += items
    return rows


def _cell(x: object) -> str:
    return "—" if x is None or x == "" else str(x)


def results_table(rows: Sequence[dict[str, Any]], *, compare: bool = False) -> str:
    """A markdown table: one row per (method, dataset, ways, shots) result.

    The accuracy cell holds the 95% interval in brackets; a split other than ``test`` is named
    after the dataset (``"open_ended_mi (val)"``).

    With ``compare=True`` (``metamapper report``), results of several runs side by side: a
    column naming each result (``result_name``), then dataset, split, ways, shots, method,
    accuracy and tasks.
    """
    if compare:
        lines = ["| result | dataset | split | ways | shots | method | accuracy % (95% CI) | tasks |",
                 "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {_cell(result_name(r))} | {_cell(r.get('dataset'))} | {_cell(r.get('split'))} | "
                  f"{_cell(r.get('ways'))} | {_cell(r.get('shots'))} | {_cell(r.get('method'))} | "
                  f"{format_accuracy(r.get('accuracy'), r.get('ci95'))} | {_cell(r.get('n_tasks'))} |"
                  for r in rows]
        return "\n".join(lines)
    head = ("| method | dataset | ways | shots | accuracy % (95% CI) | 0 steps % | tasks |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        split = r.get("split", "test")
        dataset = f"{r.get('dataset', '')}" + (f" ({split})" if split != "test" else "")
        lines.append(
            f"| {r.get('label', r.get('method'))} | {dataset} | {r.get('ways', '')} | "
            f"{r.get('shots', '')} | {format_accuracy(r.get('accuracy'), r.get('ci95'))} | "
            f"{_pct(r.get('accuracy_0_steps'))} | {r.get('n_tasks', '')} |"
        )
    return "\n".join(lines)


def _error_bar(accuracy: float, ci95: object) -> tuple[float, float]:
    """Distances below and above the accuracy to its interval's ends (0 when unknown)."""
    ci = _interval(ci95)
    if ci is not None:
        return max(0.0, accuracy - ci[0]), max(0.0, ci[1] - accuracy)
    half = ci95 if isinstance(ci95, (int, float)) and ci95 == ci95 else 0.0
    return half, half


def write_results(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """The result rows as a JSON list."""
    Path(path).write_text(json.dumps(list(rows), indent=2))


def write_samples(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Per-query records (``fewshot.query_record``) as JSON lines, one per query."""
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records))
    return Path(path)


def plot_accuracy_vs_shots(rows: Sequence[dict[str, Any]], path: str | Path, *,
                           chance: float | None = 0.5) -> Path:
    """One panel per dataset: accuracy (with its 95% interval) against shots, a line per result
    label (rows without one: per run and method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r.get("dataset", "") for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        sub = [r for r in rows if r.get("dataset", "") == ds]
        for label in dict.fromkeys(_series(r) for r in sub):
            pts = sorted((r["shots"], r["accuracy"], _error_bar(r["accuracy"], r.get("ci95")))
                         for r in sub if _series(r) == label)
            xs = [p[0] for p in pts]
            yerr = [[100 * p[2][0] for p in pts], [100 * p[2][1] for p in pts]]  # (below, above)
            ax.errorbar(xs, [100 * p[1] for p in pts], yerr=yerr, marker="o", capsize=3, label=label)
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
