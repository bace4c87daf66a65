"""Tasks by name: the one place that turns ``data.source`` or ``--dataset`` into tasks.

Every task source registers a ``data.tasks.TaskSource`` in ``data.tasks.TASK_SOURCES`` (the modules
imported below register the built-in ones); training, validation and evaluation all go through
the two functions here.

Example::

    train, val = training_tasks(DataConfig(source="synthetic"), n_tasks=100, seed=0)
    test = evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=20)
    val = evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=20, split="val")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import metamapper.data.benchmarks
import metamapper.data.class_folders
import metamapper.data.coco
import metamapper.data.emoji
import metamapper.data.fashion
import metamapper.data.glyphs
import metamapper.data.icons
import metamapper.data.mixture
import metamapper.data.synthetic  # noqa: F401  (these imports register the built-in sources)
from metamapper.config import ConfigError, DataConfig
from metamapper.data.tasks import (
    EVAL_SPLITS,
    TASK_SOURCES,
    Task,
    TaskSet,
    TaskSizeError,
    TaskSource,
)


def training_tasks(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """``(train, validation)`` task sets of ``d.source``; ``n_tasks`` meta-training tasks,
    sampled once from ``seed`` (so a resumed run sees the same tasks in the same order)."""
    source = TASK_SOURCES.get(d.source)
    if source.train_val is None:
        raise ValueError(f"data.source {d.source!r} has no meta-training tasks (it only tests)")
    try:
        return source.train_val(d, n_tasks, seed)
    except TaskSizeError as e:  # name the settings, not the sampler's arguments
        raise ConfigError(f"data.ways={d.ways}, data.shots={d.shots}, data.queries_per_class="
                          f"{d.queries_per_class} do not fit data.source={d.source}: {e}") from None


def list_datasets() -> list[str]:
    """The names ``evaluation_tasks`` accepts."""
    return sorted(name for src in TASK_SOURCES.names() for name in TASK_SOURCES.get(src).datasets)


def describe_sources() -> dict[str, tuple[list[str], str]]:
    """Source name -> (its evaluation datasets, one line on its data: class counts per split
    where the source knows them, else what it is). Builds nothing.

    Example::

        >>> describe_sources()["fashion-mnist"]
        (['fashion-open-ended', 'fashion-real-name'], '10 classes: 6 meta-training, 4 held-out test')
    """
    out = {}
    for name in TASK_SOURCES.names():
        source = TASK_SOURCES.get(name)
        try:
            line = source.describe(None) if source.describe else ""
        except (OSError, ValueError) as e:
            line = f"unavailable: {e}"
        out[name] = (sorted(source.datasets), line)
    return out


def _dataset_source(dataset: str) -> tuple[TaskSource, str]:
    for name in TASK_SOURCES.names():
        source = TASK_SOURCES.get(name)
        if dataset in source.datasets and source.test is not None:
            return source, source.datasets[dataset]
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(list_datasets())}")


TEST_SEED = 1234  # the fixed seed of sampled evaluation tasks: every run is scored on the same tasks


def evaluation_tasks(dataset: str, *, data: str | None, ways: int, shots: int, n_tasks: int,
                     seed: int = TEST_SEED, split: str = "test") -> TaskSet:
    """Meta-test tasks of ``dataset`` (``list_datasets()``): a Frozen benchmark in folder ``data``,
    the test classes of a folder of class folders, the held-out Fashion-MNIST classes, or the
    synthetic held-out classes.

    Args:
        dataset: the evaluation name.
        data: the dataset's folder (required for the Frozen benchmarks; else the source's default).
        ways, shots: the task shape.
        n_tasks: how many tasks (0: every task of a benchmark file's part).
        seed: the seed of sampled test tasks (fixed, so every run is scored on the same tasks).
        split: ``"test"`` (default), ``"val"`` (a benchmark file's validation part; a sampled
            source's validation stream), or a benchmark file's ``"train"`` part or ``"all"`` of
            it (``data.tasks.EVAL_SPLITS``).
    """
    if ways < 2:
        raise ValueError(f"ways must be >= 2, got {ways}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if n_tasks < 0:
        raise ValueError(f"the number of tasks must be >= 0, got {n_tasks}")
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    source, variant = _dataset_source(dataset)
    assert source.test is not None
    ts = source.test(root=data, variant=variant, ways=ways, shots=shots, n_tasks=n_tasks, seed=seed,
                     split=split)
    return replace(ts, dataset=dataset, split=split, seed=seed)  # what the set is, for the results


def check_task_induction(dataset: str) -> None:
    """Refuse task induction ("Answer with dax or blicket.") on a dataset whose answers are not
    the support words (Fast-VQA, Guided-VQA: the answers are attributes, so the instruction would
    name the wrong options; neither Frozen nor the paper defines one for them)."""
    source, _ = _dataset_source(dataset)
    if dataset in source.no_induction:
        raise ValueError(f"task induction is not defined for {dataset}: its answers are not the "
                         "support words (only the miniImageNet sets take --task-induction)")


def trained_task_overlap(run_data: DataConfig, n_tasks: int, seed: int, dataset: str,
                         tasks: Sequence[Task], *, data: str | None = None) -> int:
    """How many of ``tasks`` (evaluation tasks of ``dataset``) a run meta-trained on.

    The run's meta-training tasks are rebuilt from its data config, ``n_tasks`` and ``seed`` as
    training built them (``training_tasks``), reading the files from ``data`` (the evaluation's
    folder) when given, and matched by task id. Only a run whose source also serves ``dataset``
    can overlap (in-domain training on a benchmark file); a run whose training file is not in the
    evaluation's folder did not train on its tasks.

    Args:
        run_data: the run's ``data`` config.
        n_tasks: the run's meta-training tasks (``train.updates * train.meta_batch``).
        seed: the run's ``train.seed``.
        dataset: the evaluation name.
        tasks: the evaluation tasks.
        data: the evaluation's dataset folder.
    """
    source, _ = _dataset_source(dataset)
    if TASK_SOURCES.get(run_data.source) is not source or source.train_val is None:
        return 0
    d = replace(run_data, root=data) if data else run_data
    try:
        train, _ = source.train_val(d, n_tasks, seed)
    except FileNotFoundError:  # e.g. another benchmark file than the one evaluated
        return 0
    ids = {t.task_id for t in train.tasks}
    return sum(t.task_id in ids for t in tasks)
