"""Training and validation tasks for each task source named in ``data.source``.

Each builder returns ``(train, val)`` as ``TaskSet`` s; the meta-training task list is sampled
once, up front, from the run's seed (``updates * meta_batch`` tasks), so a resumed run sees the
same tasks in the same order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from metamapper.config import DataConfig
from metamapper.data.tasks import TaskSet, sample_task

Builder = Callable[[DataConfig, int, int], tuple[TaskSet, TaskSet]]
TRAINING_SOURCES: dict[str, Builder] = {}


def _register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        TRAINING_SOURCES[name] = fn
        return fn

    return deco


@_register("fashion-mnist")
def _fashion(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """Meta-train on classes 0-5 of the train split; validate on the same classes' images of the
    test split (unseen images, never the held-out classes 6-9)."""
    from metamapper.data.fashion import (
        CLASS_NAMES,
        DEFAULT_ROOT,
        TRAIN_CLASSES,
        FashionImageSource,
        FashionMNIST,
        fashion_tasks,
    )

    root = d.root or DEFAULT_ROOT
    train = fashion_tasks(
        "train", "open_ended", ways=d.ways, shots=d.shots, queries_per_class=d.queries_per_class,
        n_tasks=n_tasks, seed=seed, naming=d.naming, images_per_class=d.images_per_class, root=root,
    )
    labels = FashionMNIST(str(root), "test").labels
    keys = {CLASS_NAMES[c]: [f"test/{int(i):06d}" for i in np.flatnonzero(labels == c)[:300]]
            for c in TRAIN_CLASSES}
    rng = np.random.default_rng(seed + 1)
    val = [sample_task(keys, ways=d.ways, shots=d.shots, queries_per_class=1, rng=rng,
                       naming="made_up", task_id=f"fashion-val-{i:04d}") for i in range(200)]
    return TaskSet(train, FashionImageSource(root, "train")), TaskSet(val, FashionImageSource(root, "test"))


@_register("synthetic")
def _synthetic(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    from metamapper.data.synthetic import build_synthetic_tasks

    kw = dict(ways=d.ways, shots=d.shots, queries_per_class=d.queries_per_class)
    train = build_synthetic_tasks(split="train", n_tasks=n_tasks, seed=seed, naming=d.naming, **kw)
    val = build_synthetic_tasks(split="test", n_tasks=20, seed=seed + 1, **kw)
    return train, val


@_register("frozen-benchmark")
def _benchmark(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """In-domain: the benchmark's own tasks, split by ``split_tasks`` (seeded)."""
    from metamapper.data.benchmarks import load_benchmark, split_tasks
    from metamapper.data.images import FolderImageSource

    if not d.root:
        raise ValueError("data.root must name the benchmark folder for source frozen-benchmark")
    tasks = load_benchmark(d.root, d.benchmark, d.ways, d.shots)
    parts = split_tasks(tasks, seed=seed)
    rng = np.random.default_rng(seed)
    order = [parts["train"][int(i)] for i in rng.integers(0, len(parts["train"]), size=n_tasks)]
    images = FolderImageSource(d.root)
    return TaskSet(order, images), TaskSet(parts["val"], images)


def training_tasks(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """``(train, val)`` task sets for ``d.source``."""
    if d.source not in TRAINING_SOURCES:
        raise ValueError(f"unknown data.source {d.source!r}; choose from {', '.join(sorted(TRAINING_SOURCES))}")
    return TRAINING_SOURCES[d.source](d, n_tasks, seed)


@_register("coco")
def _coco(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """Cross-domain: COCO train2017 caption tasks grouped by object category; validation on
    val2017 tasks."""
    from metamapper.data.coco import build_coco_tasks

    if not d.root:
        raise ValueError("data.root must name the COCO folder (annotations/ + train2017/ + val2017/)")
    kw = dict(ways=d.ways, shots=d.shots, queries_per_class=d.queries_per_class, naming=d.naming)
    train = build_coco_tasks(root=d.root, split="train", n_tasks=n_tasks, seed=seed, **kw)
    val = build_coco_tasks(root=d.root, split="val", n_tasks=200, seed=seed + 1, **kw)
    return train, val
