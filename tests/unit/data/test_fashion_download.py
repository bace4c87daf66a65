"""Where Fashion-MNIST comes from: Debian's folder, the environment's or the cache's copy, else a
checked download. Tiny fake IDX files served from ``file://`` mirrors stand in for the release:
no network."""

from __future__ import annotations

import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import metamapper.data.fashion as fashion
from metamapper.data.fashion import (
    FashionMNIST,
    FashionMNISTNotFoundError,
    download_fashion,
    fashion_root,
    find_fashion_root,
    gunzip_sha256,
)
from metamapper.downloads import DownloadError


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _fake_release() -> dict[str, bytes]:
    """Uncompressed IDX bytes of a tiny Fashion-MNIST: 3 images of each class per split."""
    rng = np.random.default_rng(0)
    out = {}
    for prefix in ("train", "t10k"):
        labels = np.repeat(np.arange(10, dtype=np.uint8), 3)
        out[f"{prefix}-images-idx3-ubyte"] = _idx(rng.integers(0, 256, (30, 28, 28), dtype=np.uint8))
        out[f"{prefix}-labels-idx1-ubyte"] = _idx(labels)
    return out


@pytest.fixture
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """A fake release pinned in ``FASHION_SHA256``; Debian's folder, the environment's data folder
    and the cache all point at empty places under ``tmp_path``."""
    files = _fake_release()
    monkeypatch.setattr(fashion, "FASHION_SHA256",
                        {stem: hashlib.sha256(data).hexdigest() for stem, data in files.items()})
    monkeypatch.setattr(fashion, "DEFAULT_ROOT", str(tmp_path / "debian"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path / "cache"))
    return files


def _mirror(folder: Path, files: dict[str, bytes], *, mtime: float = 0.0) -> str:
    """Write ``files`` gzip-compressed into ``folder``; return its ``file://`` base URL."""
    folder.mkdir(parents=True)
    for stem, data in files.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(data, mtime=mtime))
    return folder.as_uri() + "/"


def test_nothing_found_and_no_download_says_how_to_get_it(release, tmp_path):
    assert find_fashion_root() is None
    with pytest.raises(FashionMNISTNotFoundError) as e:
        fashion_root(download=False)
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg


def test_unreachable_mirrors_give_one_line(release, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "FASHION_MIRRORS", ((tmp_path / "nowhere").as_uri() + "/",))
    with pytest.raises(FashionMNISTNotFoundError) as e:
        FashionMNIST(split="test")
    msg = str(e.value)
    assert "\n" not in msg and "train-images-idx3-ubyte.gz" in msg and "apt-get install" in msg
    assert not list((tmp_path / "cache" / "fashion-mnist").iterdir())  # no partial file left


def test_download_checks_the_uncompressed_data(release, tmp_path, monkeypatch):
    corrupt = dict(release)
    images = bytearray(corrupt["train-images-idx3-ubyte"])
    images[-1] ^= 0xFF  # one pixel off: still a valid gzip of a valid IDX file
    corrupt["train-images-idx3-ubyte"] = bytes(images)
    bad = _mirror(tmp_path / "bad", corrupt)
    with pytest.raises(DownloadError, match="train-images-idx3-ubyte.gz.*not the pinned"):
        download_fashion(mirrors=[bad])
    assert not (tmp_path / "cache" / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists()

    # the next mirror serves the right data, compressed differently (as Debian's copy is)
    good = _mirror(tmp_path / "good", release, mtime=12345.0)
    monkeypatch.setattr(fashion, "FASHION_MIRRORS", (bad, good))
    root = fashion_root()
    assert root == tmp_path / "cache" / "fashion-mnist"
    images = (root / "train-images-idx3-ubyte.gz").read_bytes()
    assert images == (tmp_path / "good" / "train-images-idx3-ubyte.gz").read_bytes()
    assert images != gzip.compress(release["train-images-idx3-ubyte"], mtime=0)
    for stem, data in release.items():
        assert gunzip_sha256(root / f"{stem}.gz") == hashlib.sha256(data).hexdigest()
    test = FashionMNIST(split="test")  # found in the cache now, without a download
    assert test.root == str(root.resolve()) and test.images.shape == (30, 28, 28)
    assert find_fashion_root() == root


def test_a_damaged_gzip_download_is_refused(release, tmp_path):
    damaged = tmp_path / "damaged"
    _mirror(damaged, release)
    f = damaged / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[12:20] = b"\xff" * 8  # the deflate stream, not the header
    f.write_bytes(bytes(raw))
    with pytest.raises(DownloadError, match="t10k-labels-idx1-ubyte.gz"):
        download_fashion(tmp_path / "out", mirrors=[damaged.as_uri() + "/"])
    assert not (tmp_path / "out" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_debian_then_the_environment_then_the_cache(release, tmp_path):
    for folder in ("cache/fashion-mnist", "env/share/metamapper/fashion-mnist", "debian"):
        _mirror(tmp_path / folder, release)
        assert find_fashion_root() == tmp_path / folder  # each one found ahead of the last
    # an incomplete folder is passed over
    (tmp_path / "debian" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert find_fashion_root() == tmp_path / "env/share/metamapper/fashion-mnist"


def test_an_explicit_root_is_used_as_it_is(release, tmp_path):
    _mirror(tmp_path / "cache/fashion-mnist", release)
    with pytest.raises(FashionMNISTNotFoundError, match="pass root="):
        FashionMNIST(str(tmp_path / "elsewhere"), "train")


def test_metamapper_download_fashion_into_a_folder(release, tmp_path, monkeypatch, capsys):
    from metamapper.cli import main

    monkeypatch.setattr(fashion, "FASHION_MIRRORS", (_mirror(tmp_path / "release", release),))
    assert main(["download", "fashion-mnist", "--dir", str(tmp_path / "data")]) == 0
    folder = tmp_path / "data" / "fashion-mnist"
    assert capsys.readouterr().out == f"fashion-mnist: {folder}\n"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.gz" for s in release)
    assert main(["download", "fashion-mnist", "smollm3"]) == 2
    assert capsys.readouterr().err == ("metamapper: error: cannot download smollm3: choose from "
                                       "smollm2, fashion-mnist\n")
