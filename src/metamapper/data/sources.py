"""Tasks by name: the one place that turns ``data.source`` or ``--dataset`` into tasks.

Every task source registers a ``registry.TaskSource`` in ``registry.TASK_SOURCES`` (the modules
imported below register the built-in ones); training, validation and evaluation all go through
the two functions here.

Example::

    train, val = training_tasks(DataConfig(source="synthetic"), n_tasks=100, seed=0)
    test = evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=20)
"""

from __future__ import annotations

import metamapper.data.benchmarks
import metamapper.data.class_folders
import metamapper.data.coco
import metamapper.data.fashion
import metamapper.data.synthetic  # noqa: F401  (these imports register the built-in sources)
from metamapper.config import ConfigError, DataConfig
from metamapper.data.tasks import TaskSet, TaskSizeError
from metamapper.registry import TASK_SOURCES, TaskSource


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


def _dataset_source(dataset: str) -> tuple[TaskSource, str]:
    for name in TASK_SOURCES.names():
        source = TASK_SOURCES.get(name)
        if dataset in source.datasets and source.test is not None:
            return source, source.datasets[dataset]
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(list_datasets())}")


def evaluation_tasks(dataset: str, *, data: str | None, ways: int, shots: int, n_tasks: int,
                     seed: int = 1234) -> TaskSet:
    """Meta-test tasks of ``dataset`` (``list_datasets()``): a Frozen benchmark in folder ``data``,
    the test classes of a folder of class folders, the held-out Fashion-MNIST classes, or the
    synthetic held-out classes.

    Args:
        dataset: the evaluation name.
        data: the dataset's folder (required for the Frozen benchmarks; else the source's default).
        ways, shots: the task shape.
        n_tasks: how many tasks (0: every task of a benchmark file).
        seed: the seed of sampled test tasks (fixed, so every run is scored on the same tasks).
    """
    if ways < 2:
        raise ValueError(f"ways must be >= 2, got {ways}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if n_tasks < 0:
        raise ValueError(f"the number of tasks must be >= 0, got {n_tasks}")
    source, variant = _dataset_source(dataset)
    assert source.test is not None
    return source.test(root=data, variant=variant, ways=ways, shots=shots, n_tasks=n_tasks, seed=seed)
