"""The evaluation of a loaded run on a task set (what ``metamapper evaluate`` and the demo do).

Example::

    run = load_run("runs/demo")
    tasks = evaluation_tasks("fashion-open-ended", data=None, ways=2, shots=1, n_tasks=100)
    evaluate_run(run, tasks)["accuracy"]
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from metamapper.checkpoint import checkpoint_record
from metamapper.data.feature_table import FeatureTable
from metamapper.data.tasks import TaskSet, filter_tasks, with_repeats, with_task_induction
from metamapper.eval.fewshot import adaptation_steps, evaluate
from metamapper.pretrained import LoadedRun


def evaluate_run(run: LoadedRun, taskset: TaskSet, *, method: str | None = None, steps: int | None = None,
                 repeats: int = 0, induction: bool = False, batch_tasks: int = 32,
                 feature_cache: str | Path | None = None, progress: bool = True,
                 with_zero_steps: bool = True) -> dict[str, Any]:
    """Evaluate a loaded run (``pretrained.load_run``) on a task set.

    Args:
        run: the trained run.
        taskset: the test tasks and their images.
        method: an evaluation method (default: the one the run was trained for).
        steps: adaptation steps (default: ``eval.fewshot.adaptation_steps``' rule).
        repeats: show each support example this many more times.
        induction: put the task-induction instruction before each question.
        with_zero_steps: for methods that adapt, also score the same tasks without adaptation.

    Returns:
        A JSON-ready dict with ``accuracy``, ``ci95``, ``n_tasks`` and, for methods that adapt,
        ``accuracy_0_steps`` (the same tasks without adaptation).
    """
    model, cfg = run.model, run.config
    method = method or run.method
    n_steps = adaptation_steps(method, steps, cfg.train.inner.steps)
    tasks = [with_repeats(t, repeats) for t in taskset.tasks]
    if induction:
        tasks = [with_task_induction(t) for t in tasks]
    if not tasks:
        raise ValueError("no task to evaluate (the task set is empty)")
    keys = [k for t in tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, taskset.images, keys, root=feature_cache,
                                    progress=progress)
    tasks = filter_tasks(tasks, [k for k, _ in table.skipped])
    if not tasks:
        raise ValueError("no task left to evaluate (every task has an unreadable image)")
    loop = replace(cfg.train.inner, steps=n_steps)
    res = evaluate(model, tasks, table, method=method, steps=n_steps, loop=loop, lrs=run.lrs,
                   batch_tasks=batch_tasks, progress=progress, distributed=True)
    out = res.to_dict()
    out.update(ways=tasks[0].ways, shots=tasks[0].shots, repeats=repeats, induction=induction,
               skipped_images=[k for k, _ in table.skipped])
    out["checkpoint"] = checkpoint_record(run)  # which weights answered
    if with_zero_steps and res.steps > 0:
        zero = evaluate(model, tasks, table, method=method, steps=0, loop=replace(loop, steps=0),
                        batch_tasks=batch_tasks, progress=progress, distributed=True)
        out["accuracy_0_steps"] = zero.accuracy
        out["ci95_0_steps"] = zero.ci95
    return out
