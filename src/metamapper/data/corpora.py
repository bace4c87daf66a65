"""Rendered concept corpora: broad meta-training sources built once from Debian packages.

A corpus is a folder of small RGB pictures, one sub-folder per concept, and an ``index.json``
that says, for every concept, its readable name, its pictures and where each came from (the
Debian package and the theme or font that drew it), and the seeded split of the concepts into
meta-training, validation and test concepts. The sources ``icons`` (``data/icons.py``),
``emoji`` (``data/emoji.py``) and ``glyphs`` (``data/glyphs.py``) each build one; this module is
what they share: the index, the builder that renders each concept's instances once (skipping a
bad file with a warning, never aborting), and the task source over a built corpus.

Rules every corpus keeps:

- nothing from Debian's ``openclipart*`` packages (reserved for an independent check): a file
  whose path or owning package names ``openclipart`` is never read;
- none of the ten digits 0-9: no concept whose name or character is (or contains) one
  (``has_digit``), so digit recognition stays an unseen check;
- a picture drawn twice (the same pixels, e.g. a theme that copies another's file, or two names
  for one drawing) counts once, under the concept that has the most instances;
- a concept needs ``min_instances`` distinct pictures.

Layout::

    ~/.cache/metamapper/corpora/icons/      ($METAMAPPER_CACHE/corpora/NAME, or data.root)
      index.json
      images/printer/adwaita-icon-theme.png  ...

The corpus is built the first time a source needs it (or by ``metamapper corpus icons``) and
reused afterwards; ``ensure_corpus(..., rebuild=True)`` (``--rebuild``) builds it again.

Example::

    import metamapper.data.sources          # registers the built-in sources and their corpora
    from metamapper.data.corpora import ensure_corpus
    corpus = ensure_corpus("icons")          # renders once (minutes), then loads the index
    corpus.split["test"][:3], corpus.classes["printer"].name
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from metamapper.config import DataConfig
from metamapper.data.class_folders import split_classes
from metamapper.data.images import ImageLoadError, load_image
from metamapper.data.tasks import TASK_SOURCES, TaskSet, TaskSizeError, TaskSource, sample_task
from metamapper.data.words import TEST_WORDS, made_up_words
from metamapper.models.backbones import cache_dir

FORMAT = "metamapper-corpus"
VERSION = 1
IMAGE_SIZE = 128  # rendered pictures are IMAGE_SIZE x IMAGE_SIZE RGB on white
NEAR_DUPLICATE = 0.01  # mean thumbnail difference under which two pictures of a concept are one
# (measured on the icon corpus: pairs under 0.01 were one design re-exported, e.g. gnome and mate)
FAINT = 0.01  # a picture with less ink than this share of its pixels is invisible on white
RESERVED = "openclipart"  # Debian's openclipart* packages: never read by any corpus


class CorpusBuildError(RuntimeError):
    """A corpus that cannot be built at all (no input files, a missing renderer)."""


@dataclass(frozen=True)
class Instance:
    """One picture of a concept.

    Attributes:
        file: the picture, relative to the corpus folder (``images/printer/tango-icon-theme.png``).
        package: the Debian package that drew it (the theme or font folder's name when no
            package owns the file).
        origin: the theme or font family inside the package (``Tango``, ``DejaVu Sans``).
        path: the source file it was rendered from.
    """

    file: str
    package: str
    origin: str
    path: str


@dataclass(frozen=True)
class Concept:
    """A class of a corpus: its readable name (the caption's word) and its pictures."""

    name: str
    instances: tuple[Instance, ...]
    info: dict[str, str] = field(default_factory=dict)  # e.g. the character, its Unicode name


@dataclass(frozen=True)
class Corpus:
    """A built corpus, as read from its ``index.json``.

    Attributes:
        name: the source name (``icons``).
        root: the corpus folder.
        classes: concept key -> ``Concept`` (keys are folder names: ``camera-photo``, ``u+1f436``).
        split: ``train`` / ``val`` / ``test`` -> concept keys (disjoint, seeded).
        skipped: ``(file, why)`` of each input that could not be rendered.
        stats: counts and timings of the build.
        digest: a hash of the index: the corpus's identity in the feature cache.
    """

    name: str
    root: Path
    classes: dict[str, Concept]
    split: dict[str, list[str]]
    skipped: list[tuple[str, str]]
    stats: dict[str, Any]
    digest: str

    def keys_of(self, part: str, *, images_per_class: int | None = None,
                seed: int = 0) -> dict[str, list[str]]:
        """Concept key -> its image keys, for the concepts of split ``part``."""
        rng = np.random.default_rng(seed)
        out: dict[str, list[str]] = {}
        for c in self.split[part]:
            files = [i.file for i in self.classes[c].instances]
            if images_per_class is not None and len(files) > images_per_class:
                files = sorted(files[i] for i in rng.choice(len(files), images_per_class, replace=False))
            out[c] = files
        return out

    def images(self) -> CorpusImageSource:
        return CorpusImageSource(self)


class CorpusImageSource:
    """An ``ImageSource`` over a corpus folder; keys are the index's ``file`` entries.

    Its identity names the index's digest, so a rebuilt corpus never reuses stale cached
    features of the same file names.
    """

    def __init__(self, corpus: Corpus) -> None:
        self.root = corpus.root.resolve()
        self.identity = f"corpus:{corpus.name}:{corpus.digest}"
        self._files = {i.file for c in corpus.classes.values() for i in c.instances}

    def __repr__(self) -> str:
        return f"CorpusImageSource({str(self.root)!r})"

    def load(self, key: str) -> Image.Image:
        if key not in self._files:
            raise ImageLoadError(f"image key {key!r} is not a picture of the corpus {self.root}")
        return load_image(self.root / key)

    def keys(self) -> list[str]:
        return sorted(self._files)


# --------------------------------------------------------------------------- rules and helpers


def has_digit(text: str) -> bool:
    """Whether ``text`` is or holds one of the digits 0-9, in any form Unicode folds to them
    (``"5"``, ``"５"``, ``"⑤"``, ``"²"``, the keycap ``"5️⃣"``, ``"battery-level-50"``).

    Example::

        >>> has_digit("printer"), has_digit("①"), has_digit("x²")
        (False, True, True)
    """
    return any("0" <= ch <= "9" for ch in unicodedata.normalize("NFKC", text))


def is_reserved(path: str | os.PathLike[str], package: str = "") -> bool:
    """Whether a file belongs to Debian's openclipart packages (by its path, its resolved path,
    or its owning package): such files are never read."""
    p = str(path)
    if RESERVED in p.lower() or RESERVED in package.lower():
        return True
    try:
        return RESERVED in os.path.realpath(p).lower()
    except (OSError, ValueError):
        return False


def owner_packages(paths: Iterable[str]) -> dict[str, str]:
    """Path -> the Debian package that installed it (``dpkg-query -S``); paths no package owns
    (or all of them, without dpkg) are left out."""
    paths = list(dict.fromkeys(paths))
    if not paths or shutil.which("dpkg-query") is None:
        return {}
    out: dict[str, str] = {}
    for i in range(0, len(paths), 200):
        batch = paths[i:i + 200]
        try:
            res = subprocess.run(["dpkg-query", "-S", *batch], capture_output=True, text=True,
                                 timeout=120, check=False)
        except (OSError, subprocess.SubprocessError):
            return out
        for line in res.stdout.splitlines():
            pkgs, sep, path = line.partition(": ")
            if sep and path in batch and "diversion" not in pkgs:
                out[path] = pkgs.split(",")[0].split(":")[0].strip()
    return out


def fit_square(im: Image.Image, size: int = IMAGE_SIZE, *, margin: float = 0.0) -> Image.Image:
    """``im`` (RGB) scaled to fit a ``size`` x ``size`` white square, centred, aspect kept.

    Args:
        im: an RGB image.
        size: the side of the square.
        margin: the fraction of the side left white on each side.
    """
    box = max(1, round(size * (1 - 2 * margin)))
    w, h = im.size
    scale = box / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new != im.size:
        im = im.resize(new, Image.Resampling.LANCZOS)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(im, ((size - new[0]) // 2, (size - new[1]) // 2))
    return out


def crop_to_ink(im: Image.Image, *, threshold: int = 250) -> Image.Image | None:
    """``im`` (RGB on white) cropped to its non-white pixels; None if it is blank."""
    a = np.asarray(im.convert("RGB"))
    ink = (a < threshold).any(axis=2)
    if not ink.any():
        return None
    ys, xs = np.nonzero(ink)
    return im.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def readable(name: str) -> str:
    """``"camera-photo"`` -> ``"camera photo"``; ``"DOG FACE"`` -> ``"dog face"``."""
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def safe_key(text: str) -> str:
    """A folder-safe concept key (lower-case ASCII letters, digits, ``-``, ``+``, ``_``)."""
    key = re.sub(r"[^a-z0-9+_\-]+", "-", text.lower()).strip("-")
    return key or hashlib.sha1(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- building


@dataclass
class Candidate:
    """One picture to render: concept key, its readable name, where it comes from, and how to
    draw it (``render()`` returns an RGB picture or raises any exception on a bad input)."""

    concept: str
    name: str
    package: str
    origin: str
    path: str
    render: Callable[[], Image.Image]
    info: dict[str, str] = field(default_factory=dict)


def _pixel_hash(im: Image.Image) -> str:
    return hashlib.sha1(im.tobytes()).hexdigest()


def is_faint(im: Image.Image) -> bool:
    """Whether a picture on white has almost no ink: under ``FAINT`` of its pixels differ from
    white by more than a quarter in some channel (white icons drawn for dark panels)."""
    a = np.asarray(im.convert("RGB"))
    return float(((255 - a.min(axis=2)) > 64).mean()) < FAINT


def thumbnail(im: Image.Image) -> np.ndarray:
    """A 16 x 16 grey thumbnail in [0, 1]: what two near-identical pictures share."""
    return np.asarray(im.convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32) / 255


def build_corpus(name: str, out: str | os.PathLike[str], candidates: Sequence[Candidate], *,
                 min_instances: int = 3, size: int = IMAGE_SIZE, near: float = NEAR_DUPLICATE,
                 workers: int | None = None, progress: bool = False,
                 stats: dict[str, Any] | None = None) -> Corpus:
    """Render ``candidates`` into the corpus folder ``out`` and write its ``index.json``.

    Every candidate is rendered once (in ``workers`` threads: renderers that run a program or
    release the GIL overlap); one that raises is skipped with a warning. Identical pictures are
    kept once: within a concept (two themes with the same file), and across concepts (one
    drawing under two names) under the concept with the most candidates. A picture of a concept
    that is nearly identical to one it already has (a theme derived from another, one design
    re-exported) is dropped too: their ``thumbnail`` s differ by less than ``near`` on average
    (0: exact duplicates only); so is a picture with almost no ink on white (``is_faint``: icons
    drawn white for dark panels). Concepts with fewer
    than ``min_instances`` distinct pictures are dropped, and the rest split by
    ``class_folders.split_classes`` (seeded, 60/20/20).

    Args:
        name: the source name (kept in the index).
        out: the corpus folder (created; an old index there is replaced).
        candidates: what to render.
        min_instances: the fewest distinct pictures a concept keeps.
        size: the picture side in pixels.
        near: the mean absolute thumbnail difference under which two pictures of a concept are
            one.
        workers: render threads (default: up to 4, at most the CPUs).
        progress: show a progress bar.
        stats: extra numbers to keep in the index (e.g. how many inputs a filter dropped).

    Returns:
        The ``Corpus`` as written.
    """
    start = time.time()
    root = Path(out)
    images = _empty_corpus_folder(root)
    pictures = _render_distinct(name, candidates, root, size=size, near=near, workers=workers,
                                progress=progress)
    kept = _one_concept_per_drawing(pictures.by_hash, candidates, root)
    classes = _concepts_with_enough(kept, root, min_instances=min_instances)
    _remove_empty_folders(images)
    record = _index_record(name, classes, pictures, size=size, min_instances=min_instances,
                           n_candidates=len(candidates), stats=stats, start=start)
    _write_index(root, record)
    return load_corpus(root)


def _empty_corpus_folder(root: Path) -> Path:
    """Empty ``root/images`` (an earlier build's pictures go) and remove an old index; returns
    ``root/images``."""
    images = root / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    (root / "index.json").unlink(missing_ok=True)
    return images


def _render(c: Candidate, size: int) -> tuple[Candidate, Image.Image | None, str]:
    """``c`` drawn as a ``size`` x ``size`` RGB picture, or None and why not."""
    if is_reserved(c.path, c.package):
        return c, None, f"{RESERVED} files are reserved"
    try:
        im = c.render()
        if im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (size, size):
            im = fit_square(im, size)
        return c, im, ""
    except Exception as e:  # a bad input file must never abort the build
        return c, None, f"{type(e).__name__}: {e}"


@dataclass
class _Pictures:
    """The distinct pictures a build has saved so far, and what it left out."""

    root: Path  # the corpus folder the pictures are saved in
    near: float  # see build_corpus
    # pixel hash -> concept -> (candidate, file) of each distinct picture
    by_hash: dict[str, dict[str, tuple[Candidate, str]]] = field(default_factory=dict)
    thumbs: dict[str, list[np.ndarray]] = field(default_factory=dict)  # concept -> its thumbnails
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input file, why)
    n_near: int = 0
    n_faint: int = 0

    def add(self, c: Candidate, im: Image.Image) -> None:
        """Save ``im`` as a picture of ``c.concept``, unless it is faint or the concept already
        has it (the same pixels, or a thumbnail nearer than ``near``)."""
        if is_faint(im):
            self.n_faint += 1
            return
        h = _pixel_hash(im)
        if c.concept in self.by_hash.get(h, {}):  # the same picture again for this concept
            return
        thumb = thumbnail(im)
        kept_thumbs = self.thumbs.setdefault(c.concept, [])
        if any(float(np.abs(thumb - t).mean()) < self.near for t in kept_thumbs):
            self.n_near += 1
            return
        kept_thumbs.append(thumb)
        rel = f"images/{c.concept}/{safe_key(c.package)}--{safe_key(c.origin)}.png"
        path = self.root / rel
        path.parent.mkdir(exist_ok=True)
        im.save(path, optimize=True)
        self.by_hash.setdefault(h, {})[c.concept] = (c, rel)


def _render_distinct(name: str, candidates: Sequence[Candidate], root: Path, *, size: int,
                     near: float, workers: int | None, progress: bool) -> _Pictures:
    """Render every candidate (in threads, in order) and save its picture unless a concept
    already has it; warn of each one that could not be rendered."""
    from concurrent.futures import ThreadPoolExecutor

    pictures = _Pictures(root, near)
    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        rendered = tqdm(pool.map(functools.partial(_render, size=size), candidates),
                        total=len(candidates), disable=not progress,
                        desc=f"rendering the {name} corpus", unit="picture")
        for c, im, why in rendered:
            if im is None:
                pictures.skipped.append((c.path, why))
                # stacklevel 3: the warning names build_corpus's caller
                warnings.warn(f"{name}: skipped {c.path} ({c.concept}): {why}", stacklevel=3)
                continue
            pictures.add(c, im)
    return pictures


def _one_concept_per_drawing(by_hash: dict[str, dict[str, tuple[Candidate, str]]],
                             candidates: Sequence[Candidate],
                             root: Path) -> dict[str, list[tuple[Candidate, str]]]:
    """Concept -> its (candidate, file) pictures, each drawing kept under one concept only: the
    one with the most candidates (then the shortest key, then the first key); the other copies
    are deleted."""
    n_cand: dict[str, int] = {}
    for c in candidates:
        n_cand[c.concept] = n_cand.get(c.concept, 0) + 1
    kept: dict[str, list[tuple[Candidate, str]]] = {}
    for owners in by_hash.values():
        best = min(owners, key=lambda k: (-n_cand[k], len(k), k))
        for concept, (c, rel) in owners.items():
            if concept == best:
                kept.setdefault(concept, []).append((c, rel))
            else:
                (root / rel).unlink(missing_ok=True)
    return kept


def _concepts_with_enough(kept: dict[str, list[tuple[Candidate, str]]], root: Path, *,
                          min_instances: int) -> dict[str, Concept]:
    """The concepts with at least ``min_instances`` pictures, by key, their pictures sorted by
    file; the pictures of the others are deleted."""
    classes: dict[str, Concept] = {}
    for concept in sorted(kept):
        items = sorted(kept[concept], key=lambda cr: cr[1])
        if len(items) < min_instances:
            for _, rel in items:
                (root / rel).unlink(missing_ok=True)
            continue
        first = items[0][0]
        classes[concept] = Concept(
            name=first.name, info=first.info,
            instances=tuple(Instance(rel, c.package, c.origin, c.path) for c, rel in items))
    return classes


def _remove_empty_folders(images: Path) -> None:
    """Remove the picture folders of dropped concepts."""
    for d in images.iterdir():
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _index_record(name: str, classes: dict[str, Concept], pictures: _Pictures, *, size: int,
                  min_instances: int, n_candidates: int, stats: dict[str, Any] | None,
                  start: float) -> dict[str, Any]:
    """The ``index.json`` of a build started at ``start``: its concepts, their seeded split,
    its numbers and the inputs it skipped."""
    return {
        "format": FORMAT, "version": VERSION, "name": name, "image_size": size,
        "min_instances": min_instances,
        "split_rule": "class_folders.split_classes: seeded shuffle (seed 0) of the sorted keys, 60/20/20",
        "stats": {**(stats or {}), "candidates": n_candidates, "concepts": len(classes),
                  "images": sum(len(c.instances) for c in classes.values()),
                  "near_duplicates": pictures.n_near, "faint": pictures.n_faint,
                  "skipped": len(pictures.skipped), "build_s": round(time.time() - start, 1)},
        "split": split_classes(list(classes)),
        "classes": {k: {"name": c.name, "info": c.info, "instances": [asdict(i) for i in c.instances]}
                    for k, c in classes.items()},
        "skipped": [list(s) for s in pictures.skipped],
    }


def _write_index(root: Path, record: dict[str, Any]) -> None:
    """Write ``root/index.json`` atomically (written last: a corpus is built once it is there)."""
    tmp = root / f"index.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    os.replace(tmp, root / "index.json")

def load_corpus(root: str | os.PathLike[str]) -> Corpus:
    """Read a corpus folder's ``index.json``.

    Raises:
        FileNotFoundError: no index in ``root``.
        ValueError: not a corpus index of this version.
    """
    path = Path(root) / "index.json"
    raw = path.read_bytes()
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a corpus index ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or rec.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} index of version {VERSION}")
    classes = {k: Concept(name=v["name"], info=dict(v.get("info") or {}),
                          instances=tuple(Instance(**i) for i in v["instances"]))
               for k, v in rec["classes"].items()}
    return Corpus(name=rec["name"], root=Path(root), classes=classes,
                  split={p: list(v) for p, v in rec["split"].items()},
                  skipped=[(str(a), str(b)) for a, b in rec.get("skipped", [])],
                  stats=dict(rec.get("stats") or {}),
                  digest=hashlib.sha256(raw).hexdigest()[:16])


# --------------------------------------------------------------------------- sources over corpora

CorpusBuilder = Callable[..., Corpus]
"""``(out, *, progress) -> Corpus``: renders a source's corpus into folder ``out``."""
BUILDERS: dict[str, CorpusBuilder] = {}
PACKAGES: dict[str, str] = {}  # corpus -> the Debian packages it is rendered from (apt-get install)


def corpus_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The corpus folder of source ``name``: ``root`` if given, else
    ``$METAMAPPER_CACHE/corpora/NAME`` (``~/.cache/metamapper/corpora/NAME``)."""
    return Path(root).expanduser() if root else cache_dir() / "corpora" / name


def is_built(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether the corpus of source ``name`` has been rendered into ``root`` (default:
    ``corpus_dir(name)``): its ``index.json``, written last, is there."""
    return (corpus_dir(name, root) / "index.json").is_file()


def ensure_corpus(name: str, root: str | os.PathLike[str] | None = None, *, rebuild: bool = False,
                  progress: bool = True) -> Corpus:
    """The corpus of source ``name`` in ``root`` (default: ``corpus_dir(name)``), built first
    if its index is missing (or ``rebuild``).

    Example::

        >>> corpus = ensure_corpus("glyphs")
        >>> len(corpus.classes), corpus.stats["images"]
    """
    import fcntl

    if name not in BUILDERS:
        raise ValueError(f"unknown corpus {name!r}; choose from {', '.join(sorted(BUILDERS))}")
    folder = corpus_dir(name, root)
    if not rebuild and is_built(name, folder):
        return load_corpus(folder)
    if folder.is_dir():
        foreign = [p.name for p in folder.iterdir()
                   if p.name not in ("images", "index.json", ".lock") and ".tmp-" not in p.name]
        if foreign:  # e.g. data.root set to the icon themes: the corpus is what gets rendered
            raise ValueError(f"{folder} is not a corpus folder of {name} (no index.json, and it holds "
                             f"{', '.join(sorted(foreign)[:3])}...): data.root / --data / --root of "
                             f"{name} names the folder the corpus is rendered into, not its inputs")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:  # processes started together build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rebuild and is_built(name, folder):
            return load_corpus(folder)
        if progress:
            print(f"metamapper: building the {name} corpus in {folder} (once; later runs reuse it)",
                  flush=True)
        corpus = BUILDERS[name](folder, progress=progress)
    if progress:
        s = corpus.stats
        print(f"metamapper: {name}: {s['concepts']} concepts, {s['images']} images, "
              f"{s['skipped']} inputs skipped, {s['build_s']} s", flush=True)
    return corpus


def _usable(keys: dict[str, list[str]], need: int) -> dict[str, list[str]]:
    """The concepts with at least ``need`` pictures (a concept drawn by 3 themes cannot serve a
    5-shot task)."""
    return {c: k for c, k in keys.items() if len(k) >= need}


def corpus_tasks(corpus: Corpus, part: str, *, ways: int, shots: int, queries_per_class: int,
                 n_tasks: int, seed: int, naming: str, images_per_class: int | None = None,
                 id_prefix: str | None = None) -> TaskSet:
    """``n_tasks`` seeded tasks on the concepts of split ``part`` of ``corpus``.

    Args:
        corpus: the corpus.
        part: ``train``, ``val`` or ``test``.
        ways, shots, queries_per_class: the task shape; concepts with fewer than
            ``shots + queries_per_class`` pictures are left out.
        n_tasks: how many tasks.
        seed: the sampler's seed.
        naming: ``made_up`` (a fresh made-up word per concept per task), ``real`` (the concept's
            readable name), ``fixed`` (Frozen's test words).
        images_per_class: use at most this many pictures of each concept (seeded subset).
        id_prefix: task ids are ``{id_prefix}-{i:05d}`` (default ``{name}-{part}-{seed}``).
    """
    keys = _usable(corpus.keys_of(part, images_per_class=images_per_class, seed=seed),
                   shots + queries_per_class)
    if len(keys) < ways:
        raise TaskSizeError(
            f"the {corpus.name} corpus has {len(keys)} {part} concepts with at least "
            f"{shots + queries_per_class} pictures (shots + queries); {ways}-way tasks need {ways}")
    names = {c: corpus.classes[c].name for c in keys}
    words = TEST_WORDS if naming == "fixed" else made_up_words(
        exclude=[c.name for c in corpus.classes.values()])
    rng = np.random.default_rng(seed)
    prefix = id_prefix or f"{corpus.name}-{part}-{seed}"
    tasks = [sample_task(keys, ways=ways, shots=shots, queries_per_class=queries_per_class, rng=rng,
                         naming=naming, words=words, real_names=names, task_id=f"{prefix}-{i:05d}")
             for i in range(n_tasks)]
    return TaskSet(tasks, corpus.images())


def register_corpus_source(name: str, builder: CorpusBuilder, packages: str) -> None:
    """Register the corpus builder ``name`` (rendered from the Debian ``packages``, space-separated)
    and its task source: meta-training on the corpus's
    ``train`` concepts, validation on its ``val`` concepts, and the evaluation datasets
    ``{name}-open-ended`` (Frozen's test words) and ``{name}-real-name`` (the concepts' names) on
    its ``test`` concepts (``--split val``: the ``val`` concepts)."""
    BUILDERS[name] = builder
    PACKAGES[name] = packages

    def train_val(d: DataConfig, n_tasks: int, seed: int) -> tuple[TaskSet, TaskSet]:
        corpus = ensure_corpus(name, d.root)
        train = corpus_tasks(corpus, "train", ways=d.ways, shots=d.shots,
                             queries_per_class=d.queries_per_class, n_tasks=n_tasks, seed=seed,
                             naming=d.naming, images_per_class=d.images_per_class)
        val = corpus_tasks(corpus, "val", ways=d.ways, shots=d.shots, queries_per_class=1,
                           n_tasks=200, seed=seed + 1, naming="made_up",
                           id_prefix=f"{name}-val-{seed + 1}")
        return train, val

    def test(*, root: str | None, variant: str, ways: int, shots: int, n_tasks: int, seed: int,
             split: str = "test") -> TaskSet:
        if split not in ("test", "val"):
            raise ValueError(f"{name} evaluation has test and val concepts, not {split!r}")
        corpus = ensure_corpus(name, root)
        return corpus_tasks(corpus, split, ways=ways, shots=shots, queries_per_class=1,
                            n_tasks=n_tasks or 1000, seed=seed,
                            naming="fixed" if variant == "open_ended" else "real")

    TASK_SOURCES.register(name)(TaskSource(
        train_val=train_val, test=test,
        datasets={f"{name}-open-ended": "open_ended", f"{name}-real-name": "real_name"},
        describe=lambda root: describe_corpus(name, root),
    ))


def describe_corpus(name: str, root: str | os.PathLike[str] | None = None) -> str:
    """One line on the corpus of source ``name``: its concepts per split and images, or how to
    build it."""
    folder = corpus_dir(name, root)
    if not is_built(name, folder):
        return f"not built yet in {folder} (metamapper corpus {name}; or built when first used)"
    c = load_corpus(folder)
    n = {p: len(v) for p, v in c.split.items()}
    return (f"{len(c.classes)} concepts ({n.get('train', 0)} meta-training, {n.get('val', 0)} "
            f"validation, {n.get('test', 0)} test), {c.stats.get('images', 0)} images in {folder}")
