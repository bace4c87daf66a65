"""Shared set-up of the reliability tests: one torch thread, a private metamapper cache and
feature cache (nothing goes to ~/.cache)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session")
def mm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for in-process runs (set here) and subprocesses (the returned dict; its
    ``FEATURES`` is the feature cache folder)."""
    cache = tmp_path_factory.mktemp("mm-cache")
    features = tmp_path_factory.mktemp("features")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a loaded machine
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAMAPPER_CACHE", str(cache))
        yield {**os.environ, "METAMAPPER_CACHE": str(cache), "OMP_NUM_THREADS": "1",
               "FEATURES": str(features)}
    torch.set_num_threads(n)
