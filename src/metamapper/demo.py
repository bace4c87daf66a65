"""``metamapper demo``: the main job on the embedded default, end to end.

On the offline pretrained backbones (EfficientNet-Lite0 + SmolLM2-135M) and Fashion-MNIST:
fill the feature cache, meta-train the default method on the six meta-training classes, train the
baselines (the paper's MAML recipe, the non-episodic mapper, the untrained mapper), evaluate all
of them on the four held-out classes (Open-Ended and Real-Name, 2-way 1- and 5-shot), print the
table, and write ``results.json``, ``results.md`` and the plots into the run folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from metamapper.config import Config, config_from_dict
from metamapper.data.sources import evaluation_tasks
from metamapper.eval.report import (
    plot_accuracy_vs_shots,
    plot_training_curves,
    results_table,
    write_results,
)
from metamapper.eval.run import evaluate_run
from metamapper.pretrained import load_run
from metamapper.runs import has_run
from metamapper.train import episodic, standard


@dataclass(frozen=True)
class DemoPlan:
    main_overrides: tuple[str, ...]
    maml_overrides: tuple[str, ...]
    standard_overrides: tuple[str, ...]
    main_tasks: int  # evaluation tasks per 1-shot setting for the main method
    main_tasks_5shot: int  # ... per 5-shot setting (a 5-shot task costs ~3x a 1-shot one)
    baseline_tasks: int  # evaluation tasks per 1-shot setting for the baselines
    baseline_tasks_5shot: int  # ... per 5-shot setting (the paper's MAML: ~3 s per 5-shot task); 0: none


FULL = DemoPlan(  # the default config as it is (a fixed number of updates: the same model on any machine)
    main_overrides=("train.val_tasks=50",),
    maml_overrides=("train.updates=20",),
    standard_overrides=("train.updates=50",),
    main_tasks=1000,
    main_tasks_5shot=150,
    baseline_tasks=20,
    baseline_tasks_5shot=10,
)
QUICK = DemoPlan(  # a few minutes: shows the whole job; so short a run is at the edge of taking off
    main_overrides=("train.cosine=false", "train.lr=0.002", "train.updates=40", "train.meta_batch=16",
                    "data.images_per_class=150", "train.val_every=0"),
    maml_overrides=("train.updates=3", "data.images_per_class=150"),
    standard_overrides=("train.updates=5", "data.images_per_class=150"),
    main_tasks=60,
    main_tasks_5shot=12,
    baseline_tasks=6,
    baseline_tasks_5shot=0,
)

# The paper's recipes override the default: the paper's mapper block (post-LN, raw features, raw
# output; the exact preset needs widths that 1280 / 576 do not have), a constant rate, no
# regularisers, the LM in float32 (configs/fashion_maml.yaml).
PAPER_MAPPER = (
    "mapper.ff_dim=null", "mapper.norm_first=false", "mapper.standardize=false", "mapper.output_norm=false",
    "train.cosine=false", "train.spread_weight=0", "train.geometry_weight=0", "train.lm_dtype=float32",
)
MAML_RECIPE = (  # the paper's recipe, faithfully: first-order MAML, 5 SGD steps at 0.01
    *PAPER_MAPPER, "train.method=maml", "train.meta_batch=4", "train.inner.steps=5",
    "train.inner.lr=0.01", "train.inner.first_order=true", "train.val_every=0",
    "data.queries_per_class=1",
)
STANDARD_RECIPE = (*PAPER_MAPPER, "train.method=standard", "data.naming=real",
                   "train.meta_batch=32", "train.val_every=0")


def _finished_rows(path: Path) -> dict[tuple[object, ...], dict[str, object]]:
    if not path.is_file():
        return {}
    import json

    rows = json.loads(path.read_text())
    return {(r["label"], r["dataset"], r["shots"], r["n_tasks"]): r for r in rows}


def demo_config(*overrides: str) -> Config:
    """The embedded default config (``Config()``) with overrides."""
    return config_from_dict({}, list(overrides))


def run_demo(*, quick: bool = False, out: str | Path = "runs/demo",
             device: str | None = None) -> list[dict[str, object]]:
    """Train and evaluate everything (on ``device``, default ``auto``); returns the result rows
    (also written to ``out``)."""
    plan = QUICK if quick else FULL
    out = Path(out)
    on = (f"runtime.device={device}",) if device else ()  # every run computes there
    t0 = time.time()
    print(f"metamapper demo ({'quick' if quick else 'full'}): EfficientNet-Lite0 + SmolLM2-135M on "
          f"Fashion-MNIST; meta-train on 6 classes, test on 4 held-out classes. Output: {out}/")
    runs = {
        "in-context (ours, default)": (out, demo_config(*plan.main_overrides, *on), episodic.train),
        "paper MAML (faithful)": (out / "baselines" / "maml",
                                  demo_config(*MAML_RECIPE, *plan.maml_overrides, *on), episodic.train),
        "non-episodic": (out / "baselines" / "standard",
                         demo_config(*STANDARD_RECIPE, *plan.standard_overrides, *on), standard.train),
        "untrained mapper": (out / "baselines" / "untrained",  # the main config, 0 updates
                             demo_config(*plan.main_overrides, "train.updates=0", "train.val_every=0", *on),
                             episodic.train),
    }
    for label, (run_dir, cfg, train_fn) in runs.items():
        print(f"\n== training: {label}")
        train_fn(cfg, run_dir, resume=has_run(run_dir))  # a rerun continues what is there
    rows: list[dict[str, object]] = []
    settings = [(ds, shots) for ds in ("fashion-open-ended", "fashion-real-name") for shots in (1, 5)]
    base = {1: plan.baseline_tasks, 5: plan.baseline_tasks_5shot}  # evaluation tasks per shot count
    evals = [
        ("in-context (ours, default)", "in-context (ours, default)", "in-context",
         {1: plan.main_tasks, 5: plan.main_tasks_5shot}),
        ("paper MAML (faithful)", "paper MAML (faithful)", "maml", base),
        ("meta-learned init, no adaptation", "paper MAML (faithful)", "no-adapt", base),
        ("non-episodic", "non-episodic", "no-adapt", base),
        ("untrained mapper, in-context", "untrained mapper", "in-context", base),
    ]
    done = _finished_rows(out / "results.json")  # a rerun keeps what an earlier run measured
    for label, trained, method, tasks_per_shots in evals:
        run_dir = runs[trained][0]
        run = None
        for ds, shots in settings:
            n_tasks = tasks_per_shots[shots]
            if n_tasks == 0:  # a setting the plan leaves out
                continue
            key = (label, ds, shots, n_tasks)
            if key in done:
                rows.append(done[key])
                continue
            run = run or load_run(run_dir, device=device)
            print(f"== evaluating: {label} on {ds} 2-way {shots}-shot ({n_tasks} tasks)")
            ts = evaluation_tasks(ds, data=None, ways=2, shots=shots, n_tasks=n_tasks)
            res = evaluate_run(run, ts, method=method, with_zero_steps=False)
            res.update(label=label, dataset=ds, run=str(run_dir))
            rows.append(res)
            write_results(rows, out / "results.json")  # finished work is never lost
    table = results_table(rows)
    write_results(rows, out / "results.json")
    cmd = "make demo QUICK=1" if quick else "make demo"
    (out / "results.md").write_text(f"Produced by `{cmd}` in {time.time() - t0:.0f} s.\n\n{table}\n")
    plot = plot_accuracy_vs_shots(rows, out / "accuracy_vs_shots.png")
    curves = plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    print("\n" + table)
    print(f"\nDone in {(time.time() - t0) / 60:.1f} min. Results: {out / 'results.json'}, "
          f"{out / 'results.md'}; plots: {plot}, {curves}; checkpoint: --checkpoint {out}")
    return rows
