"""Shared set-up of the reliability tests: one torch thread, a private metamapper cache and
feature cache (nothing goes to ~/.cache)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def mm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's metamapper cache and feature cache folders (shared: encoded once)."""
    return {"cache": tmp_path_factory.mktemp("mm-cache"),
            "features": tmp_path_factory.mktemp("features")}


@pytest.fixture(scope="module")
def mm_env(mm_dirs: dict[str, Path]) -> Iterator[dict[str, str]]:
    """Environment for in-process runs (set here, for the requesting module only, and restored
    after it) and subprocesses (the returned dict; its ``FEATURES`` is the feature cache folder)."""
    cache = str(mm_dirs["cache"])
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a loaded machine
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("METAMAPPER_CACHE", cache)
            yield {**os.environ, "OMP_NUM_THREADS": "1", "FEATURES": str(mm_dirs["features"])}
    finally:
        torch.set_num_threads(n)
