"""Your own images, one folder per class: task source ``"image-folders"``.

Layout (the torchvision ``ImageFolder`` one)::

    my_data/
      sneaker/  001.jpg 002.png ...
      sandal/   ...
      ...

The folder name is the class's real name (``_`` and ``-`` read as spaces: ``ankle_boot`` ->
"ankle boot"). The classes are split once, by a seeded shuffle of their sorted names, into
meta-training, validation and test classes (``split_classes``), so that the test classes are
never seen in meta-training: ``metamapper train data.source=image-folders data.root=my_data``
meta-trains on the first part; ``metamapper evaluate --dataset image-folders-open-ended --data
my_data`` tests on the last (Frozen's Open-Ended protocol: the test words dax, blicket, ...;
``image-folders-real-name``: the real names).

Example::

    train, val = training_tasks(DataConfig(source="image-folders", root="my_data"), 100, seed=0)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from metamapper.config import DataConfig
from metamapper.data.images import IMAGE_EXTENSIONS, FolderImageSource
from metamapper.data.tasks import TASK_SOURCES, TaskSet, TaskSource, sample_task
from metamapper.data.words import TEST_WORDS, made_up_words

SPLIT_SEED = 0  # the class split is a property of the data, the same for every run
FRACTIONS = (0.6, 0.2)  # meta-training and validation shares of the classes; the rest is test


def class_folders(root: str | Path) -> dict[str, list[str]]:
    """Class name -> its image keys (relative paths), for every sub-folder of ``root`` that holds
    images (searched recursively inside each class folder).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: fewer than two class folders with images.
    """
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist")
    source = FolderImageSource(path)
    classes: dict[str, list[str]] = {}
    for key in source.keys():
        folder, sep, _ = key.partition("/")
        if sep:  # images directly in root belong to no class
            classes.setdefault(folder, []).append(key)
    if len(classes) < 2:
        raise ValueError(f"{path}: needs at least two class folders holding images "
                         f"({', '.join(IMAGE_EXTENSIONS)}); found {len(classes)}")
    return dict(sorted(classes.items()))


def real_name(folder: str) -> str:
    """``"Ankle_boot"`` -> ``"ankle boot"``."""
    return re.sub(r"[\s_\-]+", " ", folder).strip().lower()


def split_classes(names: list[str]) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` -> class names: a seeded shuffle of the sorted names cut at
    ``FRACTIONS`` (at least one class each for validation and test when there are 3+ classes)."""
    order = [names[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(names))]
    n = len(order)
    n_test = max(1, round((1 - sum(FRACTIONS)) * n)) if n >= 3 else 0
    n_val = max(1, round(FRACTIONS[1] * n)) if n >= 3 else 0
    n_train = n - n_val - n_test
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
            "test": sorted(order[n_train + n_val:])}


def _split(root: str, part: str, ways: int) -> dict[str, list[str]]:
    classes = class_folders(root)
    names = split_classes(list(classes))[part]
    if len(names) < ways:
        raise ValueError(f"{root}: {ways}-way tasks need {ways} {part} classes, the class split gives "
                         f"{len(names)} of {len(classes)} classes (add class folders or lower ways)")
    return {real_name(c): classes[c] for c in names}


def _tasks(root: str, part: str, *, ways: int, shots: int, queries_per_class: int, n_tasks: int,
           seed: int, naming: str) -> TaskSet:
    keys = _split(root, part, ways)
    all_names = [real_name(c) for c in class_folders(root)]
    words = TEST_WORDS if naming == "fixed" else made_up_words(exclude=all_names)
    rng = np.random.default_rng(seed)
    tasks = [sample_task(keys, ways=ways, shots=shots, queries_per_class=queries_per_class, rng=rng,
                         naming=naming, words=words, task_id=f"folders-{part}-{seed}-{i:05d}")
             for i in range(n_tasks)]
    return TaskSet(tasks, FolderImageSource(root))


def _train_val(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    if not d.root:
        raise ValueError("data.root must name the folder of class folders for source image-folders")
    kw = dict(ways=d.ways, shots=d.shots)
    train = _tasks(d.root, "train", queries_per_class=d.queries_per_class, n_tasks=n_tasks, seed=seed,
                   naming=d.naming, **kw)
    val = _tasks(d.root, "val", queries_per_class=1, n_tasks=200, seed=seed + 1, naming="made_up", **kw)
    return train, val


def _test(*, root: str | None, variant: str, ways: int, shots: int, n_tasks: int, seed: int,
          split: str = "test") -> TaskSet:
    """Tasks on the ``test`` classes, or on the ``val`` classes (``split="val"``)."""
    if not root:
        raise ValueError("--data must name the folder of class folders")
    if split not in ("test", "val"):
        raise ValueError(f"image-folders evaluation has test and val classes, not {split!r}")
    return _tasks(root, split, ways=ways, shots=shots, queries_per_class=1, n_tasks=n_tasks or 1000,
                  seed=seed, naming="fixed" if variant == "open_ended" else "real")


TASK_SOURCES.register("image-folders")(TaskSource(
    train_val=_train_val, test=_test,
    datasets={"image-folders-open-ended": "open_ended", "image-folders-real-name": "real_name"},
    describe=lambda root: "your folder of class folders (data.root, --data): a seeded 60/20/20 class split",
))
