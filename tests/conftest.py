"""Shared fixtures: tiny random backbones written to disk and loaded through the real loaders.

The backbones are frozen (eval mode, no gradients), so tests may share one session-wide copy;
a test must not change their parameters, modes or ``requires_grad`` flags.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from metamapper.models.backbones import (
    LanguageModel,
    VisionEncoder,
    build_language_model,
    build_vision_encoder,
    make_tiny_backbones,
)
from metamapper.models.metamapper import MetaMapper

SMOKE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is much faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def smoke_model() -> MetaMapper:
    """The smoke config's tiny model (tiny-lm, random mapper, seed 0) without its encoder,
    for 16-d visual features."""
    from metamapper.config import load_config
    from metamapper.models.factory import build_model

    cfg = load_config(SMOKE_CONFIG)
    torch.manual_seed(0)
    return build_model(cfg.backbones, cfg.mapper, with_vision=False, visual_dim=16)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLIP vision tower and a tiny Llama LM (seed 0) saved as model folders."""
    return make_tiny_backbones(tmp_path_factory.mktemp("tiny-llama"), seed=0, arch="llama")


@pytest.fixture(scope="session")
def tiny_dirs_gpt2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Like ``tiny_dirs`` with a GPT-2 LM."""
    return make_tiny_backbones(tmp_path_factory.mktemp("tiny-gpt2"), seed=0, arch="gpt2")


@pytest.fixture(scope="session")
def tiny_lm(tiny_dirs: dict[str, Path]) -> LanguageModel:
    """The tiny Llama (hidden 32, EOS = BOS = pad = 0) loaded with ``build_language_model("hf")``."""
    return build_language_model("hf", path=str(tiny_dirs["lm"]))


@pytest.fixture(scope="session")
def tiny_lm_gpt2(tiny_dirs_gpt2: dict[str, Path]) -> LanguageModel:
    return build_language_model("hf", path=str(tiny_dirs_gpt2["lm"]))


@pytest.fixture(scope="session")
def tiny_vision(tiny_dirs: dict[str, Path]) -> VisionEncoder:
    """The tiny CLIP vision tower in pooled mode: features ``(B, 1, 16)``."""
    return build_vision_encoder("clip", path=str(tiny_dirs["vision"]), mode="pooled")


@pytest.fixture(scope="session")
def tiny_vision_patch(tiny_dirs: dict[str, Path]) -> VisionEncoder:
    """The tiny CLIP vision tower in patch mode: features ``(B, 17, 32)``."""
    return build_vision_encoder("clip", path=str(tiny_dirs["vision"]), mode="patch")


@pytest.fixture
def images():
    """Three small random RGB images of different sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((40, 40), (48, 64), (33, 50))
    ]


@pytest.fixture(scope="session")
def lively_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Like ``tiny_dirs`` with an LM whose greedy answers depend on its input
    (``tiny_data.write_lively_lm``)."""
    from tiny_data import write_lively_lm

    return write_lively_lm(tmp_path_factory.mktemp("lively"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# set by pytest itself, or once by a library on first use (torch's compiler cache folder)
_NOT_STATE = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR"}


def _global_state() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_STATE}
    return {"environment": env, "torch threads": torch.get_num_threads(),
            "torch default dtype": torch.get_default_dtype(), "grad mode": torch.is_grad_enabled(),
            "working directory": os.getcwd()}


@pytest.fixture(scope="session", autouse=True)
def _state_at_start() -> dict[str, Any]:
    """The process state before any other fixture (autouse session fixtures are set up first)."""
    return _global_state()


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_global_state(request: pytest.FixtureRequest,
                            _state_at_start: dict[str, Any]) -> Iterator[None]:
    """After each test module (its fixtures torn down), the process is as the session found it, so
    that no test depends on which module ran before it: environment variables, torch's thread
    count, default dtype and grad mode, the working directory. A fixture that changes them is
    module- or function-scoped and restores them (``monkeypatch``, or a try/finally); a
    session-scoped one would change them for every module after it and fails here."""
    yield
    before, after = _state_at_start, _global_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if "environment" in changed:
        b, a = changed.pop("environment")
        changed.update({f"${k}": (b.get(k), a.get(k)) for k in sorted(b.keys() | a.keys())
                        if b.get(k) != a.get(k)})
    assert not changed, (f"{request.module.__name__} left the process changed (at the start of "
                         f"the session, now): {changed}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run only where a CUDA GPU is."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
