"""An on-disk cache of frozen image-encoder features: each image is encoded once, ever.

The image encoder is frozen, so its output for an image never changes; the reference
implementation re-ran it on every image of every episode and inner step (lesson 7 of MISSION.md).
``FeatureCache`` stores features under ``root/<sha256(encoder.identity + dtype)[:20]>/``, keyed by
``(image source identity, image key)``; another encoder identity or dtype is a separate store, so
changing the weights, the preprocessing or the feature mode invalidates nothing by accident.

Layout of a store::

    manifest.json                      {"identity": ..., "dtype": ..., "n_tokens": ..., "dim": ...}
    shards/<time>-<pid>-<uuid>.safetensors   "features" (rows, n_tokens, dim) + the row keys in
                                             the metadata

Shards are written to a temporary file and renamed (``os.replace``), and their names are unique,
so several processes can fill one store at the same time: a reader never sees half a shard, and
two writers never overwrite each other (a key encoded twice is harmless). On open, every shard's
header is checked (readable, file size, dtype, shape ``(rows, n_tokens, dim)``, one key per row);
a bad shard is logged with a warning and removed, and its keys are re-encoded by the next ``fill``.

Example::

    from metamapper.data import FeatureCache, FashionImageSource
    from metamapper.models.backbones import build_vision_encoder
    encoder = build_vision_encoder("efficientnet-lite0", mode="pooled")
    source = FashionImageSource(split="test")
    cache = FeatureCache("~/.cache/metamapper/features", encoder)
    report = cache.fill(source, source.keys()[:1000])       # encodes only what is missing
    feats = cache.get(source, ["test/000000", "test/000001"])  # (2, 1, 1280)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from metamapper.data.images import ImageLoadError
from metamapper.data.tasks import ImageSource

logger = logging.getLogger(__name__)

FORMAT = "metamapper-feature-cache"
VERSION = 1
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_STALE_TMP_S = 3600.0  # temporary files older than this are left-overs of a crashed writer
_MAX_HEADER = 256 << 20
_REFRESH_S = 2.0  # how often a fill looks for shards written by other processes


@dataclass
class FillReport:
    """What ``FeatureCache.fill`` did.

    Attributes:
        encoded: images encoded (and stored) by this call.
        skipped: ``(key, reason)`` of each image that could not be loaded; they are not cached,
            so drop the tasks that use them (``filter_tasks``).
        cached: requested keys that were already in the cache.
    """

    encoded: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cached: int = 0


class _BadShard(Exception):
    pass


def _source_id(source: ImageSource | str) -> str:
    return source if isinstance(source, str) else source.identity


def _address(source: ImageSource | str, key: str) -> tuple[str, str]:
    """Where ``key``'s features are stored: ``(source identity, key)``, or, for a source made of
    parts (one with ``route(key) -> (part, part_key)``: ``MixtureImageSource``), the part's
    address, so that a mixture reuses what its sources' own runs encoded, and the reverse."""
    route = getattr(source, "route", None)
    if route is not None:
        return _address(*route(key))
    return _source_id(source), key


class FeatureCache:
    """On-disk store of encoder features keyed by (image source identity, image key).

    Args:
        root: the cache folder (shared by all encoders; each gets its own sub-folder).
        encoder: a frozen ``VisionEncoder`` (``identity``, ``n_tokens``, ``dim``, ``encode``).
        dtype: storage dtype (``torch.float32``, ``float16`` or ``bfloat16``); part of the key.
        shard_bytes: target size of one shard file: ``fill`` writes a shard once this many
            bytes of features are buffered (rounded up to whole batches) and at its end.

    Example::

        >>> cache = FeatureCache(tmp_dir, encoder)
        >>> cache.fill(source, keys).encoded       # first run: all of them
        2000
        >>> cache.fill(source, keys).encoded       # later runs, any process: none
        0
        >>> cache.get(source, keys[:4]).shape      # (4, n_tokens, dim)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        encoder: Any,
        dtype: torch.dtype = torch.float32,
        *,
        shard_bytes: int = 64 << 20,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype}")
        self.encoder = encoder
        self.dtype = dtype
        self.identity: str = encoder.identity
        self.n_tokens, self.dim = int(encoder.n_tokens), int(encoder.dim)
        digest = hashlib.sha256(f"{self.identity}\0{dtype}".encode()).hexdigest()[:20]
        self.dir = Path(root).expanduser() / digest
        self.shard_dir = self.dir / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        row_bytes = self.n_tokens * self.dim * torch.empty((), dtype=dtype).element_size()
        self.rows_per_shard = max(1, min(4096, shard_bytes // max(1, row_bytes)))
        self._write_manifest()
        self._shard_keys: dict[str, list[tuple[str, str]]] = {}
        self._index: dict[tuple[str, str], tuple[str, int]] = {}
        self.refresh()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.dir)!r}, identity={self.identity!r}, entries={len(self)})"

    # ------------------------------------------------------------------ store bookkeeping

    def _write_manifest(self) -> None:
        manifest = {"format": FORMAT, "version": VERSION, "identity": self.identity,
                    "dtype": str(self.dtype).removeprefix("torch."), "n_tokens": self.n_tokens,
                    "dim": self.dim}
        path = self.dir / "manifest.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                logger.warning("feature cache manifest %s is unreadable (%s); rewriting it", path, e)
            else:
                if old == manifest:
                    return
                if old.get("identity") != self.identity:
                    raise ValueError(f"feature cache {self.dir} belongs to encoder "
                                     f"{old.get('identity')!r}, not {self.identity!r}")
                logger.warning("feature cache manifest %s differs (%s); rewriting it", path, old)
        _atomic_write(path, json.dumps(manifest, indent=1).encode())

    def _check_shard(self, path: Path) -> list[tuple[str, str]]:
        """The keys of a shard, or ``_BadShard`` naming the problem (header-only, cheap)."""
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise _BadShard(f"{size} bytes, too short for a safetensors header")
                n = int.from_bytes(head, "little")
                if n > min(size - 8, _MAX_HEADER):
                    raise _BadShard(f"header length {n} exceeds the file ({size} bytes)")
                header = json.loads(f.read(n))
        except (OSError, ValueError) as e:
            raise _BadShard(f"unreadable ({e})") from None
        try:
            info = header["features"]
            shape, offsets = info["shape"], info["data_offsets"]
            meta = header["__metadata__"]
            keys = [(str(s), str(k)) for s, k in json.loads(meta["keys"])]
        except (KeyError, TypeError, ValueError) as e:
            raise _BadShard(f"missing or malformed header entries ({e!r})") from None
        if info.get("dtype") != _DTYPES[self.dtype]:
            raise _BadShard(f"dtype {info.get('dtype')} instead of {_DTYPES[self.dtype]}")
        if len(shape) != 3 or shape[1:] != [self.n_tokens, self.dim]:
            raise _BadShard(f"features shape {shape}, expected (rows, {self.n_tokens}, {self.dim})")
        if len(keys) != shape[0]:
            raise _BadShard(f"{len(keys)} keys for {shape[0]} rows")
        try:
            end = 8 + n + int(offsets[1])
        except (IndexError, TypeError, ValueError):
            raise _BadShard(f"malformed data offsets {offsets!r}") from None
        if size != end:
            raise _BadShard(f"file has {size} bytes, header says {end} (partial)")
        return keys

    def refresh(self) -> None:
        """Index shards written since the last scan (e.g. by other processes); drop bad ones."""
        names = set()
        now = time.time()
        for p in self.shard_dir.iterdir():
            if p.name.startswith(".tmp-"):
                try:
                    if now - p.stat().st_mtime > _STALE_TMP_S:
                        p.unlink(missing_ok=True)
                except OSError:
                    pass
            elif p.suffix == ".safetensors":
                names.add(p.name)
        gone = set(self._shard_keys) - names
        for name in gone:
            del self._shard_keys[name]
        for name in sorted(names - set(self._shard_keys)):
            path = self.shard_dir / name
            try:
                self._shard_keys[name] = self._check_shard(path)
            except _BadShard as e:
                logger.warning("feature cache: removing corrupt shard %s: %s; its images will be "
                               "encoded again by the next fill()", path, e)
                path.unlink(missing_ok=True)
        if gone:
            self._index.clear()
        for name in sorted(self._shard_keys):
            for row, k in enumerate(self._shard_keys[name]):
                self._index.setdefault(k, (name, row))

    def _write_shard(self, keys: list[tuple[str, str]], feats: torch.Tensor) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = self.shard_dir / f".tmp-{name}"
        try:
            save_file({"features": feats.contiguous()}, str(tmp),
                      metadata={"keys": json.dumps(keys), "identity": self.identity})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # the rename must never publish an unwritten file
            os.replace(tmp, self.shard_dir / name)
        finally:
            tmp.unlink(missing_ok=True)
        self._shard_keys[name] = keys
        for row, k in enumerate(keys):
            self._index.setdefault(k, (name, row))

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item: object) -> bool:
        """``(source, key) in cache`` (``source`` an ``ImageSource`` or its identity)."""
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        return _address(item[0], item[1]) in self._index

    def missing(self, source: ImageSource | str, keys: Iterable[str]) -> list[str]:
        """The keys (deduplicated, in order) whose features are not cached.

        Example::

            >>> cache.missing(source, ["train/000000", "train/000001"])
            ['train/000001']
        """
        return [k for k in dict.fromkeys(keys) if _address(source, k) not in self._index]

    def fill(
        self,
        source: ImageSource,
        keys: Iterable[str],
        batch_size: int = 64,
        progress: bool = True,
        *,
        workers: int = 0,
    ) -> FillReport:
        """Encode the keys that are not cached yet, in batches, and store them.

        Images that fail to load (``ImageLoadError``) are skipped, logged at the end and listed in
        the report; the run goes on. Encoded features are written once ``rows_per_shard`` images
        are buffered (whole batches) and when the call ends (also on an exception or Ctrl-C), so an interrupted fill keeps its
        work. Skipped keys are not remembered: the next fill tries them again.

        Args:
            source: the image source of the keys.
            keys: image keys (duplicates are encoded once).
            batch_size: images per encoder call.
            progress: show a tqdm progress bar.
            workers: threads loading images in parallel (0: load in this thread).

        Returns:
            A ``FillReport``.

        Example::

            >>> report = cache.fill(source, keys, batch_size=64)
            >>> bad = [k for k, _ in report.skipped]
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.refresh()
        keys = list(dict.fromkeys(keys))
        todo = self.missing(source, keys)
        report = FillReport(encoded=0, cached=len(keys) - len(todo))
        buf_keys: list[tuple[str, str]] = []
        buf_feats: list[torch.Tensor] = []
        pool = ThreadPoolExecutor(workers) if workers > 0 else None

        def load(key: str) -> Any:
            try:
                return source.load(key)
            except ImageLoadError as e:
                return e

        def flush() -> None:
            if buf_keys:
                self._write_shard(list(buf_keys), torch.cat(buf_feats))
                buf_keys.clear()
                buf_feats.clear()

        bar = tqdm(total=len(todo), disable=not progress, unit="img",
                   desc=f"encoding images ({self.identity})")
        last_refresh = time.monotonic()
        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                if time.monotonic() - last_refresh > _REFRESH_S:
                    # Another process filling the same store may have encoded some of these.
                    self.refresh()
                    last_refresh = time.monotonic()
                n = len(batch)
                batch = [k for k in batch if _address(source, k) not in self._index]
                report.cached += n - len(batch)
                bar.update(n - len(batch))
                loaded = list(pool.map(load, batch)) if pool else [load(k) for k in batch]
                good = []
                for k, im in zip(batch, loaded, strict=True):
                    if isinstance(im, ImageLoadError):
                        report.skipped.append((k, str(im)))
                    else:
                        good.append((k, im))
                if good:
                    feats = self.encoder.encode([im for _, im in good])  # (B, n_tokens, dim)
                    if tuple(feats.shape) != (len(good), self.n_tokens, self.dim):
                        raise ValueError(f"encoder {self.identity!r} returned {tuple(feats.shape)}"
                                         f", expected ({len(good)}, {self.n_tokens}, {self.dim})")
                    buf_feats.append(feats.detach().to("cpu", self.dtype))
                    buf_keys.extend(_address(source, k) for k, _ in good)
                    report.encoded += len(good)
                    if len(buf_keys) >= self.rows_per_shard:
                        flush()
                bar.update(len(batch))
        finally:
            flush()
            bar.close()
            if pool:
                pool.shutdown()
        if report.skipped:
            listing = "\n".join(f"  {k}: {why}" for k, why in report.skipped)
            logger.warning("feature cache: skipped %d image(s) that could not be loaded:\n%s",
                           len(report.skipped), listing)
        return report

    def get(self, source: ImageSource | str, keys: Sequence[str]) -> torch.Tensor:
        """The cached features of ``keys``, ``(len(keys), n_tokens, dim)`` in the cache's dtype.

        Args:
            source: the image source (or its identity).
            keys: image keys, all cached (see ``fill``).

        Returns:
            A tensor, one row per key, in the order of ``keys``.

        Raises:
            KeyError: some keys are not cached (the message lists the first ones).

        Example::

            >>> cache.get(source, ["test/000000"]).shape
            torch.Size([1, 1, 1280])
        """
        if self.missing(source, keys):
            self.refresh()  # another process may have added them
            lacking = self.missing(source, keys)
            if lacking:
                raise KeyError(f"{len(lacking)} image(s) of {_source_id(source)!r} are not in the "
                               f"feature cache (call fill() first): {lacking[:5]}")
        out = torch.empty((len(keys), self.n_tokens, self.dim), dtype=self.dtype)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for pos, k in enumerate(keys):
            name, row = self._index[_address(source, k)]
            by_shard.setdefault(name, []).append((row, pos))
        for name, rows in by_shard.items():
            rows.sort()
            with safe_open(str(self.shard_dir / name), framework="pt") as f:
                sl = f.get_slice("features")
                i = 0
                while i < len(rows):  # read runs of consecutive rows with one slice each
                    j = i
                    while j + 1 < len(rows) and rows[j + 1][0] <= rows[j][0] + 1:
                        j += 1
                    first, last = rows[i][0], rows[j][0]
                    block = sl[first:last + 1]  # (run, n_tokens, dim)
                    for row, pos in rows[i:j + 1]:
                        out[pos] = block[row - first]
                    i = j + 1
        return out

    def cached_keys(self, source: ImageSource | str) -> list[str]:
        """All cached keys of a source (not of a mixture's parts), sorted."""
        sid = _source_id(source)
        return sorted(k for s, k in self._index if s == sid)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
