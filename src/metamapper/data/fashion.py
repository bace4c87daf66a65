"""Fashion-MNIST: the embedded default benchmark.

The four gzip IDX files come from the first of (``fashion_root()``):

1. Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist/`` (the tested
   default);
2. ``fashion-mnist/`` in a ``metamapper.downloads.data_dirs()`` folder (the environment's, then the
   user's cache), where an earlier download put them;
3. a download of Zalando's release files into the user's cache (no root needed), each checked
   against the pinned SHA-256 of its uncompressed IDX data (``FASHION_SHA256``: the official
   files and Debian's recompressed copies hold the same bytes).

An explicit ``root=`` is used as it is. Classes 0-5 of the train
split are the meta-training classes, classes 6-9 of the test split the held-out test classes; the
two are never mixed, so test tasks use classes and images that meta-training never saw.

- Meta-training tasks (``split="train"``) name classes with made-up words drawn per task
  (``variant="open_ended"``, default naming ``"made_up"``) or with their real names
  (``variant="real_name"``, default naming ``"real"``).
- Test tasks (``split="test"``) follow Frozen: Real-Name ("This is a {name}.", answer the lower-case
  real name) and Open-Ended (the five nonsense words ``TEST_WORDS``, assigned at random per task).
- ``metamapper evaluate --dataset fashion-open-ended`` scores held-out-class test tasks drawn with
  the fixed test seed; ``--split val`` draws a validation stream of held-out-class tasks with
  another seed (``data.tasks.VAL_SEED_OFFSET``, ids ``fashion-val-...``) for choosing models
  and settings without looking at the test tasks (the two streams share the held-out images).

Example::

    from metamapper.data.fashion import FashionImageSource, fashion_tasks
    tasks = fashion_tasks("test", "open_ended", ways=2, shots=1, n_tasks=100, seed=0)
    images = FashionImageSource(split="test")
    images.load(tasks[0].queries[0].image)          # 28x28 RGB PIL image
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metamapper.config import DataConfig
from metamapper.data.images import ImageLoadError
from metamapper.data.tasks import (
    TASK_SOURCES,
    VAL_SEED_OFFSET,
    Task,
    TaskSet,
    TaskSource,
    sample_task,
)
from metamapper.data.words import TEST_WORDS, made_up_words
from metamapper.downloads import DownloadError, cache_dir, fetch_url, find_data, say

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
TRAIN_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
"""Meta-training classes, taken from the train split only."""
TEST_CLASSES: tuple[int, ...] = (6, 7, 8, 9)
"""Held-out test classes, taken from the test split only."""
ALL_CLASSES: tuple[int, ...] = tuple(range(10))
"""The ``fashion-all-*`` datasets: all ten classes of the test split, to score a run that never
meta-trained on Fashion-MNIST (a domain it has not seen)."""
SPLITS = {"train": "train", "test": "t10k"}
FASHION_SHA256 = {
    # SHA-256 of each file's uncompressed IDX bytes: gzip output differs between compressors
    # (Debian recompressed the release files), the data does not
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MIRRORS = (
    # Zalando's release: the download links of its README, then the files in its repository
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
VARIANTS = ("open_ended", "real_name")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxFormatError(ValueError):
    """A file that is not a valid (gzip) IDX file; the message names the file and the problem."""


class FashionMNISTNotFoundError(FileNotFoundError):
    """The Fashion-MNIST files are missing and could not be downloaded."""


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or plain) into a numpy array.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        An array of the file's shape and dtype (native byte order), e.g. ``(60000, 28, 28)``
        uint8.

    Raises:
        FileNotFoundError: the file is missing.
        IdxFormatError: bad gzip data, bad magic number, unknown dtype code, or a data size that
            does not match the header (truncated or trailing bytes).

    Example::

        >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape
        (10000,)
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IdxFormatError(f"{p}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(f"{p}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise IdxFormatError(f"{p}: unknown IDX data type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise IdxFormatError(f"{p}: truncated IDX header ({ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(f"{p}: header says shape {shape} ({expected} data bytes) but the "
                             f"file has {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _complete(root: Path) -> bool:
    return all(_find(root, stem) is not None for stem in FASHION_SHA256)


def gunzip_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a gzip file's uncompressed bytes (of a plain file's bytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except (EOFError, zlib.error) as e:  # a truncated or damaged download
        raise IdxFormatError(f"{path}: corrupt gzip data ({e})") from None
    return h.hexdigest()


def find_fashion_root() -> Path | None:
    """The folder of the four Fashion-MNIST files where they already are, without the network:
    Debian's ``DEFAULT_ROOT``, else ``fashion-mnist/`` in a ``data_dirs()`` folder."""
    if _complete(Path(DEFAULT_ROOT)):
        return Path(DEFAULT_ROOT)
    found = find_data("fashion-mnist/train-images-idx3-ubyte.gz")
    return found.parent if found is not None and _complete(found.parent) else None


def download_fashion(
    directory: str | os.PathLike[str] | None = None, *, mirrors: Sequence[str] | None = None,
) -> Path:
    """Download the four release files into ``directory/fashion-mnist/`` (default:
    ``cache_dir()``), each checked against ``FASHION_SHA256``; files already there are kept.

    Args:
        directory: where to put the ``fashion-mnist`` folder.
        mirrors: base URLs tried in order for each file (default: ``FASHION_MIRRORS``).

    Returns:
        The ``fashion-mnist`` folder.

    Raises:
        DownloadError: a file could not be fetched from any mirror, or failed its checksum.
    """
    folder = Path(directory or cache_dir()) / "fashion-mnist"
    missing = [stem for stem in FASHION_SHA256 if not (folder / f"{stem}.gz").is_file()]
    if missing:
        say(f"downloading Fashion-MNIST (4 files, 30 MB) into {folder}")
    for stem in missing:
        fetch_url([f"{m}{stem}.gz" for m in mirrors or FASHION_MIRRORS], folder / f"{stem}.gz",
                  sha256=FASHION_SHA256[stem], digest=gunzip_sha256)
    return folder


def fashion_root(*, download: bool = True) -> Path:
    """The folder of the Fashion-MNIST files: ``find_fashion_root()``, else (``download``) a
    fresh ``download_fashion()`` into the user's cache.

    Raises:
        FashionMNISTNotFoundError: not found, and not downloadable (a one-line message).
    """
    found = find_fashion_root()
    if found is not None:
        return found
    how = ("install Debian's package (sudo apt-get install dataset-fashion-mnist), connect to "
           "the internet once, or point root= (data.root=) at a folder of the four IDX files")
    if not download:
        raise FashionMNISTNotFoundError(f"Fashion-MNIST is not in {DEFAULT_ROOT} nor in the "
                                        f"cache: {how}")
    try:
        return download_fashion()
    except DownloadError as e:
        raise FashionMNISTNotFoundError(f"Fashion-MNIST is not in {DEFAULT_ROOT} and {e}: {how}") from None


@lru_cache(maxsize=4)
def _load(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = SPLITS[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    files = [_find(Path(root), s) for s in stems]
    missing = [s + ".gz" for s, f in zip(stems, files, strict=True) if f is None]
    if missing:
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST {split} files missing in {root!r}: {', '.join(missing)}; pass root= "
            "(data.root=) a folder holding the four IDX files, or leave it out to use Debian's "
            "dataset-fashion-mnist or a checked download"
        )
    image_file, label_file = files[0], files[1]
    assert image_file is not None and label_file is not None  # checked above: none is missing
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IdxFormatError(f"{files[0]}: expected uint8 images (n, 28, 28), got "
                             f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IdxFormatError(f"{files[1]}: expected {len(images)} labels, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise IdxFormatError(f"{files[1]}: labels outside 0..{len(CLASS_NAMES) - 1}")
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


@dataclass(frozen=True)
class FashionMNIST:
    """One split of Fashion-MNIST, loaded once per process (read-only arrays).

    Attributes:
        images: ``(n, 28, 28)`` uint8.
        labels: ``(n,)`` int64 class indices (names in ``CLASS_NAMES``).

    Example::

        >>> ds = FashionMNIST(split="test")
        >>> ds.images.shape, CLASS_NAMES[ds.labels[0]]
        ((10000, 28, 28), 'Ankle boot')
    """

    root: str | None = None  # the folder of the IDX files (default: fashion_root()), resolved
    split: str = "train"

    def __post_init__(self) -> None:
        _check_split(self.split)
        root = fashion_root() if self.root is None else Path(self.root)
        object.__setattr__(self, "root", str(root.resolve()))
        _load(str(self.root), self.split)  # fail now, not at first use, if the files are missing

    @property
    def images(self) -> np.ndarray:
        """``(n, 28, 28)`` uint8 pictures (read-only)."""
        return _load(str(self.root), self.split)[0]

    @property
    def labels(self) -> np.ndarray:
        """``(n,)`` int64 class indices into ``CLASS_NAMES`` (read-only)."""
        return _load(str(self.root), self.split)[1]

    def __len__(self) -> int:
        return len(self.labels)


class FashionImageSource:
    """An ``ImageSource`` over one Fashion-MNIST split; keys look like ``"train/000123"``.

    Images are the 28x28 greyscale pictures converted to RGB (the encoders resize them).

    Args:
        root: the folder of the IDX files (default: ``fashion_root()``).
        split: ``"train"`` or ``"test"``.

    Example::

        >>> src = FashionImageSource(split="train")
        >>> src.load("train/000000").size, src.load("train/000000").mode
        ((28, 28), 'RGB')
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, split: str = "train") -> None:
        self.data = FashionMNIST(None if root is None else str(root), split)
        self.split = split
        self.identity = f"fashion-mnist:{self.data.root}:{split}"

    def __repr__(self) -> str:
        return f"FashionImageSource({self.data.root!r}, {self.split!r})"

    def key(self, index: int) -> str:
        """The key of image ``index``."""
        return f"{self.split}/{index:06d}"

    def index(self, key: str) -> int:
        """The image index of ``key``; raises ``ImageLoadError`` for a key of another split."""
        prefix, _, num = key.partition("/")
        if prefix != self.split or not num.isdigit() or not 0 <= int(num) < len(self.data):
            raise ImageLoadError(f"image key {key!r} is not a key of Fashion-MNIST "
                                 f"{self.split} ({self.split}/000000 .. {len(self.data) - 1})")
        return int(num)

    def load(self, key: str) -> Image.Image:
        """The RGB image of ``key``."""
        return Image.fromarray(self.data.images[self.index(key)]).convert("RGB")

    def keys(self) -> list[str]:
        """All keys of the split."""
        return [self.key(i) for i in range(len(self.data))]


def _default_classes(split: str) -> tuple[int, ...]:
    return TRAIN_CLASSES if split == "train" else TEST_CLASSES


def _allowed_classes(split: str) -> tuple[int, ...]:
    # the test split's images are never meta-trained on: its classes 0-5 may be scored too
    # (fashion-all-*), by runs that did not meta-train on Fashion-MNIST at all
    return TRAIN_CLASSES if split == "train" else ALL_CLASSES


def class_to_keys(
    split: str = "train",
    classes: tuple[int, ...] | None = None,
    images_per_class: int | None = None,
    seed: int = 0,
    *,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, list[str]]:
    """Class name -> image keys of one split, for ``sample_task``.

    Train tasks may only use ``TRAIN_CLASSES``; test tasks use ``TEST_CLASSES`` unless
    ``classes`` names others (``ALL_CLASSES`` for the ``fashion-all-*`` datasets). Images of the
    train split are never test images, and test-split images are never meta-trained on.

    Args:
        split: ``"train"`` or ``"test"``.
        classes: class indices (default: the split's classes).
        images_per_class: keep a seeded random subset of this many images per class
            (default: all).
        seed: seed of that subset.
        root: the folder of the IDX files (default: ``fashion_root()``).

    Returns:
        ``{"Shirt": ["test/000004", ...], ...}`` in class-index order, keys sorted.

    Example::

        >>> {c: len(k) for c, k in class_to_keys("test", images_per_class=50).items()}
        {'Shirt': 50, 'Sneaker': 50, 'Bag': 50, 'Ankle boot': 50}
    """
    _check_split(split)
    allowed = _allowed_classes(split)
    classes = _default_classes(split) if classes is None else tuple(classes)
    bad = [c for c in classes if c not in allowed]
    if bad:
        raise ValueError(f"classes {bad} are not {split} classes {allowed}: meta-training uses "
                         "train classes 0-5 of the train split, tests the test split's images, "
                         "never mixed")
    labels = FashionMNIST(None if root is None else str(root), split).labels
    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if images_per_class is not None:
            if images_per_class > len(idx):
                raise ValueError(f"class {CLASS_NAMES[c]!r} has {len(idx)} {split} images, "
                                 f"asked for {images_per_class}")
            idx = np.sort(rng.choice(idx, size=images_per_class, replace=False))
        out[CLASS_NAMES[c]] = [f"{split}/{int(i):06d}" for i in idx]
    return out


REAL_NAMES = {name: name.lower() for name in CLASS_NAMES}
"""Class name -> the real-name answer (lower case, e.g. ``"ankle boot"``)."""


def fashion_tasks(
    split: str = "train",
    variant: str = "open_ended",
    *,
    ways: int = 2,
    shots: int = 1,
    queries_per_class: int = 1,
    n_tasks: int = 100,
    seed: int = 0,
    naming: str | None = None,
    images_per_class: int | None = None,
    classes: tuple[int, ...] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> list[Task]:
    """Sample Fashion-MNIST few-shot tasks (seeded, reproducible).

    Captions are ``"This is a {word}."``, the query question ``"This is a"``, the answer the
    query's word. Default naming: train ``open_ended`` -> ``"made_up"`` (a fresh made-up word per
    class per task), train ``real_name`` -> ``"real"`` (lower-case class names), test
    ``open_ended`` -> ``"fixed"`` (``TEST_WORDS`` assigned at random per task), test ``real_name``
    -> ``"real"`` (lower-case class names).

    Args:
        split: ``"train"`` (classes 0-5) or ``"test"`` (classes 6-9).
        variant: ``"open_ended"`` or ``"real_name"``.
        ways: N (<= 6 for train, <= 4 for test; <= 10 with ``ALL_CLASSES``).
        shots: k.
        queries_per_class: queries per class.
        n_tasks: number of tasks.
        seed: seed of the sampler (and of the ``images_per_class`` subset).
        naming: override the naming (see ``sample_task``).
        images_per_class: sample from a fixed random subset of this many images per class.
        classes: the classes to draw from (default: the split's, ``class_to_keys``);
            ``ALL_CLASSES`` on the test split adds ``-all`` to the task ids.
        root: the folder of the IDX files (default: ``fashion_root()``).

    Returns:
        ``n_tasks`` tasks with ids ``"fashion-{split}-{variant}-{ways}w{shots}s-seed{seed}-{i}"``
        (``fashion-test-all-...`` for all ten classes).

    Example::

        >>> t = fashion_tasks("test", "real_name", ways=2, shots=1, n_tasks=1)[0]
        >>> t.support[0].caption
        'This is a sneaker.'
    """
    _check_split(split)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if naming is None:
        naming = {("train", "open_ended"): "made_up", ("train", "real_name"): "real",
                  ("test", "open_ended"): "fixed", ("test", "real_name"): "real"}[split, variant]
    keys = class_to_keys(split, classes, images_per_class, seed, root=root)
    rng = np.random.default_rng(seed)
    which = "-all" if classes is not None and tuple(classes) == ALL_CLASSES else ""
    prefix = f"fashion-{split}{which}-{variant}-{ways}w{shots}s-seed{seed}"
    return [
        sample_task(keys, ways=ways, shots=shots, queries_per_class=queries_per_class, rng=rng,
                    naming=naming, words=TEST_WORDS if naming == "fixed" else made_up_words(exclude=CLASS_NAMES),
                    real_names=REAL_NAMES, task_id=f"{prefix}-{i:05d}")
        for i in range(n_tasks)
    ]


def build_fashion_tasks(
    *, split: str = "train", variant: str = "open_ended",
    root: str | os.PathLike[str] | None = None, **kwargs: Any,
) -> TaskSet:
    """``fashion_tasks(...)`` with its ``FashionImageSource``.

    Example::

        >>> ts = build_fashion_tasks(split="test", ways=2, n_tasks=10)
    """
    tasks = fashion_tasks(split, variant, root=root, **kwargs)
    return TaskSet(tasks, FashionImageSource(root, split))


def _train_val(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
    """Meta-train on classes 0-5 of the train split; validate on the same classes' images of the
    test split (unseen images, never the held-out classes 6-9)."""
    root = d.root or str(fashion_root())  # one folder for the train and the val tasks
    train = fashion_tasks(
        "train", "open_ended", ways=d.ways, shots=d.shots, queries_per_class=d.queries_per_class,
        n_tasks=n_tasks, seed=seed, naming=d.naming, images_per_class=d.images_per_class, root=root,
    )
    labels = FashionMNIST(str(root), "test").labels
    keys = {CLASS_NAMES[c]: [f"test/{int(i):06d}" for i in np.flatnonzero(labels == c)[:300]]
            for c in TRAIN_CLASSES}
    rng = np.random.default_rng(seed + 1)
    val = [sample_task(keys, ways=d.ways, shots=d.shots, queries_per_class=1, rng=rng,
                       naming="made_up", words=made_up_words(exclude=CLASS_NAMES),
                       task_id=f"fashion-val-{i:04d}") for i in range(200)]
    return TaskSet(train, FashionImageSource(root, "train")), TaskSet(val, FashionImageSource(root, "test"))


def _test(*, root: str | None, variant: str, ways: int, shots: int, n_tasks: int, seed: int,
          split: str = "test") -> TaskSet:
    """Tasks on the test split's held-out classes 6-9 (variant ``open_ended`` / ``real_name``)
    or all ten classes (``all:open_ended`` / ``all:real_name``): the ``test`` stream (``seed``)
    or the ``val`` stream (``seed + VAL_SEED_OFFSET``, ids ``fashion-val-...``)."""
    if split not in ("test", "val"):
        raise ValueError(f"Fashion-MNIST evaluation has a test and a val stream of held-out-class "
                         f"tasks, not {split!r} (train/all are parts of a benchmark file)")
    which, _, variant = variant.rpartition(":")
    classes = ALL_CLASSES if which == "all" else None
    if split == "test":
        return build_fashion_tasks(split="test", variant=variant, ways=ways, shots=shots,
                                   n_tasks=n_tasks, seed=seed, classes=classes, root=root)
    ts = build_fashion_tasks(split="test", variant=variant, ways=ways, shots=shots, n_tasks=n_tasks,
                             seed=seed + VAL_SEED_OFFSET, classes=classes, root=root)
    tasks = [replace(t, task_id=t.task_id.replace("fashion-test-", "fashion-val-", 1)) for t in ts.tasks]
    return TaskSet(tasks, ts.images)


TASK_SOURCES.register("fashion-mnist")(TaskSource(
    train_val=_train_val, test=_test,
    # fashion-all-*: all ten classes, for runs that never meta-trained on Fashion-MNIST
    datasets={"fashion-open-ended": "open_ended", "fashion-real-name": "real_name",
              "fashion-all-open-ended": "all:open_ended", "fashion-all-real-name": "all:real_name"},
    describe=lambda root: f"{len(CLASS_NAMES)} classes: {len(TRAIN_CLASSES)} meta-training, "
                          f"{len(TEST_CLASSES)} held-out test",
))
