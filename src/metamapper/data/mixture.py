"""Meta-training on several task sources at once: task source ``"mixture"``.

Each meta-training task comes from one source, drawn by the shares of ``data.mixture`` (seeded:
the same config and seed give the same sources in the same order); validation tasks are drawn
the same way from each source's own validation stream (its validation concepts or images). The
sources keep their own data settings (``data.ways``, ``data.shots``, ... are shared; each
source's folder is ``data.mixture_roots[name]`` or its default).

Image keys are namespaced by source (``icons:images/printer/tango-icon-theme.png``), so that one
``MixtureImageSource`` resolves every task's images; the feature cache stores each image under
its own source's identity (``route``), so a mixture reuses the features its sources' runs
encoded, and another mixture of the same sources encodes nothing again.

Example (YAML)::

    data:
      source: mixture
      mixture: {icons: 0.5, glyphs: 0.25, fashion-mnist: 0.25}

or ``metamapper train data.source=mixture 'data.mixture={icons: 0.5, fashion-mnist: 0.5}'``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from metamapper.config import DataConfig
from metamapper.data.images import ImageLoadError
from metamapper.data.tasks import (
    TASK_SOURCES,
    Example,
    ImageSource,
    Query,
    Task,
    TaskSet,
    TaskSource,
)

SEP = ":"  # source name SEP the source's own key


class MixtureImageSource:
    """Resolves ``"name:key"`` through the image source of part ``name``."""

    def __init__(self, parts: dict[str, ImageSource]) -> None:
        self.parts = dict(sorted(parts.items()))
        self.identity = "mixture(" + ",".join(f"{n}={s.identity}" for n, s in self.parts.items()) + ")"

    def __repr__(self) -> str:
        return f"MixtureImageSource({list(self.parts)})"

    def route(self, key: str) -> tuple[ImageSource, str]:
        """``(part, the part's own key)`` of a namespaced key (the feature cache stores a
        mixture's features under its parts', so they are shared with single-source runs)."""
        for name in sorted(self.parts, key=len, reverse=True):  # "fashion-mnist:val" first
            if key.startswith(name + SEP):
                return self.parts[name], key[len(name) + len(SEP):]
        raise ImageLoadError(f"image key {key!r} names no part of the mixture ({', '.join(self.parts)})")

    def load(self, key: str) -> Image.Image:
        part, own = self.route(key)
        return part.load(own)

    def keys(self) -> list[str]:
        """Every part's keys, namespaced."""
        return [f"{n}{SEP}{k}" for n, s in self.parts.items() for k in s.keys()]


def _namespaced(task: Task, name: str) -> Task:
    return replace(
        task, task_id=f"{name}{SEP}{task.task_id}",
        support=tuple(Example(f"{name}{SEP}{e.image}", e.caption) for e in task.support),
        queries=tuple(Query(f"{name}{SEP}{q.image}", q.question, q.answer) for q in task.queries))


def draw_sources(shares: dict[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` source names drawn independently by ``shares`` (normalised).

    Example::

        >>> draw_sources({"icons": 3, "glyphs": 1}, 4, np.random.default_rng(0))
        ['icons', 'icons', 'icons', 'glyphs']
    """
    names = sorted(shares)
    p = np.array([shares[k] for k in names], dtype=float)
    return [names[i] for i in rng.choice(len(names), size=n, p=p / p.sum())]


def source_parts(d: DataConfig) -> dict[str, DataConfig]:
    """The task sources ``d`` meta-trains on, each with its own data settings: a mixture's parts
    (each on its folder, ``data.mixture_roots[name]`` or its default), else ``{d.source: d}``."""
    if d.source != "mixture":
        return {d.source: d}
    return {name: replace(d, source=name, root=d.mixture_roots.get(name), mixture={}, mixture_roots={})
            for name in sorted(d.mixture)}


def mixture_tasks(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """``(train, validation)`` of ``data.source=mixture``: see the module's docstring."""
    rng = np.random.default_rng([seed, 0x6D6978])  # the draw of sources, apart from each source's
    order = draw_sources(d.mixture, n_tasks, rng)
    counts = {name: order.count(name) for name in d.mixture}
    parts: dict[str, ImageSource] = {}
    trains: dict[str, list[Task]] = {}
    vals: dict[str, list[Task]] = {}
    for name, sub in source_parts(d).items():
        source = TASK_SOURCES.get(name)
        if source.train_val is None:
            raise ValueError(f"data.mixture: source {name!r} has no meta-training tasks (it only tests)")
        train, val = source.train_val(sub, max(1, counts[name]), seed)
        # a source may validate on other images than it trains on (Fashion-MNIST: its test split)
        val_part = name if val.images.identity == train.images.identity else f"{name}{SEP}val"
        parts[name], parts[val_part] = train.images, val.images
        trains[name] = [_namespaced(t, name) for t in train.tasks[: counts[name]]]
        vals[name] = [_namespaced(t, val_part) for t in val.tasks]
    streams = {name: iter(tasks) for name, tasks in trains.items()}  # each source's tasks in order
    train_tasks = [next(streams[name]) for name in order]
    # as many validation tasks as the smallest stream allows at its share (a source's stream
    # that the random draw exhausts early gives no more)
    total = sum(d.mixture.values())
    n_val = int(min(len(vals[k]) * total / share for k, share in d.mixture.items()))
    val_streams = {name: iter(tasks) for name, tasks in vals.items()}
    val_tasks = [t for name in draw_sources(d.mixture, n_val, rng)
                 if (t := next(val_streams[name], None)) is not None]
    images = MixtureImageSource(parts)
    return TaskSet(train_tasks, images), TaskSet(val_tasks, images)


TASK_SOURCES.register("mixture")(TaskSource(
    train_val=mixture_tasks,
    describe=lambda root: "several sources by the shares of data.mixture (meta-training only)"))
