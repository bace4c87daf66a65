"""Running ``metamapper`` commands in this process (``cli``): the real entry point
``metamapper.cli.main`` without a process launch per command."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metamapper.cli import main


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Iterator[Path]:
    """One torch thread, a private metamapper cache, no torchrun variables, for the requesting
    module (restored after it). Yields a folder of the module's own."""
    tmp = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAMAPPER_CACHE", str(tmp / "cache"))
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(key, raising=False)
        yield tmp


@pytest.fixture(scope="module")
def cli(in_process: Path) -> Callable[..., str]:
    """``cli("train", "--config", ...)``: run the command, assert exit code 0 (else fail with its
    error output), return what it printed."""

    def run(*args: object) -> str:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        assert code == 0, f"metamapper {' '.join(map(str, args))}: exit {code}\n{err.getvalue()[-3000:]}"
        return out.getvalue()

    return run


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a CLI subprocess: its own cache folder (``FEATURES`` for the feature
    cache) and one thread per process."""
    cache = tmp_path_factory.mktemp("mm-cache")
    return {**os.environ, "METAMAPPER_CACHE": str(cache), "OMP_NUM_THREADS": "1",
            "FEATURES": str(cache / "features")}
