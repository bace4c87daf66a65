"""The package's one version, pyproject.toml's as installed (the distribution is
metamapper-fewshot); a leaf every layer may import."""

from __future__ import annotations

import importlib.metadata

try:
    __version__ = importlib.metadata.version("metamapper-fewshot")
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"
