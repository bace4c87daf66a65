"""COCO 2017 captions grouped into few-shot tasks by object category (cross-domain training).

Reads the official annotation files ``captions_{split}2017.json`` and ``instances_{split}2017.json``
(from ``root/annotations/`` or ``root/``) and the images of ``root/{split}2017/``. Image keys are
paths relative to ``root`` (``"train2017/000000000009.jpg"``), so ``FolderImageSource(root)``
loads them.

Task rule (``CocoTasks.sample``): N distinct categories; every image of class c contains category c
and none of the task's other N-1 categories (so the class of each image is unambiguous); no image
appears twice in a task (support and queries are disjoint). Only images with at least one caption
are used. The reference implementation violated the last point (lesson 11 of MISSION.md).

Example::

    import numpy as np
    from metamapper.data.coco import CocoTasks
    coco = CocoTasks("/data/coco", split="train")
    task = coco.sample(ways=2, shots=1, queries_per_class=1, rng=np.random.default_rng(0))
    coco.images.load(task.support[0].image)
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metamapper.config import DataConfig
from metamapper.data.images import FolderImageSource
from metamapper.data.tasks import (
    NAMINGS,
    TASK_SOURCES,
    Example,
    Query,
    Rng,
    Task,
    TaskSet,
    TaskSource,
    _permutation,
    _sample_indices,
    _task_id,
    choose_words,
)
from metamapper.data.words import made_up_words


class CocoFormatError(ValueError):
    """A COCO annotation file that does not follow the official format (names the file)."""


def _annotation_file(root: Path, kind: str, split: str) -> Path:
    name = f"{kind}_{split}2017.json"
    for p in (root / "annotations" / name, root / name):
        if p.is_file():
            return p
    raise FileNotFoundError(f"COCO annotation file {name!r} not found in {root}/annotations "
                            f"or {root}")


def _read_json(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: "
                              f"{e.msg}") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for k in keys:
        if not isinstance(data.get(k), list):
            raise CocoFormatError(f"{path}: missing list {k!r}")
    return data


class _CocoIndex:
    """Parsed annotations: image keys, captions and categories per image."""

    def __init__(self, root: str | os.PathLike[str], split: str) -> None:
        self.root = Path(root)
        self.split = split
        cap_path = _annotation_file(self.root, "captions", split)
        inst_path = _annotation_file(self.root, "instances", split)
        caps = _read_json(cap_path, ("images", "annotations"))
        inst = _read_json(inst_path, ("images", "annotations", "categories"))
        try:
            files = {int(im["id"]): str(im["file_name"]) for im in inst["images"]}
            files.update({int(im["id"]): str(im["file_name"]) for im in caps["images"]})
        except (KeyError, TypeError, ValueError) as e:
            raise CocoFormatError(f"{inst_path} / {cap_path}: bad image entry ({e!r})") from None
        try:
            self.category_names = {int(c["id"]): str(c["name"]) for c in inst["categories"]}
        except (KeyError, TypeError, ValueError) as e:
            raise CocoFormatError(f"{inst_path}: bad category entry ({e!r})") from None
        captions: dict[int, list[str]] = defaultdict(list)
        for a in caps["annotations"]:
            try:
                text = str(a["caption"]).strip()
                captions[int(a["image_id"])].append(text)
            except (KeyError, TypeError, ValueError) as e:
                raise CocoFormatError(f"{cap_path}: bad caption annotation ({e!r})") from None
        cats: dict[int, set[int]] = defaultdict(set)
        for a in inst["annotations"]:
            try:
                cats[int(a["image_id"])].add(int(a["category_id"]))
            except (KeyError, TypeError, ValueError) as e:
                raise CocoFormatError(f"{inst_path}: bad instance annotation ({e!r})") from None
        unknown = {c for s in cats.values() for c in s} - set(self.category_names)
        if unknown:
            raise CocoFormatError(f"{inst_path}: annotations use unknown category ids "
                                  f"{sorted(unknown)[:5]}")
        # Images with captions only (the support and query texts come from them).
        ids = sorted(i for i in files if any(c for c in captions.get(i, ())))
        self.image_ids = ids
        self.keys = {i: f"{split}2017/{files[i]}" for i in ids}
        self.captions = {i: [c for c in captions[i] if c] for i in ids}
        self.categories = {i: frozenset(cats.get(i, ())) for i in ids}
        by_cat: dict[int, list[int]] = defaultdict(list)
        for i in ids:
            for c in self.categories[i]:
                by_cat[c].append(i)
        self.by_category = {c: np.asarray(v, dtype=np.int64) for c, v in sorted(by_cat.items())}


class CocoTasks:
    """Few-shot tasks sampled from COCO, one class per object category.

    Args:
        root: the COCO folder (``annotations/`` + ``{split}2017/``).
        split: ``"train"`` or ``"val"``.
        min_images: categories with fewer usable images are never drawn.

    Attributes:
        images: a ``FolderImageSource`` over ``root``.
        category_names: category id -> name.

    Example::

        >>> coco = CocoTasks("/data/coco", "val")
        >>> t = coco.sample(ways=5, shots=1, queries_per_class=1, rng=np.random.default_rng(0),
        ...                 naming="made_up")
        >>> t.support[0].caption
        'This is a brel.'
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *,
                 min_images: int = 2) -> None:
        self._index = _CocoIndex(root, split)
        self.images = FolderImageSource(root)
        self.category_names = self._index.category_names
        self.categories = [c for c, v in self._index.by_category.items() if len(v) >= min_images]

    def class_keys(self, category: str | int) -> list[str]:
        """The image keys that contain a category (by id or name)."""
        cid = self._category_id(category)
        return [self._index.keys[int(i)] for i in self._index.by_category.get(cid, ())]

    def _category_id(self, category: str | int) -> int:
        if isinstance(category, int):
            return category
        for cid, name in self.category_names.items():
            if name == category:
                return cid
        raise KeyError(f"unknown COCO category {category!r}")

    def sample(
        self,
        ways: int,
        shots: int,
        queries_per_class: int = 1,
        rng: Rng | None = None,
        *,
        naming: str = "real",
        words: Sequence[str] | None = None,
        caption_template: str = "This is a {word}.",
        question: str = "This is a",
        real_question: str = "",
        max_tries: int = 100,
        task_id: str | None = None,
    ) -> Task:
        """Sample one task under the rule of the module docstring.

        With ``naming="real"`` each support caption is one of the image's real captions and each
        query asks ``real_question`` (default: nothing, plain captioning) with one of its real
        captions as the answer; ``Task.words`` are the category names. With ``"made_up"`` or
        ``"fixed"`` (binding tasks, see ``choose_words``) captions are
        ``caption_template`` with the class's word and queries ask ``question`` with the word as
        the answer.

        Args:
            ways: N.
            shots: k.
            queries_per_class: queries per class.
            rng: ``numpy.random.Generator`` or ``random.Random`` (default: a fresh unseeded one).
            naming: ``"real"``, ``"made_up"`` or ``"fixed"``.
            words: word pool for ``"made_up"`` / ``"fixed"``.
            caption_template: binding caption with ``{word}``.
            question: binding query question.
            real_question: query question under real captions.
            max_tries: category draws to try before giving up (a draw fails when a category has
                too few images without the other categories).
            task_id: the id; default a hash of the content.

        Returns:
            The task.
        """
        if naming not in NAMINGS:
            raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")
        if ways < 2 or shots < 1 or queries_per_class < 0:
            raise ValueError(f"need ways >= 2, shots >= 1, queries_per_class >= 0; got {ways}, "
                             f"{shots}, {queries_per_class}")
        rng = rng if rng is not None else np.random.default_rng()
        need = shots + queries_per_class
        cats = [c for c in self.categories if len(self._index.by_category[c]) >= need]
        if len(cats) < ways:
            raise ValueError(f"only {len(cats)} COCO categories have >= {need} captioned images; "
                             f"{ways} needed")
        for _ in range(max_tries):
            chosen = [cats[i] for i in _sample_indices(rng, len(cats), ways)]
            picked = self._pick_images(chosen, need, rng)
            if picked is not None:
                break
        else:
            raise ValueError(f"no {ways} categories with {need} images each that contain none "
                             f"of the other drawn categories found in {max_tries} tries")
        names = [self.category_names[c] for c in chosen]
        real = naming == "real"  # real captions; otherwise binding captions with words
        if real:
            words_ = tuple(names)
        else:
            if words is None and naming == "made_up":  # never a category name as a made-up word
                words = made_up_words(exclude=self.category_names.values())
            words_ = choose_words(names, naming=naming, rng=rng, words=words)
        support, queries = [], []
        for ids, w in zip(picked, words_, strict=True):
            for j, i in enumerate(ids):
                key = self._index.keys[i]
                if real:
                    caps = self._index.captions[i]
                    text = caps[_sample_indices(rng, len(caps), 1)[0]]
                    if j < shots:
                        support.append(Example(key, text))
                    else:
                        queries.append(Query(key, real_question, text))
                elif j < shots:
                    support.append(Example(key, caption_template.format(word=w)))
                else:
                    queries.append(Query(key, question, w))
        support = [support[i] for i in _permutation(rng, len(support))]
        queries = [queries[i] for i in _permutation(rng, len(queries))]
        tid = task_id if task_id is not None else _task_id("coco-", support, queries)
        return Task(tid, ways, shots, tuple(support), tuple(queries), words_)

    def _pick_images(self, chosen: list[int], need: int, rng: Rng) -> list[list[int]] | None:
        picked: list[list[int]] = []
        used: set[int] = set()
        for c in chosen:
            others = frozenset(chosen) - {c}
            pool = self._index.by_category[c]
            ids: list[int] = []
            # Walk a random order until enough exclusive images are found (no full filtering:
            # "person" has ~64k images).
            for pos in _permutation(rng, len(pool)):
                i = int(pool[pos])
                if i not in used and self._index.categories[i].isdisjoint(others):
                    ids.append(i)
                    if len(ids) == need:
                        break
            if len(ids) < need:
                return None
            used.update(ids)
            picked.append(ids)
        return picked

    def tasks(self, n_tasks: int, *, ways: int, shots: int, queries_per_class: int = 1,
              seed: int = 0, **kwargs: Any) -> list[Task]:
        """``n_tasks`` tasks from ``numpy.random.default_rng(seed)`` (see ``sample``).

        Example::

            >>> coco.tasks(100, ways=2, shots=1, naming="made_up", seed=0)
        """
        rng = np.random.default_rng(seed)
        return [self.sample(ways, shots, queries_per_class, rng, **kwargs,
                            task_id=f"coco-{self._index.split}-seed{seed}-{i:06d}")
                for i in range(n_tasks)]


class CocoCaptionPairs:
    """Non-episodic COCO captioning data: one ``(image key, caption)`` item per caption.

    Usable directly as a map-style dataset (``len`` and indexing).

    Args:
        root: the COCO folder.
        split: ``"train"`` or ``"val"``.

    Example::

        >>> pairs = CocoCaptionPairs("/data/coco", "train")
        >>> key, caption = pairs[0]
        >>> image = pairs.images.load(key)
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        index = _CocoIndex(root, split)
        self.images = FolderImageSource(root)
        self.pairs = [(index.keys[i], c) for i in index.image_ids for c in index.captions[i]]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[str, str]:
        return self.pairs[i]


def build_coco_tasks(
    *, root: str, split: str = "train", n_tasks: int = 1000, ways: int = 2, shots: int = 1,
    queries_per_class: int = 1, seed: int = 0, **kwargs: Any,
) -> TaskSet:
    """``CocoTasks(root, split).tasks(...)`` with its image folder.

    Example::

        >>> ts = build_coco_tasks(root="/data/coco", n_tasks=10, naming="made_up")
    """
    coco = CocoTasks(root, split)
    tasks = coco.tasks(n_tasks, ways=ways, shots=shots, queries_per_class=queries_per_class,
                       seed=seed, **kwargs)
    return TaskSet(tasks, coco.images)


def _train_val(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """Cross-domain: COCO train2017 caption tasks grouped by object category; validation on
    val2017 tasks."""
    if not d.root:
        raise ValueError("data.root must name the COCO folder (annotations/ + train2017/ + val2017/)")
    kw: dict[str, Any] = dict(ways=d.ways, shots=d.shots, queries_per_class=d.queries_per_class,
                              naming=d.naming)
    train = build_coco_tasks(root=d.root, split="train", n_tasks=n_tasks, seed=seed, **kw)
    val = build_coco_tasks(root=d.root, split="val", n_tasks=200, seed=seed + 1, **kw)
    return train, val


TASK_SOURCES.register("coco")(TaskSource(
    train_val=_train_val, describe=lambda root: "COCO captions grouped into tasks by object category "
                                                "(data.root; meta-training only)"))
