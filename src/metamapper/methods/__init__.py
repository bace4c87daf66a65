"""The adaptation methods: one file each, registered in ``registry.METHODS`` by name.

``train.method`` in a config, ``--method`` of ``metamapper evaluate`` / ``predict`` and the web
page's choice all name one of them, with one spelling::

    from metamapper.methods import get_method, train

    train(cfg, "runs/mine")                 # the recipe of cfg.train.method
    get_method("maml").steps(None, cfg)     # adaptation steps at test time

A new method is one more file that registers a ``registry.Method`` (``docs/METHODS.md``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from metamapper.config import Config
from metamapper.registry import METHODS, Method

# Spellings of earlier versions (evaluation used hyphens and named the adapted/unadapted variants
# apart): still accepted, with a one-line note naming the method and its steps today.
OLD_SPELLINGS = {
    "in-context": ("in_context", "in_context"),
    "in-context-maml": ("in_context", "in_context with --steps"),
    "no-adapt": ("standard", "standard (the query alone, no adaptation)"),
}


def get_method(name: str) -> Method:
    """The registered method ``name`` (an old spelling is accepted with a ``FutureWarning``).

    Raises:
        registry.UnknownNameError: no method of that name (the message lists them).
    """
    if name in OLD_SPELLINGS and name not in METHODS:
        new, text = OLD_SPELLINGS[name]
        warnings.warn(f"method {name!r} is now spelled {text}", FutureWarning, stacklevel=2)
        name = new
    return METHODS.get(name)


def method_names() -> list[str]:
    """The registered methods' names."""
    return METHODS.names()


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> Path:
    """Train a run of ``cfg`` into ``run_dir`` with the recipe of its ``train.method``.

    ``resume``: continue the run in ``run_dir``; ``overwrite``: move a run there aside
    (``metamapper.runs.claim_run``). Returns ``run_dir``.
    """
    return get_method(cfg.train.method).train(cfg, run_dir, resume=resume, overwrite=overwrite,
                                              progress=progress)


# the built-in methods (these imports register them)
from metamapper.methods import in_context, maml, standard  # noqa: E402, F401
