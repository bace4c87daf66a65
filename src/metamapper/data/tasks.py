"""The task model: few-shot N-way k-shot image -> text tasks, and a seeded generic sampler.

A task is plain, immutable data: support pairs (image key, caption) and queries (image key,
question, answer). Images are referenced by string keys that an ``ImageSource`` resolves, so tasks
are cheap to build, hash and ship, and the frozen encoder's features can be cached per key.

Rendering knobs of the Frozen protocol are pure functions over tasks: ``with_repeats`` (each
support pair shown again ``r`` more times) and ``with_task_induction`` (an instruction like
"Answer with dax or blicket." that opens every row of the task).

Example::

    import numpy as np
    from metamapper.data.tasks import sample_task, with_task_induction
    classes = {"cat": ["c1", "c2"], "dog": ["d1", "d2"]}
    task = sample_task(classes, ways=2, shots=1, queries_per_class=1,
                       rng=np.random.default_rng(0), naming="fixed", words=["dax", "blicket"])
    task.queries[0].question              # 'This is a'
    with_task_induction(task).queries[0].question   # 'Answer with dax or blicket. This is a'
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np
from PIL import Image

from metamapper.data.images import ImageLoadError  # noqa: F401  (re-exported)
from metamapper.data.words import TEST_WORDS, made_up_words
from metamapper.registry import Registry

if TYPE_CHECKING:
    from metamapper.config import DataConfig

NAMINGS = ("real", "made_up", "fixed")
Rng = np.random.Generator | random.Random
EVAL_SPLITS = ("train", "val", "test", "all")
"""What ``evaluation_tasks(split=...)`` may ask for: a benchmark file's seeded parts (or all of
it); sources that sample tasks offer ``test`` and ``val`` streams."""
VAL_SEED_OFFSET = 1_000_003
"""Sampled sources draw their ``val`` stream with ``seed + VAL_SEED_OFFSET`` (and ``val`` task
ids), so it never repeats the ``test`` stream of the same ``seed``."""


@dataclass(frozen=True)
class Example:
    """One support pair: an image key and its caption (e.g. ``"This is a dax."``)."""

    image: str
    caption: str


@dataclass(frozen=True)
class Query:
    """One query: an image key, the question text put after its image, and the answer."""

    image: str
    question: str
    answer: str


@dataclass(frozen=True)
class Task:
    """An N-way k-shot task.

    Attributes:
        task_id: a stable identifier (e.g. ``"open_ended_mi_shots_1_ways_2:0001"``).
        ways: number of classes N (>= 2).
        shots: distinct support images per class k (>= 1).
        support: the support pairs, in presentation order (after ``with_repeats``, each pair may
            appear several times).
        queries: the queries.
        words: the N answer words/names of the task, in class order.
        instruction: text put first in every LM row of the task, before the support and the
            query (task induction, ``with_task_induction``); ``""``: none.
    """

    task_id: str
    ways: int
    shots: int
    support: tuple[Example, ...]
    queries: tuple[Query, ...]
    words: tuple[str, ...]
    instruction: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.ways, int) or self.ways < 2:
            raise ValueError(f"task {self.task_id!r}: ways must be an int >= 2, got {self.ways!r}")
        if not isinstance(self.shots, int) or self.shots < 1:
            raise ValueError(f"task {self.task_id!r}: shots must be an int >= 1, got {self.shots!r}")
        if len(self.words) != self.ways:
            raise ValueError(
                f"task {self.task_id!r}: {len(self.words)} words for {self.ways} ways"
            )
        if not self.support:
            raise ValueError(f"task {self.task_id!r}: empty support set")
        # Accept lists from callers but store tuples: tasks stay hashable and immutable.
        object.__setattr__(self, "support", tuple(self.support))
        object.__setattr__(self, "queries", tuple(self.queries))
        object.__setattr__(self, "words", tuple(self.words))

    def image_keys(self) -> list[str]:
        """All image keys of the task (support then queries, duplicates removed, in order)."""
        keys = [e.image for e in self.support] + [q.image for q in self.queries]
        return list(dict.fromkeys(keys))


@runtime_checkable
class ImageSource(Protocol):
    """Resolves image keys to PIL images.

    Attributes:
        identity: names the source's content (e.g. ``"folder:/data/coco"``); with the key it is
            the feature-cache key, so two sources with the same identity must give the same image
            for the same key.
    """

    identity: str

    def load(self, key: str) -> Image.Image:
        """The RGB image for ``key``; raises ``ImageLoadError`` naming the key on failure."""
        ...

    def keys(self) -> Sequence[str]:
        """All keys of the source."""
        ...


@dataclass(frozen=True)
class TaskSet:
    """Tasks and the image source that resolves their keys (what task sources build).

    ``dataset``, ``split`` and ``seed`` say what an evaluation set is (``data.sources.
    evaluation_tasks`` fills them; results record them); None for training sets.
    """

    tasks: list[Task]
    images: ImageSource
    dataset: str | None = None
    split: str | None = None
    seed: int | None = None


# --------------------------------------------------------------------------- rendering knobs


def with_repeats(task: Task, repeats: int) -> Task:
    """Show each support pair ``repeats`` more times (``1 + repeats`` times in all).

    The whole support list is repeated: ``[a, b] -> [a, b, a, b]`` for ``repeats=1``.

    Args:
        task: the task.
        repeats: extra presentations of the support list (>= 0).

    Returns:
        A new task (``shots`` unchanged: repeats are not distinct shots).

    Example::

        >>> t = with_repeats(task, 2)
        >>> len(t.support) == 3 * len(task.support)
        True
    """
    if not isinstance(repeats, int) or repeats < 0:
        raise ValueError(f"repeats must be an int >= 0, got {repeats!r}")
    return replace(task, support=task.support * (1 + repeats))


def induction_text(words: Sequence[str]) -> str:
    """The task-induction instruction: ``"Answer with dax, blicket or perpo."``.

    Args:
        words: the task's answer words (at least one).

    Returns:
        The instruction sentence.

    Example::

        >>> induction_text(["dax", "blicket"])
        'Answer with dax or blicket.'
    """
    if not words:
        raise ValueError("task induction needs at least one word")
    joined = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    return f"Answer with {joined}."


def with_task_induction(task: Task) -> Task:
    """Give the task the instruction "Answer with a, b or c." (its words), which then opens every
    LM row built from it, as Frozen's task induction does: ``[instruction; p(x_1); caption_1; ...;
    p(x_q); question]`` in context, ``[instruction; p(x_q); question]`` with the paper's prefix
    input (``meta.episode``).

    Args:
        task: the task.

    Returns:
        A new task with ``instruction`` set.

    Example::

        >>> with_task_induction(task).instruction
        'Answer with dax or blicket.'
    """
    return replace(task, instruction=induction_text(task.words))


def filter_tasks(tasks: Iterable[Task], bad_keys: Iterable[str]) -> list[Task]:
    """Drop every task that uses one of ``bad_keys`` (e.g. images the feature cache skipped).

    Args:
        tasks: tasks.
        bad_keys: image keys to avoid (``[key for key, _ in report.skipped]``).

    Returns:
        The tasks that use none of them.

    Example::

        >>> filter_tasks(tasks, [key for key, _ in cache.fill(source, keys).skipped])
    """
    bad = set(bad_keys)
    return [t for t in tasks if bad.isdisjoint(t.image_keys())]


# --------------------------------------------------------------------------- sampling helpers


def _sample_indices(rng: Rng, n: int, k: int) -> list[int]:
    """``k`` distinct indices of ``range(n)`` in random order."""
    if isinstance(rng, random.Random):
        return rng.sample(range(n), k)
    return [int(i) for i in rng.choice(n, size=k, replace=False)]


def _uniform(rng: Rng) -> float:
    return rng.random() if isinstance(rng, random.Random) else float(rng.random())


def _permutation(rng: Rng, n: int) -> list[int]:
    return _sample_indices(rng, n, n)


def choose_words(
    classes: Sequence[str],
    *,
    naming: str,
    rng: Rng,
    words: Sequence[str] | None = None,
    real_names: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """The answer word of each class for one task.

    Args:
        classes: the task's classes, in class order.
        naming: ``"real"`` (``real_names[c]``, or the class name itself), ``"made_up"`` (distinct
            words drawn per task from ``words`` or else ``made_up_words()``), ``"fixed"``
            (distinct words drawn per task from ``words``, default ``TEST_WORDS``).
        rng: a ``numpy.random.Generator`` or ``random.Random``.
        words: the word pool of ``"made_up"`` / ``"fixed"``.
        real_names: class -> real name.

    Returns:
        One word per class.

    Example::

        >>> choose_words(["a", "b"], naming="fixed", rng=random.Random(0))
        ('slation', 'dax')
    """
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {', '.join(NAMINGS)}; got {naming!r}")
    if naming == "real":
        names = tuple((real_names or {}).get(c, c) for c in classes)
        if len(set(names)) != len(names):
            raise ValueError(f"classes {list(classes)} do not have distinct real names {names}")
        return names
    if naming == "fixed":
        pool = list(words) if words is not None else list(TEST_WORDS)
    else:
        pool = list(words) if words is not None else made_up_words()
    pool = list(dict.fromkeys(pool))
    if len(pool) < len(classes):
        raise ValueError(f"naming {naming!r} needs {len(classes)} distinct words, pool has "
                         f"{len(pool)}")
    return tuple(pool[i] for i in _sample_indices(rng, len(pool), len(classes)))


def _task_id(prefix: str, support: Sequence[Example], queries: Sequence[Query]) -> str:
    h = hashlib.sha1()
    for e in support:
        h.update(f"{e.image}\0{e.caption}\n".encode())
    for q in queries:
        h.update(f"{q.image}\0{q.question}\0{q.answer}\n".encode())
    return f"{prefix}{h.hexdigest()[:12]}"


class TaskSizeError(ValueError):
    """More ways, shots or queries than the classes' images allow (callers name their settings)."""


def _check_task_shape(*, ways: int, shots: int, queries_per_class: int) -> None:
    """Raise ``ValueError`` unless ways >= 2, shots >= 1 and queries_per_class >= 0 (ints)."""
    if not isinstance(ways, int) or ways < 2:
        raise ValueError(f"ways must be an int >= 2, got {ways!r}")
    if not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an int >= 1, got {shots!r}")
    if not isinstance(queries_per_class, int) or queries_per_class < 0:
        raise ValueError(f"queries_per_class must be an int >= 0, got {queries_per_class!r}")


def _classes_big_enough(class_to_keys: Mapping[str, Sequence[str]], *, ways: int,
                        need: int) -> list[str]:
    """The class names, in the mapping's order; ``TaskSizeError`` if there are fewer than
    ``ways`` of them or one has fewer than ``need`` image keys."""
    names = list(class_to_keys)
    if len(names) < ways:
        raise TaskSizeError(f"{ways}-way tasks need {ways} classes, only {len(names)} given")
    small = [c for c in names if len(class_to_keys[c]) < need]
    if small:
        c = small[0]
        raise TaskSizeError(
            f"class {c!r} has {len(class_to_keys[c])} images, fewer than shots + "
            f"queries_per_class = {need}"
            + (f" ({len(small) - 1} more such classes)" if len(small) > 1 else "")
        )
    return names


def _draw_images(class_to_keys: Mapping[str, Sequence[str]], classes: Sequence[str], *,
                 need: int, rng: Rng) -> list[list[str]]:
    """``need`` distinct image keys per class of ``classes``, none used by two classes."""
    used: set[str] = set()
    picked: list[list[str]] = []
    for c in classes:
        keys = class_to_keys[c]
        chosen = [keys[i] for i in _sample_indices(rng, len(keys), need)]
        if used.intersection(chosen) or len(set(chosen)) < need:
            # Rare: overlapping classes or duplicate keys; draw from the keys not used yet.
            free = list(dict.fromkeys(k for k in keys if k not in used))
            if len(free) < need:
                raise ValueError(f"class {c!r} has only {len(free)} images not used by the "
                                 f"task's other classes; {need} needed")
            chosen = [free[i] for i in _sample_indices(rng, len(free), need)]
        used.update(chosen)
        picked.append(chosen)
    return picked


def _pair_up(picked: Sequence[Sequence[str]], task_words: Sequence[str], *, shots: int,
             caption_template: str, question: str) -> tuple[list[Example], list[Query]]:
    """Support pairs (each class's first ``shots`` keys, captioned with its word) and queries
    (its other keys, answered with its word), in class order."""
    support = [
        Example(k, caption_template.format(word=w))
        for keys, w in zip(picked, task_words, strict=True) for k in keys[:shots]
    ]
    queries = [
        Query(k, question, w) for keys, w in zip(picked, task_words, strict=True)
        for k in keys[shots:]
    ]
    return support, queries


_T = TypeVar("_T")


def _shuffled(rng: Rng, items: Sequence[_T]) -> list[_T]:
    """``items`` in a random order drawn from ``rng``."""
    return [items[i] for i in _permutation(rng, len(items))]


def sample_task(
    class_to_keys: Mapping[str, Sequence[str]],
    *,
    ways: int,
    shots: int,
    queries_per_class: int,
    rng: Rng,
    naming: str = "made_up",
    words: Sequence[str] | None = None,
    real_names: Mapping[str, str] | None = None,
    caption_template: str = "This is a {word}.",
    question: str = "This is a",
    shuffle: bool = True,
    task_id: str | None = None,
) -> Task:
    """Sample one N-way k-shot task from classes of image keys.

    ``ways`` distinct classes are drawn (in the mapping's iteration order, then by ``rng``), and
    ``shots + queries_per_class`` distinct images per class: the first ``shots`` are the support,
    the rest the queries, so support and queries are disjoint and no image appears twice in a
    task (an image listed under two drawn classes is used for at most one). Support captions are
    ``caption_template.format(word=...)``, query answers the query class's word. With
    ``shuffle=True`` the support and query lists are shuffled (position does not give the class
    away); ``Task.words`` stays in class order. The same ``rng`` state gives the same task.

    Args:
        class_to_keys: class name -> image keys.
        ways: N (>= 2).
        shots: k (>= 1).
        queries_per_class: queries per class (>= 0).
        rng: a ``numpy.random.Generator`` or ``random.Random`` (advanced by the call).
        naming: see ``choose_words``: ``"real"``, ``"made_up"`` or ``"fixed"``.
        words: word pool for ``"made_up"`` / ``"fixed"``.
        real_names: class -> real name for ``"real"``.
        caption_template: support caption, with ``{word}``.
        question: the question text of each query.
        shuffle: shuffle support and queries.
        task_id: the id; default a hash of the task's content.

    Returns:
        The task.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> t = sample_task({"a": ["1", "2"], "b": ["3", "4"]}, ways=2, shots=1,
        ...                 queries_per_class=1, rng=rng, naming="made_up")
        >>> len(t.support), len(t.queries)
        (2, 2)
    """
    _check_task_shape(ways=ways, shots=shots, queries_per_class=queries_per_class)
    need = shots + queries_per_class
    names = _classes_big_enough(class_to_keys, ways=ways, need=need)
    classes = [names[i] for i in _sample_indices(rng, len(names), ways)]
    picked = _draw_images(class_to_keys, classes, need=need, rng=rng)
    task_words = choose_words(classes, naming=naming, rng=rng, words=words,
                              real_names=real_names)
    support, queries = _pair_up(picked, task_words, shots=shots,
                                caption_template=caption_template, question=question)
    if shuffle:  # support first, then queries: the order of the draws
        support = _shuffled(rng, support)
        queries = _shuffled(rng, queries)
    tid = task_id if task_id is not None else _task_id("task-", support, queries)
    return Task(tid, ways, shots, tuple(support), tuple(queries), task_words)


@dataclass(frozen=True)
class TaskSource:
    """A named source of few-shot tasks.

    Attributes:
        train_val: ``(data config, n_tasks, seed) -> (train, validation)`` task sets for
            meta-training; None for a source that only tests.
        test: ``(*, root, variant, ways, shots, n_tasks, seed, split) -> TaskSet``: the
            evaluation tasks of ``split`` (``data.tasks.EVAL_SPLITS``; ``"test"``: classes,
            images or tasks that meta-training never saw; a source refuses a split it lacks with
            a ``ValueError``); None for a training-only source.
        datasets: the evaluation names this source answers (``--dataset``) -> the ``variant``
            passed to ``test``.
        no_induction: evaluation names on which task induction ("Answer with dax or
            blicket.") is refused: their answers are not the support words (VQA).
        describe: ``(root) -> str``: one line on the source's data in ``root`` (None: its
            default), e.g. its class counts per split; cheap (it builds and downloads nothing).
    """

    train_val: Callable[[DataConfig, int, int], tuple[TaskSet, TaskSet]] | None = None
    test: Callable[..., TaskSet] | None = None
    datasets: Mapping[str, str] = field(default_factory=dict)
    no_induction: frozenset[str] = frozenset()
    describe: Callable[[str | None], str] | None = None


TASK_SOURCES: Registry[TaskSource] = Registry("task source")  # the built-in ones: metamapper.data.sources
