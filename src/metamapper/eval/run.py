"""The evaluation of a loaded run on a task set (what ``metamapper evaluate`` and the demo do).

Example::

    run = load_run("runs/demo")
    tasks = evaluation_tasks("fashion-open-ended", data=None, ways=2, shots=1, n_tasks=100)
    evaluate_run(run, tasks)["accuracy"]
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from metamapper import distributed as dist_utils
from metamapper._version import __version__
from metamapper.checkpoint import Checkpoint, checkpoint_record
from metamapper.config import Config
from metamapper.data.benchmarks import BENCHMARK_NAMES
from metamapper.data.feature_table import FeatureTable
from metamapper.data.sources import trained_task_overlap
from metamapper.data.tasks import TaskSet, filter_tasks, with_repeats, with_task_induction
from metamapper.eval.fewshot import evaluate
from metamapper.eval.report import write_samples
from metamapper.hub import resolve_checkpoint
from metamapper.loading import LoadedRun, run_config
from metamapper.methods import get_method
from metamapper.registry import Method


def read_run_config(path: str | os.PathLike[str], *, step: str | int | None = None,
                    revision: str | None = None, allow_fallback: bool = False) -> tuple[Checkpoint, Config]:
    """The checkpoint ``path`` names (a run folder and ``step``, an exported folder or a Hub id
    and ``revision``: ``hub.resolve_checkpoint``) and its config, read without building the
    model: what ``evaluate`` checks before it loads the backbones (``load_run(...,
    checkpoint=ckpt)`` then loads this checkpoint without resolving it again).

    Raises:
        CheckpointError: no such run, folder, Hub model or step, no valid checkpoint, or no
            valid config in it.
    """
    ckpt = resolve_checkpoint(path, step=step, revision=revision, allow_fallback=allow_fallback)
    return ckpt, run_config(ckpt)


def default_split(cfg: Config, dataset: str) -> str:
    """The split ``evaluate`` scores when none is asked for: the test part of a benchmark file the
    run meta-trained on (in-domain), all of a benchmark file it never saw (cross-domain, as the
    published figures are), and the test tasks of every other source.

    Example::

        >>> default_split(Config(), "open_ended_mi"), default_split(Config(), "fashion-open-ended")
        ('all', 'test')
    """
    if dataset not in BENCHMARK_NAMES:
        return "test"
    in_domain = cfg.data.source == "frozen-benchmark" and cfg.data.benchmark == dataset
    return "test" if in_domain else "all"


def check_trained_tasks(cfg: Config, dataset: str, taskset: TaskSet, *, split: str,
                        data: str | None = None) -> int:
    """Refuse to score tasks the run meta-trained on (in-domain training on the same benchmark
    file), unless ``split="all"`` asks for every task of the file.

    Args:
        cfg: the run's config.
        dataset: the evaluation name (``--dataset``).
        taskset: the evaluation tasks.
        split: the split they were taken from (``--split``).
        data: the evaluation's dataset folder (``--data``).

    Returns:
        How many of the tasks the run meta-trained on (only ever non-zero with ``split="all"``).

    Raises:
        ValueError: some of the tasks are training tasks and ``split`` is not ``"all"``.
    """
    n_train = max(1, cfg.train.updates * cfg.train.meta_batch)  # as train.common.prepare_run draws
    overlap = trained_task_overlap(cfg.data, n_train, cfg.train.seed, dataset, taskset.tasks, data=data)
    if overlap and split != "all":
        raise ValueError(
            f"{overlap} of the {len(taskset.tasks)} {split} tasks of {dataset} are tasks this run "
            f"meta-trained on (data.source={cfg.data.source}, data.benchmark={cfg.data.benchmark}); "
            "score --split test (or val), or ask for --split all knowingly")
    return overlap


def provenance(run: LoadedRun) -> dict[str, Any]:
    """What makes a result file self-describing, besides the task settings: the package version,
    the date (ISO 8601, UTC), the device, the backbones' identities and the LM's dtype, the
    checkpoint (run folder, step, sha256 of its weights file, the run's resolved config)."""
    model = run.model
    device = next(model.mapper.parameters()).device
    return {
        "metamapper_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "backbones": {"vision": model.vision.identity if model.vision is not None else None,
                      "lm": model.lm.identity,
                      "lm_dtype": str(model.lm.model.dtype).removeprefix("torch.")},
        # the config as loaded: keys added since the run was trained hold the defaults it ran with
        "checkpoint": {**checkpoint_record(run), "config": run.config.to_dict()},
    }


def evaluate_run(run: LoadedRun, taskset: TaskSet, *, method: str | Method | None = None, steps: int | None = None,
                 repeats: int = 0, induction: bool = False, batch_tasks: int | None = None,
                 max_new_tokens: int | None = None, feature_cache: str | Path | None = None,
                 progress: bool = True, with_zero_steps: bool = True, support_fit: bool = False,
                 log_samples: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a loaded run (``pretrained.load_run``) on a task set.

    Args:
        run: the trained run.
        taskset: the test tasks and their images (its ``dataset``, ``split`` and ``seed``, where
            set, are recorded in the result).
        method: a registered method's name (``metamapper.methods``; default: the run's own),
            or a ``Method`` (a variant an experiment made, registered or not).
        steps: adaptation steps (default: ``Method.steps``' rule).
        repeats: show each support example this many more times.
        induction: open each task with the task-induction instruction (the caller refuses
            it where it is undefined: ``data.sources.check_task_induction``).
        batch_tasks: tasks answered together (default: the run's ``eval.batch_tasks``).
        max_new_tokens: answer length limit (default: the run's ``eval.max_new_tokens``).
        with_zero_steps: for methods that adapt, also score the same tasks without adaptation.
        support_fit: also score whether the adapted model names its own support images
            (``support_fit`` in the result, a fraction; None when not asked): a check that the
            adaptation can write the support words at all.
        log_samples: write one JSON line per query here (``fewshot.query_record``: task, support
            captions, question, prediction, target, correct).

    Returns:
        A JSON-ready dict with ``accuracy``, ``ci95`` (``[low, high]``), ``ci_method``,
        ``n_tasks``, the settings (``method``, ``steps``, ``ways``, ``shots``, ``dataset``,
        ``split``, ``seed``...), ``provenance``'s fields and, for methods that adapt,
        ``accuracy_0_steps`` (the same tasks without adaptation).
    """
    model, cfg = run.model, run.config
    m = method if isinstance(method, Method) else get_method(method or run.method)
    batch_tasks = batch_tasks or cfg.eval.batch_tasks
    max_new_tokens = max_new_tokens or cfg.eval.max_new_tokens
    n_steps = m.steps(steps, cfg)
    tasks = [with_repeats(t, repeats) for t in taskset.tasks]
    if induction:
        tasks = [with_task_induction(t) for t in tasks]
    if not tasks:
        raise ValueError("no task to evaluate (the task set is empty)")
    keys = [k for t in tasks for k in t.image_keys()]
    if model.vision is None:
        raise ValueError("evaluate_run needs the run loaded with its image encoder (with_vision=True)")
    table = FeatureTable.from_cache(model.vision, taskset.images, keys, root=feature_cache,
                                    progress=progress)
    tasks = filter_tasks(tasks, [k for k, _ in table.skipped])
    if not tasks:
        raise ValueError("no task left to evaluate (every task has an unreadable image)")
    loop = replace(cfg.train.inner, steps=n_steps)
    res = evaluate(model, tasks, table, method=m, loop=loop, lrs=run.lrs,
                   batch_tasks=batch_tasks, max_new_tokens=max_new_tokens, progress=progress,
                   distributed=True, samples=log_samples is not None, support_fit=support_fit)
    if log_samples is not None and res.samples is not None and dist_utils.is_main():
        write_samples(res.samples, log_samples)
    out = res.to_dict()
    given = {"dataset": taskset.dataset, "split": taskset.split, "seed": taskset.seed}
    out.update({k: v for k, v in given.items() if v is not None})
    out.update(ways=tasks[0].ways, shots=tasks[0].shots, repeats=repeats, induction=induction,
               skipped_images=[k for k, _ in table.skipped])
    out.update(provenance(run))  # which weights answered, where and when
    if with_zero_steps and res.steps > 0:
        zero = evaluate(model, tasks, table, method=m, loop=replace(loop, steps=0),
                        batch_tasks=batch_tasks, max_new_tokens=max_new_tokens, progress=progress,
                        distributed=True)
        out["accuracy_0_steps"] = zero.accuracy
        out["ci95_0_steps"] = zero.ci95
    return out
