"""Write tasks in the Frozen benchmark layout, so any task set can be read by ``load_benchmark``.

Example::

    from metamapper.data.export import export_fashion
    from metamapper.data.benchmarks import load_benchmark
    path = export_fashion("out/fashion_oe", variant="open_ended", ways=2, shots=1, n_tasks=50)
    tasks = load_benchmark("out/fashion_oe", "open_ended_mi", ways=2, shots=1)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metamapper.data.benchmarks import BENCHMARK_NAMES, benchmark_filename
from metamapper.data.fashion import FashionImageSource, fashion_tasks
from metamapper.data.tasks import ImageSource, Task

_VARIANT_NAMES = {"open_ended": "open_ended_mi", "real_name": "real_name_mi"}


def export_tasks(
    tasks: Sequence[Task],
    images: ImageSource,
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    quality: int = 95,
) -> Path:
    """Write tasks as JPEG files + ``{name}_shots_{k}_ways_{N}_all_questions.json``.

    Every task must have the same ``ways`` and ``shots``, ``ways * shots`` support pairs (no
    repeats) and exactly one query. Image files are named as in Frozen:
    ``{name}_shots_{k}_ways_{N}_id_{qid}_image_{i}.jpg`` and ``..._question.jpg``; question ids
    are ``"0001"``, ``"0002"``, ... in task order. The JSON is written atomically.

    Args:
        tasks: the tasks.
        images: the source of their image keys.
        out_dir: the output folder (created).
        name: one of ``BENCHMARK_NAMES``.
        quality: JPEG quality.

    Returns:
        The path of the JSON file.

    Example::

        >>> export_tasks(tasks, FashionImageSource(split="test"), "out", name="open_ended_mi")
    """
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"name must be one of {BENCHMARK_NAMES}, got {name!r}")
    if not tasks:
        raise ValueError("no tasks to export")
    ways, shots = tasks[0].ways, tasks[0].shots
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_shots_{shots}_ways_{ways}"
    records = []
    for n, task in enumerate(tasks, start=1):
        if (task.ways, task.shots) != (ways, shots):
            raise ValueError(f"task {task.task_id!r} is {task.ways}-way {task.shots}-shot; all "
                             f"tasks of one file must be {ways}-way {shots}-shot")
        if len(task.support) != ways * shots or len(task.queries) != 1:
            raise ValueError(f"task {task.task_id!r}: the Frozen layout needs {ways * shots} "
                             f"support pairs and one query, got {len(task.support)} and "
                             f"{len(task.queries)}")
        qid = f"{n:04d}"
        query = task.queries[0]
        rec = {"question_id": qid, "question": query.question,
               "question_image": f"{stem}_id_{qid}_question.jpg", "answer": query.answer}
        images.load(query.image).save(out / rec["question_image"], quality=quality)
        for i, ex in enumerate(task.support, start=1):
            rec[f"caption_{i}"] = ex.caption
            rec[f"image_{i}"] = f"{stem}_id_{qid}_image_{i}.jpg"
            images.load(ex.image).save(out / rec[f"image_{i}"], quality=quality)
        records.append(rec)
    path = out / benchmark_filename(name, ways, shots)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_fashion(
    out_dir: str | os.PathLike[str],
    *,
    variant: str = "open_ended",
    ways: int = 2,
    shots: int = 1,
    n_tasks: int = 100,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Export Fashion-MNIST test tasks (classes 6-9) as a Frozen-layout benchmark folder.

    ``variant="open_ended"`` writes ``open_ended_mi_...json`` (nonsense words ``TEST_WORDS``),
    ``"real_name"`` writes ``real_name_mi_...json`` (lower-case class names). Each record keeps one
    query of the sampled task, chosen at random (seeded).

    Args:
        out_dir: the output folder.
        variant: ``"open_ended"`` or ``"real_name"``.
        ways: N (<= 4: the test split has four classes).
        shots: k.
        n_tasks: number of records.
        seed: seed of the tasks and of the query choice.
        root: the folder of the Fashion-MNIST IDX files (default: ``fashion_root()``).

    Returns:
        The path of the JSON file.

    Example::

        >>> export_fashion("out", variant="real_name", ways=2, shots=1, n_tasks=10).name
        'real_name_mi_shots_1_ways_2_all_questions.json'
    """
    if variant not in _VARIANT_NAMES:
        raise ValueError(f"variant must be one of {tuple(_VARIANT_NAMES)}, got {variant!r}")
    tasks = fashion_tasks("test", variant, ways=ways, shots=shots, queries_per_class=1,
                          n_tasks=n_tasks, seed=seed, root=root)
    rng = np.random.default_rng([seed, 1])
    one_query = [
        Task(t.task_id, t.ways, t.shots, t.support, (t.queries[int(rng.integers(len(t.queries)))],),
             t.words)
        for t in tasks
    ]
    return export_tasks(one_query, FashionImageSource(root, "test"), out_dir,
                        name=_VARIANT_NAMES[variant])
