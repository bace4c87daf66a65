"""Task source ``image-folders``: one folder per class, split into train / validation / test classes."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from metamapper.config import DataConfig
from metamapper.data.class_folders import class_folders, real_name, split_classes
from metamapper.data.sources import evaluation_tasks, training_tasks

NAMES = ["ankle_boot", "bag", "coat", "dress", "sandal", "shirt", "sneaker", "trouser", "pullover", "hat"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for c, name in enumerate(NAMES):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("RGB", (8, 8), (20 * c, 10 * i, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "loose.png").write_bytes((tmp_path / "bag" / "0.png").read_bytes())  # no class
    return tmp_path


def test_the_class_split_is_disjoint_and_covers_every_class(root: Path) -> None:
    classes = class_folders(root)
    assert list(classes) == sorted(NAMES) and classes["bag"] == [f"bag/{i}.png" for i in range(4)]
    parts = split_classes(list(classes))
    assert sorted(sum(parts.values(), [])) == sorted(NAMES)
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (6, 2, 2)
    assert split_classes(list(classes)) == parts  # fixed: the same for every run
    assert real_name("Ankle_boot") == "ankle boot"


def test_training_and_test_tasks_use_disjoint_classes(root: Path) -> None:
    train, val = training_tasks(DataConfig(source="image-folders", root=str(root)), n_tasks=30, seed=0)
    test = evaluation_tasks("image-folders-real-name", data=str(root), ways=2, shots=1, n_tasks=10)
    folders = {ts: {k.split("/")[0] for t in s.tasks for k in t.image_keys()}
               for ts, s in (("train", train), ("val", val), ("test", test))}
    assert folders["train"].isdisjoint(folders["test"]) and folders["val"].isdisjoint(folders["test"])
    assert folders["train"].isdisjoint(folders["val"])
    assert {w for t in test.tasks for w in t.words} == {real_name(f) for f in folders["test"]}
    made_up = {w for t in train.tasks for w in t.words}
    assert not made_up & {real_name(n) for n in NAMES}  # made-up words, never a class name
    oe = evaluation_tasks("image-folders-open-ended", data=str(root), ways=2, shots=1, n_tasks=5)
    assert {w for t in oe.tasks for w in t.words} <= {"dax", "blicket", "shously", "slation", "perpo"}
    assert test.images.load(test.tasks[0].queries[0].image).mode == "RGB"


def test_bad_folders_end_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        class_folders(tmp_path / "nope")
    (tmp_path / "only").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "a.png")
    with pytest.raises(ValueError, match="at least two class folders"):
        class_folders(tmp_path)
    with pytest.raises(ValueError, match="data.root"):
        training_tasks(DataConfig(source="image-folders"), n_tasks=1, seed=0)
