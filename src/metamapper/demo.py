"""``metamapper demo``: the main job on the embedded default, end to end.

On the offline pretrained backbones (EfficientNet-Lite0 + SmolLM2-135M): render the icons and
emoji corpora from their Debian packages if they are not rendered yet (docs/DATA.md), fill the
feature cache, meta-train the default (``Config()``, configs/broad.yaml: Fashion-MNIST's six
training classes, icons and emoji), evaluate it and the same mapper untrained (what
meta-training adds) the same way on the same test tasks (Fashion-MNIST's four held-out classes,
Open-Ended and Real-Name 2-way 1-shot, Open-Ended 5-shot; the corpora's held-out concepts,
Open-Ended 2-way 1-shot), print the table, and write ``results.json``, ``results.md`` and the
plots into the run folder. ``config`` runs the same job on another config
(``configs/fashion.yaml``: Fashion-MNIST only, no corpora needed).

The trained baselines at the default's compute (non-episodic captioning, an MLP mapper, the
paper's MAML) are compared over three seeds by ``metamapper study`` (docs/RESULTS.md), not here:
on a 2-core CPU the default's training alone takes most of the demo's 30 minutes, the
non-episodic baseline at equal compute ~25 more, and the paper's MAML hours.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from metamapper.config import Config, load_config
from metamapper.data.corpora import BUILDERS, PACKAGES, CorpusBuildError, ensure_corpus, is_built
from metamapper.data.mixture import source_parts
from metamapper.data.sources import evaluation_tasks
from metamapper.eval.report import (
    plot_accuracy_vs_shots,
    plot_training_curves,
    results_table,
    write_results,
)
from metamapper.eval.run import evaluate_run
from metamapper.loading import load_run
from metamapper.methods import get_method
from metamapper.runs import has_run, is_finished


@dataclass(frozen=True)
class DemoPlan:
    main_overrides: tuple[str, ...]
    tasks: int  # evaluation tasks per Fashion-MNIST 1-shot setting, the same for every method
    tasks_5shot: int  # ... per 5-shot setting (a 5-shot task costs ~3x a 1-shot one)
    tasks_corpora: int  # ... per held-out-concepts set of a rendered corpus the config trains on


FULL = DemoPlan(  # the default config as it is (a fixed number of updates: the same model on any machine)
    main_overrides=("train.val_tasks=50",),
    tasks=500,  # as the README's headline (docs/RESULTS.md): a 95% interval of about +-3.5 points
    tasks_5shot=100,
    tasks_corpora=300,
)
QUICK = DemoPlan(  # a few minutes: shows the whole job; so short a run is at the edge of taking off
    main_overrides=("train.cosine=false", "train.lr=0.002", "train.updates=40", "train.meta_batch=16",
                    "data.images_per_class=150", "train.val_every=0"),
    tasks=60,
    tasks_5shot=12,
    tasks_corpora=30,
)

def _finished_rows(path: Path) -> dict[tuple[object, ...], dict[str, object]]:
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())
    return {(r["label"], r["dataset"], r["shots"], r["n_tasks"]): r for r in rows}


def training_compute(cfg: Config, run_dir: Path) -> str:
    """``"150 updates x 32 tasks, 612 s"``: what a run trained on, and for how long (the last
    ``time_s`` of its ``metrics.jsonl``; absent for an untrained run)."""
    text = f"{cfg.train.updates} updates x {cfg.train.meta_batch} {get_method(cfg.train.method).unit}"
    log = run_dir / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    for line in reversed(lines):
        try:
            seconds = json.loads(line).get("time_s")
        except json.JSONDecodeError:  # a line cut by a crash: look further back
            continue
        if isinstance(seconds, (int, float)):
            return f"{text}, {seconds:.0f} s"
    return text


def demo_config(*overrides: str, config: str | Path | None = None) -> Config:
    """The embedded default config (``Config()``), or the YAML file ``config``, with overrides."""
    return load_config(config, list(overrides))


def _corpora(cfg: Config) -> dict[str, str | None]:
    """The rendered corpora (``corpora.BUILDERS``) ``cfg`` meta-trains on -> their folder (None:
    the default)."""
    return {name: part.root for name, part in source_parts(cfg.data).items() if name in BUILDERS}


def missing_packages(config: str | Path | None = None) -> list[str]:
    """The Debian packages of the corpora ``config`` (None: the default) meta-trains on that are
    not rendered yet (``make demo`` installs them as root before the demo renders them)."""
    missing = [name for name, root in _corpora(demo_config(config=config)).items() if not is_built(name, root)]
    return [pkg for name in missing for pkg in PACKAGES[name].split()]


def demo_settings(cfg: Config, plan: DemoPlan) -> list[tuple[str, int, int, str | None]]:
    """``(dataset, shots, tasks, data folder)`` the demo scores every method on: Fashion-MNIST's
    held-out classes (Open-Ended 1 and 5 shots, Real-Name 1 shot), and the held-out concepts of
    each rendered corpus ``cfg`` meta-trains on (Open-Ended, 1 shot)."""
    fashion = [("fashion-open-ended", 1, plan.tasks, None), ("fashion-open-ended", 5, plan.tasks_5shot, None),
               ("fashion-real-name", 1, plan.tasks, None)]
    return fashion + [(f"{name}-open-ended", 1, plan.tasks_corpora, root) for name, root in _corpora(cfg).items()]


def run_demo(*, quick: bool = False, out: str | Path = "runs/demo", device: str | None = None,
             config: str | Path | None = None) -> list[dict[str, object]]:
    """Train and evaluate everything (on ``device``, default ``auto``) for the default, or for
    the YAML config ``config``; returns the result rows (also written to ``out``)."""
    plan = QUICK if quick else FULL
    out = Path(out)
    on = (f"runtime.device={device}",) if device else ()  # every run computes there
    t0 = time.time()
    main = demo_config(*plan.main_overrides, *on, config=config)
    corpora = _corpora(main)
    print(f"metamapper demo ({'quick' if quick else 'full'}): {main.backbones.vision} + {main.backbones.lm}, "
          f"{config or 'the default'}: meta-train on {', '.join(source_parts(main.data))}; test on Fashion-MNIST's "
          f"4 held-out classes{' and held-out concepts' if corpora else ''}. Output: {out}/")
    for name, root in corpora.items():  # rendered once (minutes), before anything trains
        try:
            ensure_corpus(name, root)
        except CorpusBuildError as e:
            raise CorpusBuildError(f"{e} (`sudo make corpora` installs and renders them; or run the demo "
                                   "without them: metamapper demo --config configs/fashion.yaml)") from None
    runs = {  # the reference: the same mapper, untrained (trained baselines: metamapper study)
        f"{main.train.method} (ours, default)": (out, main),
        "untrained mapper": (out / "baselines" / "untrained",  # the main config, 0 updates
                             demo_config(*plan.main_overrides, "train.updates=0", "train.val_every=0", *on,
                                         config=config)),
    }
    for label, (run_dir, cfg) in runs.items():
        print(f"\n== training: {label}")
        # the recipe of the config's method; a rerun continues what is there
        get_method(cfg.train.method).train(cfg, run_dir, resume=has_run(run_dir))
        if not is_finished(run_dir, cfg.train.updates):  # a stop signal: nothing half-trained is scored
            print(f"== {label} stopped before update {cfg.train.updates}; rerun the demo to resume it")
            return []
    rows: list[dict[str, object]] = []
    done = _finished_rows(out / "results.json")  # a rerun keeps what an earlier run measured
    for label, (run_dir, _) in runs.items():  # one protocol for all: the main config's method
        run = None
        for ds, shots, n_tasks, data in demo_settings(main, plan):  # the same tasks for every method
            key = (label, ds, shots, n_tasks)
            if key in done:
                rows.append(done[key])
                continue
            run = run or load_run(run_dir, device=device)
            print(f"== evaluating: {label} on {ds} 2-way {shots}-shot ({n_tasks} tasks)")
            ts = evaluation_tasks(ds, data=data, ways=2, shots=shots, n_tasks=n_tasks)  # the test tasks
            res = evaluate_run(run, ts, method=main.train.method, with_zero_steps=False)
            res.update(label=label, run=str(run_dir))
            rows.append(res)
            write_results(rows, out / "results.json")  # finished work is never lost
    table = results_table(rows) + "\n\nTraining compute:\n" + "\n".join(
        f"- {label}: {training_compute(cfg, run_dir)}" for label, (run_dir, cfg) in runs.items()) + (
        "\n\nThe trained baselines at the default's compute, over three seeds: docs/RESULTS.md "
        "(`metamapper study`).")
    write_results(rows, out / "results.json")
    cmd = "make demo QUICK=1" if quick else "make demo"
    (out / "results.md").write_text(f"Produced by `{cmd}` in {time.time() - t0:.0f} s.\n\n{table}\n")
    plot = plot_accuracy_vs_shots(rows, out / "accuracy_vs_shots.png")
    curves = plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    print("\n" + table)
    print(f"\nDone in {(time.time() - t0) / 60:.1f} min. Results: {out / 'results.json'}, "
          f"{out / 'results.md'}; plots: {plot}, {curves}; checkpoint: --checkpoint {out}")
    return rows
