import gzip
import struct

import numpy as np
import pytest

from metamapper.data.benchmarks import load_benchmark
from metamapper.data.export import export_fashion
from metamapper.data.fashion import (
    CLASS_NAMES,
    FashionImageSource,
    FashionMNIST,
    FashionMNISTNotFoundError,
    IdxFormatError,
    class_to_keys,
    fashion_tasks,
    read_idx,
)
from metamapper.data.images import ImageLoadError, load_image
from metamapper.data.sources import evaluation_tasks
from metamapper.data.words import TEST_WORDS


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    b = np.array([1, -2, 300], dtype=np.int32)
    (tmp_path / "b").write_bytes(idx_bytes(b, 0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), b)
    (tmp_path / "short.gz").write_bytes(gzip.compress(idx_bytes(a)[:-5]))
    with pytest.raises(IdxFormatError, match="short.gz: header says shape"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(IdxFormatError, match="bad magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(idx_bytes(a))[:20])
    with pytest.raises(IdxFormatError, match="bad.gz: corrupt gzip"):
        read_idx(tmp_path / "bad.gz")


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FashionMNISTNotFoundError, match="pass root=.*dataset-fashion-mnist"):
        FashionMNIST(str(tmp_path), "train")


def test_dataset_and_source(fashion_root):
    test = FashionMNIST(str(fashion_root), "test")
    assert test.images.shape == (10000, 28, 28) and test.images.dtype == np.uint8
    assert len(test) == 10000 and set(np.unique(test.labels)) == set(range(10))
    src = FashionImageSource(fashion_root, "test")
    im = src.load("test/000123")
    assert im.mode == "RGB" and im.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(im)[..., 0], test.images[123])
    assert src.identity.endswith(":test") and str(fashion_root) in src.identity
    assert src.identity != FashionImageSource(fashion_root, "train").identity
    for bad in ("train/000001", "test/010000", "test/x"):
        with pytest.raises(ImageLoadError, match=bad):
            src.load(bad)


def test_classes_never_mixed(fashion_root):
    train = class_to_keys("train", images_per_class=20, seed=1)
    assert list(train) == list(CLASS_NAMES[:6]) and all(len(v) == 20 for v in train.values())
    labels = FashionMNIST(str(fashion_root), "train").labels
    assert all(labels[int(k[6:])] == CLASS_NAMES.index(c) for c, ks in train.items() for k in ks)
    test = class_to_keys("test")
    assert list(test) == list(CLASS_NAMES[6:]) and all(len(v) == 1000 for v in test.values())
    with pytest.raises(ValueError, match="never mixed"):
        class_to_keys("train", classes=(6,))
    # the test split's images are never meta-trained on: its classes 0-5 may be scored (fashion-all-*)
    assert list(class_to_keys("test", classes=(0,))) == [CLASS_NAMES[0]]


def test_all_ten_classes_datasets(fashion_root):
    ts = evaluation_tasks("fashion-all-real-name", data=None, ways=5, shots=1, n_tasks=60)
    answers = {q.answer for t in ts.tasks for q in t.queries}
    assert len(answers) == 10 and "trouser" in answers and "ankle boot" in answers
    assert all(k.startswith("test/") for t in ts.tasks for k in t.image_keys())
    assert all(t.task_id.startswith("fashion-test-all-real_name-5w1s") for t in ts.tasks)
    val = evaluation_tasks("fashion-all-open-ended", data=None, ways=2, shots=1, n_tasks=20, split="val")
    test = evaluation_tasks("fashion-all-open-ended", data=None, ways=2, shots=1, n_tasks=20)
    assert all(t.task_id.startswith("fashion-val-all-") for t in val.tasks)
    assert {t.task_id for t in val.tasks}.isdisjoint(t.task_id for t in test.tasks)
    held_out = evaluation_tasks("fashion-open-ended", data=None, ways=2, shots=1, n_tasks=20)
    assert held_out.tasks != test.tasks


def test_task_variants(fashion_root):
    oe = fashion_tasks("test", "open_ended", ways=4, shots=2, n_tasks=20, seed=0)
    assert oe == fashion_tasks("test", "open_ended", ways=4, shots=2, n_tasks=20, seed=0)
    assert all(set(t.words) <= set(TEST_WORDS) for t in oe)
    assert len({t.words for t in oe}) > 1  # words assigned at random per task
    assert all(k.startswith("test/") for t in oe for k in t.image_keys())
    rn = fashion_tasks("test", "real_name", ways=2, shots=1, n_tasks=5, seed=0)
    names = {n.lower() for n in CLASS_NAMES[6:]}
    for t in rn:
        assert set(t.words) <= names
        assert all(e.caption == f"This is a {e.caption[10:-1]}." for e in t.support)
        assert all(q.answer in names and q.question == "This is a" for q in t.queries)
    train = fashion_tasks("train", "open_ended", ways=5, shots=1, n_tasks=20, seed=0)
    assert all(k.startswith("train/") for t in train for k in t.image_keys())
    assert not {w for t in train for w in t.words} & (set(TEST_WORDS) | names)
    ts = evaluation_tasks("fashion-open-ended", data=None, ways=2, shots=1, n_tasks=2)
    assert len(ts.tasks) == 2 and ts.images.load(ts.tasks[0].queries[0].image).size == (28, 28)
    with pytest.raises(ValueError, match="5 classes, only 4 given"):
        fashion_tasks("test", ways=5, n_tasks=1)


@pytest.mark.parametrize("variant, name", [("open_ended", "open_ended_mi"),
                                           ("real_name", "real_name_mi")])
def test_export_round_trip(fashion_root, tmp_path, variant, name):
    path = export_fashion(tmp_path, variant=variant, ways=2, shots=3, n_tasks=4, seed=5)
    assert path.name == f"{name}_shots_3_ways_2_all_questions.json"
    tasks = load_benchmark(tmp_path, name, ways=2, shots=3)
    sampled = fashion_tasks("test", variant, ways=2, shots=3, n_tasks=4, seed=5)
    assert len(tasks) == 4
    for got, want in zip(tasks, sampled, strict=True):
        assert [e.caption for e in got.support] == [e.caption for e in want.support]
        assert set(got.words) == set(want.words)
        assert len(got.queries) == 1 and got.queries[0].answer in want.words
        assert got.queries[0].question == "This is a"
    src = FashionImageSource(fashion_root, "test")
    first = load_benchmark(tmp_path, name, ways=2, shots=3)[0]
    exported = np.asarray(load_image(tmp_path / first.support[0].image), dtype=np.float32)
    original = np.asarray(src.load(sampled[0].support[0].image), dtype=np.float32)
    assert np.abs(exported - original).mean() < 8  # the same picture, up to JPEG loss
