"""The Frozen few-shot benchmarks (Tsimpoukelli et al., 2021) read from their public JSON files.

Open-Ended miniImageNet (``open_ended_mi``), Real-Name miniImageNet (``real_name_mi``), Fast-VQA
(``fast_vqa``) and Guided-VQA (``guided_vqa``). A benchmark folder holds images and JSON files
named ``{name}_shots_{k}_ways_{N}_all_questions.json``; each JSON is a list of task records::

    {"question_id": "0001", "question": "This is a", "question_image": "..._question.jpg",
     "answer": "blicket", "caption_1": "This is a dax", "image_1": "..._image_1.jpg", ...}

with support pairs ``caption_i`` / ``image_i`` for i = 1..N*k. Image names are resolved relative
to the folder, or else relative to its ``images/`` subfolder (some copies keep them there); the
task's image keys are these relative paths, so ``FolderImageSource(folder)`` loads them.

Each record becomes one ``Task`` with one query. Support pairs are grouped into classes by
caption (``ways`` = distinct captions, which must equal N). ``Task.words`` are derived from the
distinct captions in order of first appearance: what remains after the word prefix that all of
the task's captions share (``"This is a dax"`` -> ``"dax"``, ``"This is a ankle boot"`` ->
``"ankle boot"``), trailing punctuation stripped; if nothing remains, the caption's last word.

Example::

    from metamapper.data.benchmarks import list_benchmark_files, load_benchmark, split_tasks
    for f in list_benchmark_files("data/open_ended_mi"):
        print(f.name, f.ways, f.shots)
    tasks = load_benchmark("data/open_ended_mi", "open_ended_mi", ways=2, shots=1)
    splits = split_tasks(tasks)                  # {"train": [...], "val": [...], "test": [...]}

In-domain meta-training (``data.source: frozen-benchmark``) uses the ``train`` part and validates
on ``val``; ``metamapper evaluate --dataset open_ended_mi`` scores the ``test`` part by default
(``--split``). The split is seeded with the constant ``SPLIT_SEED``: a property of the file, the
same for every run, so evaluation finds it without the run and every run is scored on the same
test tasks.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metamapper.config import DataConfig
from metamapper.data.images import FolderImageSource
from metamapper.data.tasks import (
    EVAL_SPLITS,
    TASK_SOURCES,
    Example,
    Query,
    Task,
    TaskSet,
    TaskSource,
)

BENCHMARK_NAMES: tuple[str, ...] = ("open_ended_mi", "real_name_mi", "fast_vqa", "guided_vqa")
_FILE = re.compile(
    r"^(?P<name>" + "|".join(BENCHMARK_NAMES) + r")_shots_(?P<shots>\d+)_ways_(?P<ways>\d+)"
    r"_all_questions\.json$"
)
VQA_NAMES: frozenset[str] = frozenset({"fast_vqa", "guided_vqa"})
"""Benchmarks whose answers are attributes, not the support words: no task induction."""
SPLIT_SEED = 0
"""Seed of the train / val / test split of every benchmark file (``split_tasks``)."""
_PAIR = re.compile(r"^(caption|image)_([0-9]+)$")
_STRIP = " \t\n.,!?;:\"'"


class BenchmarkFormatError(ValueError):
    """A benchmark file that does not follow the Frozen format (names the file and question)."""


@dataclass(frozen=True)
class BenchmarkFile:
    """One benchmark JSON file: its benchmark ``name``, N ``ways``, k ``shots`` and ``path``."""

    name: str
    ways: int
    shots: int
    path: Path


def benchmark_filename(name: str, ways: int, shots: int) -> str:
    """``"{name}_shots_{shots}_ways_{ways}_all_questions.json"``.

    Example::

        >>> benchmark_filename("open_ended_mi", 2, 1)
        'open_ended_mi_shots_1_ways_2_all_questions.json'
    """
    return f"{name}_shots_{shots}_ways_{ways}_all_questions.json"


def list_benchmark_files(folder: str | os.PathLike[str]) -> list[BenchmarkFile]:
    """The benchmark JSON files in ``folder``, sorted by (name, ways, shots).

    Args:
        folder: a benchmark folder.

    Returns:
        One ``BenchmarkFile`` per file whose name matches the Frozen naming scheme.

    Example::

        >>> [(f.name, f.ways, f.shots) for f in list_benchmark_files("data/open_ended_mi")]
        [('open_ended_mi', 2, 1), ('open_ended_mi', 2, 3), ...]
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder {str(root)!r} does not exist")
    files = []
    for p in root.iterdir():
        m = _FILE.match(p.name)
        if m and p.is_file():
            files.append(BenchmarkFile(m["name"], int(m["ways"]), int(m["shots"]), p))
    return sorted(files, key=lambda f: (f.name, f.ways, f.shots))


def _words(captions: Sequence[str]) -> tuple[str, ...]:
    split = [c.split() for c in captions]
    n = 0
    while all(len(s) > n for s in split) and len({s[n] for s in split}) == 1:
        n += 1
    out = []
    for s in split:
        rest = " ".join(s[n:]).strip(_STRIP) or s[-1].strip(_STRIP) or " ".join(s)
        out.append(rest)
    return tuple(out)


def _outside(root: Path, name: str) -> bool:
    """Whether image ``name`` points outside the benchmark folder (absolute, ``..``, a link)."""
    if not name or "\0" in name or os.path.isabs(name) or ".." in Path(name).parts:
        return True
    try:
        return not (root / name).resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unrepresentable name
        return True


def _resolve(root: Path, name: str) -> str | None:
    """The key (path relative to ``root``) of image ``name``, or None if it is not there."""
    for key in (name, f"images/{name}"):
        if not _outside(root, key) and (root / key).is_file():
            return key
    return None


def _parse_record(
    rec: Any, index: int, *, path: Path, root: Path, name: str, ways: int, shots: int
) -> Task:
    if not isinstance(rec, dict):
        raise BenchmarkFormatError(f"{path}: record #{index} is a {type(rec).__name__}, "
                                   "expected an object")
    qid = rec.get("question_id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        raise BenchmarkFormatError(f"{path}: record #{index} has no valid question_id "
                                   f"(got {qid!r})")
    qid = str(qid)
    where = f"{path}: question_id {qid!r}"
    for key in ("question", "question_image", "answer"):
        if key not in rec:
            raise BenchmarkFormatError(f"{where}: missing key {key!r}")
        if not isinstance(rec[key], str):
            raise BenchmarkFormatError(f"{where}: {key!r} must be a string, got "
                                       f"{type(rec[key]).__name__}")
    if not rec["answer"].strip():
        raise BenchmarkFormatError(f"{where}: empty answer")
    n_pairs = ways * shots
    # indices as written ("01" is not "1"); compared as text, so a 5000-digit index is no crash
    indices = {m[2] for k in rec if (m := _PAIR.match(k))}
    expected = {str(i) for i in range(1, n_pairs + 1)}
    if indices != expected:
        extra = sorted(indices - expected, key=lambda i: (len(i), i))
        lacking = sorted(expected - indices, key=int)
        raise BenchmarkFormatError(
            f"{where}: expected exactly {n_pairs} support pairs (caption_i/image_i, i = 1.."
            f"{n_pairs} for {ways} ways x {shots} shots)"
            + (f"; missing i = {', '.join(lacking[:5])}" if lacking else "")
            + (f"; unexpected i = {', '.join(i[:12] for i in extra[:5])}" if extra else "")
        )
    support = []
    for i in range(1, n_pairs + 1):
        for key in (f"caption_{i}", f"image_{i}"):
            if key not in rec:
                raise BenchmarkFormatError(f"{where}: missing key {key!r}")
            if not isinstance(rec[key], str):
                raise BenchmarkFormatError(f"{where}: {key!r} must be a string, got "
                                           f"{type(rec[key]).__name__}")
        caption = rec[f"caption_{i}"].strip()
        if not caption:
            raise BenchmarkFormatError(f"{where}: empty caption_{i}")
        support.append((rec[f"image_{i}"], caption))

    def key_of(image: str, field: str) -> str:
        if not image.strip():
            raise BenchmarkFormatError(f"{where}: empty {field}")
        if _outside(root, image):
            raise BenchmarkFormatError(f"{where}: {field} path {image[:200]!r} points outside "
                                       f"the benchmark folder {root}")
        key = _resolve(root, image)
        if key is None:
            raise BenchmarkFormatError(f"{where}: {field} file {image!r} not found in {root} "
                                       "(nor in its images/ subfolder)")
        return key

    examples = tuple(Example(key_of(img, f"image_{i}"), cap)
                     for i, (img, cap) in enumerate(support, start=1))
    captions = list(dict.fromkeys(cap for _, cap in support))
    if len(captions) != ways:
        raise BenchmarkFormatError(f"{where}: {len(captions)} distinct captions (classes) for "
                                   f"a {ways}-way task")
    query = Query(key_of(rec["question_image"], "question_image"), rec["question"].strip(),
                  rec["answer"].strip())
    return Task(f"{name}_shots_{shots}_ways_{ways}:{qid}", ways, shots, examples, (query,),
                _words(captions))


def load_benchmark(
    folder: str | os.PathLike[str], name: str, ways: int, shots: int
) -> list[Task]:
    """Read and validate one Frozen benchmark file as tasks (one query per task).

    Args:
        folder: the benchmark folder (JSON files + images, or images in ``folder/images/``).
        name: one of ``BENCHMARK_NAMES``.
        ways: N.
        shots: k.

    Returns:
        The tasks in file order; image keys are relative to ``folder``.

    Raises:
        FileNotFoundError: the JSON file does not exist.
        BenchmarkFormatError: malformed JSON (with line and column), not a list, missing keys,
            wrong types, duplicate question ids, not exactly N*k support pairs, missing image
            files, empty captions or answers, or a number of distinct captions other than N; the
            message names the file and the question_id.

    Example::

        >>> tasks = load_benchmark("data/open_ended_mi", "open_ended_mi", ways=2, shots=1)
        >>> tasks[0].support[0].caption, tasks[0].queries[0].answer
        ('This is a dax', 'blicket')
    """
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARK_NAMES)}")
    if ways < 2 or shots < 1:
        raise ValueError(f"need ways >= 2 and shots >= 1, got ways={ways}, shots={shots}")
    root = Path(folder)
    path = root / benchmark_filename(name, ways, shots)
    if not path.is_file():
        found = [f.path.name for f in list_benchmark_files(root)] if root.is_dir() else []
        raise FileNotFoundError(f"benchmark file {str(path)!r} does not exist"
                                + (f"; found: {', '.join(found)}" if found else ""))
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: "
                                   f"{e.msg}") from None
    except UnicodeDecodeError as e:
        raise BenchmarkFormatError(f"{path}: not UTF-8 text ({e})") from None
    except (ValueError, RecursionError) as e:  # a number over 4300 digits, nesting too deep
        raise BenchmarkFormatError(f"{path}: unreadable JSON ({type(e).__name__}: "
                                   f"{str(e)[:200]})") from None
    except OSError as e:
        raise BenchmarkFormatError(f"{path}: cannot be read ({e})") from None
    if not isinstance(records, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON list of task records, got "
                                   f"{type(records).__name__}")
    tasks = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        task = _parse_record(rec, i, path=path, root=root, name=name, ways=ways, shots=shots)
        if task.task_id in seen:
            raise BenchmarkFormatError(f"{path}: duplicate question_id "
                                       f"{task.task_id.split(':', 1)[1]!r}")
        seen.add(task.task_id)
        tasks.append(task)
    return tasks


def split_tasks(
    tasks: Sequence[Task], *, seed: int = SPLIT_SEED,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> dict[str, list[Task]]:
    """Split tasks at random into disjoint train / val / test lists (in-domain training).

    The tasks are permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(fractions[0] * n)`` go to train, the next ``round(fractions[1] * n)`` to val, the rest
    to test. Each list keeps the input order. The split is by task: an image that two tasks share
    may appear in two splits.

    Args:
        tasks: the tasks.
        seed: the seed of the permutation (default ``SPLIT_SEED``, what training and
            evaluation use).
        fractions: (train, val, test) fractions, non-negative, summing to 1.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Example::

        >>> s = split_tasks(tasks)
        >>> sum(len(v) for v in s.values()) == len(tasks)
        True
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n = len(tasks)
    order = np.random.default_rng(seed).permutation(n)
    n_train = round(fractions[0] * n)
    n_val = min(round(fractions[1] * n), n - n_train)
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}
    return {k: [tasks[i] for i in sorted(v.tolist())] for k, v in parts.items()}


def build_benchmark_tasks(*, folder: str, benchmark: str, ways: int, shots: int) -> TaskSet:
    """A benchmark file's tasks and its image folder.

    Example::

        >>> ts = build_benchmark_tasks(folder="data/oe", benchmark="open_ended_mi", ways=2, shots=1)
        >>> ts.images.load(ts.tasks[0].queries[0].image)
    """
    return TaskSet(load_benchmark(folder, benchmark, ways, shots), FolderImageSource(folder))


def benchmark_split(tasks: Sequence[Task], split: str) -> list[Task]:
    """The part ``split`` of a benchmark file's tasks: ``"train"``, ``"val"`` or ``"test"`` of
    ``split_tasks`` (seeded with ``SPLIT_SEED``), or ``"all"`` of them (file order).

    Example::

        >>> len(benchmark_split(tasks, "test")) == len(split_tasks(tasks)["test"])
        True
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    return list(tasks) if split == "all" else split_tasks(tasks)[split]


def _train_val(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """In-domain: ``n_tasks`` tasks drawn (with ``seed``) from the file's ``train`` part; the
    ``val`` part validates. The split itself is ``SPLIT_SEED``'s, whatever the run's seed."""
    if not d.root:
        raise ValueError("data.root must name the benchmark folder for source frozen-benchmark")
    tasks = load_benchmark(d.root, d.benchmark, d.ways, d.shots)
    parts = split_tasks(tasks)
    if not parts["train"]:
        raise ValueError(f"{benchmark_filename(d.benchmark, d.ways, d.shots)}: {len(tasks)} tasks "
                         "leave none for meta-training")
    rng = np.random.default_rng(seed)
    order = [parts["train"][int(i)] for i in rng.integers(0, len(parts["train"]), size=n_tasks)]
    images = FolderImageSource(d.root)
    return TaskSet(order, images), TaskSet(parts["val"], images)


def _test(*, root: str | None, variant: str, ways: int, shots: int, n_tasks: int, seed: int,
          split: str = "test") -> TaskSet:
    """The first ``n_tasks`` tasks (all when 0) of the part ``split`` of the benchmark file
    ``variant`` (``benchmark_split``); ``seed`` is unused (the split's seed is ``SPLIT_SEED``)."""
    if not root:
        raise ValueError(f"--data must name the folder of the {variant} benchmark")
    ts = build_benchmark_tasks(folder=root, benchmark=variant, ways=ways, shots=shots)
    tasks = benchmark_split(ts.tasks, split)
    if not tasks:
        raise ValueError(f"{benchmark_filename(variant, ways, shots)}: the {split} part of its "
                         f"{len(ts.tasks)} tasks is empty")
    return TaskSet(tasks[:n_tasks] if n_tasks else tasks, ts.images)


TASK_SOURCES.register("frozen-benchmark")(TaskSource(
    train_val=_train_val, test=_test, datasets={name: name for name in BENCHMARK_NAMES},
    no_induction=VQA_NAMES,
    describe=lambda root: "Frozen benchmark JSON files (--data): seeded train / val / test parts of each file"))
