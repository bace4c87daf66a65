"""Training and validation tasks for each task source named in ``data.source``.

Each builder returns ``(train, val)`` as ``TaskSet`` s; the meta-training task list is sampled
once, up front, from the run's seed (``updates * meta_batch`` tasks), so a resumed run sees the
same tasks in the same order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from metamapper.config import ConfigError, DataConfig
from metamapper.data.tasks import Task, TaskSet, TaskSizeError, sample_task

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
    try:
        return TRAINING_SOURCES[d.source](d, n_tasks, seed)
    except TaskSizeError as e:  # name the settings, not the sampler's arguments
        raise ConfigError(f"data.ways={d.ways}, data.shots={d.shots}, data.queries_per_class="
                          f"{d.queries_per_class} do not fit data.source={d.source}: {e}") from None


def training_class_keys(d: DataConfig, seed: int) -> dict[str, list[str]]:
    """Class name -> the meta-training image keys of ``d.source`` (for ``data.subclass_share``)."""
    if d.source != "fashion-mnist":
        raise ValueError(f"data.subclass_share needs the classes of the training images; "
                         f"data.source={d.source!r} does not give them (use fashion-mnist)")
    from metamapper.data.fashion import DEFAULT_ROOT, class_to_keys

    return class_to_keys("train", None, d.images_per_class, seed, root=d.root or DEFAULT_ROOT)


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


def split_class(keys: list[str], features: torch.Tensor, parts: int) -> list[list[str]]:
    """Split one class's images into ``parts`` groups along its first principal component.

    The images are sorted by their projection on the direction along which the class's features
    vary most; of ``2 * parts - 1`` equal runs of that order, the 1st, 3rd, ... are the groups,
    so neighbouring groups are separated by a run of left-out images (no near-duplicates across
    the boundary).
    """
    x = features.reshape(len(keys), -1).double()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    order = torch.argsort(x @ v[0]).tolist()
    runs = np.array_split(np.array(order), 2 * parts - 1)
    return [[keys[i] for i in runs[2 * j]] for j in range(parts)]


def with_subclass_tasks(
    tasks: list[Task], class_keys: dict[str, list[str]], features_of: Callable[[list[str]], torch.Tensor],
    *, share: float, ways: int, shots: int, queries_per_class: int, seed: int,
) -> list[Task]:
    """Replace a ``share`` of the meta-training tasks by tasks between sub-groups of one class.

    A task between, say, two kinds of sandal (``split_class``) can only be answered from what
    tells the kinds apart; classes the meta-training set never contrasts (e.g. sneakers vs ankle
    boots when sandals are the only shoes) are told apart by the same kind of detail. The
    answer words are fresh made-up words, as in the other tasks. Seeded: the same inputs give
    the same tasks.
    """
    if share <= 0:
        return tasks
    need = shots + queries_per_class
    groups = {}
    for name, keys in class_keys.items():
        parts = split_class(keys, features_of(keys), ways)
        if min(len(p) for p in parts) >= need:
            groups[name] = {f"{name} #{j + 1}": p for j, p in enumerate(parts)}
    if not groups:
        raise ValueError(f"no class has {ways} sub-groups of {need} images for data.subclass_share")
    rng = np.random.default_rng(seed + 7)
    names = sorted(groups)
    out = list(tasks)
    for i, task in enumerate(tasks):
        if rng.random() < share:
            cls = names[int(rng.integers(len(names)))]
            out[i] = sample_task(groups[cls], ways=ways, shots=shots, queries_per_class=queries_per_class,
                                 rng=rng, naming="made_up", task_id=f"{task.task_id}-subclass")
    return out
