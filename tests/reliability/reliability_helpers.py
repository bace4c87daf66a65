"""Constants and helpers of the reliability tests (imported by name: pytest puts this folder on
``sys.path``)."""

from __future__ import annotations

from pathlib import Path

from metamapper.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke_config(env: dict[str, str], *overrides: str) -> Config:
    """The smoke config (tiny random backbones, generated images) with the test's feature cache
    and ``overrides``."""
    return load_config(SMOKE, [f"data.feature_cache={env['FEATURES']}", *overrides])
