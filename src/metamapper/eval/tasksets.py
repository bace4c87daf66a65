"""Evaluation task sets by dataset name, and the evaluation of a loaded run on one of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from metamapper.checkpoint import checkpoint_record
from metamapper.data.tasks import TaskSet, filter_tasks, with_repeats, with_task_induction
from metamapper.eval.fewshot import EvalResult, evaluate, get_method

FASHION_DATASETS = {"fashion-open-ended": "open_ended", "fashion-real-name": "real_name"}


def list_datasets() -> list[str]:
    from metamapper.data.benchmarks import BENCHMARK_NAMES

    return [*BENCHMARK_NAMES, *FASHION_DATASETS, "synthetic"]


def evaluation_tasks(dataset: str, *, data: str | None, ways: int, shots: int, n_tasks: int,
                     seed: int = 1234) -> TaskSet:
    """Meta-test tasks of ``dataset`` (a Frozen benchmark in folder ``data``, the held-out
    Fashion-MNIST classes, or the synthetic held-out classes)."""
    from metamapper.data.benchmarks import BENCHMARK_NAMES

    if ways < 2:
        raise ValueError(f"ways must be >= 2, got {ways}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if dataset in BENCHMARK_NAMES:
        from metamapper.data.benchmarks import load_benchmark
        from metamapper.data.images import FolderImageSource

        if not data:
            raise ValueError(f"--data must name the folder of the {dataset} benchmark")
        tasks = load_benchmark(data, dataset, ways, shots)
        if not tasks:  # before any backbone is loaded
            raise ValueError(f"{dataset} in {data} has no {ways}-way {shots}-shot task (an empty list)")
        return TaskSet(tasks[:n_tasks] if n_tasks else tasks, FolderImageSource(data))
    if dataset in FASHION_DATASETS:
        from metamapper.data.fashion import DEFAULT_ROOT, build_fashion_tasks

        return build_fashion_tasks(split="test", variant=FASHION_DATASETS[dataset], ways=ways,
                                   shots=shots, n_tasks=n_tasks, seed=seed, root=data or DEFAULT_ROOT)
    if dataset == "synthetic":
        from metamapper.data.synthetic import build_synthetic_tasks

        return build_synthetic_tasks(split="test", ways=ways, shots=shots, n_tasks=n_tasks, seed=seed)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(list_datasets())}")


def evaluate_run(run: object, taskset: TaskSet, *, method: str | None = None, steps: int | None = None,
                 repeats: int = 0, induction: bool = False, batch_tasks: int = 32,
                 feature_cache: str | Path | None = None, progress: bool = True,
                 with_zero_steps: bool = True, orderings: int | None = None) -> dict[str, object]:
    """Evaluate a loaded run (``pretrained.load_run``) on a task set.

    ``orderings`` (support orders in context, see ``evaluate``) defaults to the run's
    ``eval.orderings``.

    Returns a JSON-ready dict with ``accuracy``, ``ci95``, ``n_tasks`` and, for methods that
    adapt, ``accuracy_0_steps`` (the same tasks without adaptation).
    """
    from metamapper.data.feature_table import FeatureTable

    model = run.model  # type: ignore[attr-defined]
    cfg = run.config  # type: ignore[attr-defined]
    method = method or run.method  # type: ignore[attr-defined]
    m = get_method(method)
    n_steps = steps if steps is not None else (cfg.train.inner.steps or 5)
    tasks = [with_repeats(t, repeats) for t in taskset.tasks]
    if induction:
        tasks = [with_task_induction(t) for t in tasks]
    keys = [k for t in tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, taskset.images, keys, root=feature_cache,
                                    progress=progress)
    tasks = filter_tasks(tasks, [k for k, _ in table.skipped])
    if not tasks:
        raise ValueError("no task left to evaluate (every task has an unreadable image)")
    loop = replace(cfg.train.inner, steps=n_steps)
    orderings = cfg.eval.orderings if orderings is None else orderings
    res: EvalResult = evaluate(model, tasks, table, method=method, steps=n_steps, loop=loop,
                               lrs=run.lrs, batch_tasks=batch_tasks, progress=progress,  # type: ignore[attr-defined]
                               distributed=True, orderings=orderings,
                               members=run.members)  # type: ignore[attr-defined]
    out = res.to_dict()
    out.update(ways=tasks[0].ways, shots=tasks[0].shots, repeats=repeats, induction=induction,
               skipped_images=[k for k, _ in table.skipped])
    out["checkpoint"] = checkpoint_record(run)  # type: ignore[arg-type]  # which weights answered
    if with_zero_steps and m.default_steps is None and res.steps > 0:
        zero = evaluate(model, tasks, table, method=method, steps=0, loop=replace(loop, steps=0),
                        batch_tasks=batch_tasks, progress=progress, distributed=True,
                        orderings=orderings)
        out["accuracy_0_steps"] = zero.accuracy
        out["ci95_0_steps"] = zero.ci95
    return out
