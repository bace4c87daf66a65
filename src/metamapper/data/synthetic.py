"""A generated dataset for smoke runs and tests: coloured shapes, no files needed.

Eight classes (a colour and a shape each), ``images_per_class`` noisy 32x32 pictures per class,
made deterministically from a seed. Classes 0-5 are meta-training classes, 6-7 held out, as in
the Fashion-MNIST default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from metamapper.config import DataConfig
from metamapper.data.images import ImageLoadError
from metamapper.data.tasks import TASK_SOURCES, VAL_SEED_OFFSET, TaskSet, TaskSource, sample_task
from metamapper.data.words import TEST_WORDS, made_up_words

CLASSES = (
    ("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "circle"),
    ("purple", "square"), ("orange", "triangle"), ("cyan", "circle"), ("white", "square"),
)
COLOURS = {
    "red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (230, 220, 40),
    "purple": (150, 40, 200), "orange": (250, 140, 20), "cyan": (30, 220, 220), "white": (245, 245, 245),
}
TRAIN_CLASSES = tuple(range(6))
TEST_CLASSES = (6, 7)


def class_name(c: int) -> str:
    colour, shape = CLASSES[c]
    return f"{colour} {shape}"


CLASS_NAMES = tuple(class_name(c) for c in range(len(CLASSES)))


def draw(c: int, i: int, seed: int = 0, size: int = 32) -> Image.Image:
    """Image ``i`` of class ``c``: its shape in its colour at a jittered place, on noise."""
    rng = np.random.default_rng([seed, c, i])
    bg = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    im = Image.fromarray(bg)
    d = ImageDraw.Draw(im)
    colour, shape = CLASSES[c]
    x, y = rng.integers(2, size // 3, size=2)
    s = int(rng.integers(size // 2, size - 4))
    box = (int(x), int(y), min(size - 1, int(x) + s), min(size - 1, int(y) + s))
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLOURS[colour])
    return im


class SyntheticImageSource:
    """An ``ImageSource`` of generated images; keys look like ``"c3/0007"``."""

    def __init__(self, *, images_per_class: int = 24, seed: int = 0) -> None:
        self.images_per_class = images_per_class
        self.seed = seed
        self.identity = f"synthetic:{images_per_class}:{seed}"

    def load(self, key: str) -> Image.Image:
        try:
            c, i = key.split("/")
            c_i, i_i = int(c[1:]), int(i)
        except ValueError:
            raise ImageLoadError(f"synthetic image key {key!r} is malformed") from None
        if not (0 <= c_i < len(CLASSES) and 0 <= i_i < self.images_per_class):
            raise ImageLoadError(f"synthetic image key {key!r} is out of range")
        return draw(c_i, i_i, self.seed)

    def keys(self) -> list[str]:
        return [f"c{c}/{i:04d}" for c in range(len(CLASSES)) for i in range(self.images_per_class)]

    def class_to_keys(self, classes: tuple[int, ...]) -> dict[str, list[str]]:
        return {class_name(c): [f"c{c}/{i:04d}" for i in range(self.images_per_class)] for c in classes}


def build_synthetic_tasks(
    *, split: str = "train", variant: str = "open_ended", ways: int = 2, shots: int = 1,
    queries_per_class: int = 1, n_tasks: int = 100, seed: int = 0, naming: str | None = None,
    images_per_class: int | None = 24, **_: Any,
) -> TaskSet:
    """Tasks over generated coloured shapes (``split`` train: classes 0-5; test or val: 6-7)."""
    source = SyntheticImageSource(images_per_class=images_per_class or 24)
    classes = TRAIN_CLASSES if split == "train" else TEST_CLASSES
    if naming is None:
        naming = "made_up" if split == "train" else ("fixed" if variant == "open_ended" else "real")
    keys = source.class_to_keys(classes)
    rng = np.random.default_rng(seed)
    tasks = [
        sample_task(keys, ways=ways, shots=shots, queries_per_class=queries_per_class, rng=rng,
                    naming=naming,
                    words=TEST_WORDS if naming == "fixed" else made_up_words(exclude=CLASS_NAMES),
                    task_id=f"synthetic-{split}-{seed}-{i:05d}")
        for i in range(n_tasks)
    ]
    return TaskSet(tasks, source)


def _train_val(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    kw: dict[str, Any] = dict(ways=d.ways, shots=d.shots, queries_per_class=d.queries_per_class)
    train = build_synthetic_tasks(split="train", n_tasks=n_tasks, seed=seed, naming=d.naming, **kw)
    val = build_synthetic_tasks(split="test", n_tasks=20, seed=seed + 1, **kw)
    return train, val


def _test(*, root: str | None, variant: str, ways: int, shots: int, n_tasks: int, seed: int,
          split: str = "test") -> TaskSet:
    """Tasks on the held-out classes 6-7: the ``test`` stream (``seed``) or the ``val`` stream
    (``seed + VAL_SEED_OFFSET``, ids ``synthetic-val-...``)."""
    if split not in ("test", "val"):
        raise ValueError(f"synthetic evaluation has a test and a val stream of held-out-class "
                         f"tasks, not {split!r}")
    return build_synthetic_tasks(split=split, variant=variant, ways=ways, shots=shots,
                                 n_tasks=n_tasks,
                                 seed=seed + VAL_SEED_OFFSET if split == "val" else seed)


TASK_SOURCES.register("synthetic")(TaskSource(train_val=_train_val, test=_test,
                                              datasets={"synthetic": "open_ended"},
                                              describe=lambda root: f"{len(CLASSES)} generated classes: "
                                              f"{len(TRAIN_CLASSES)} meta-training, {len(TEST_CLASSES)} held-out test"))
