"""Name -> builder registries for backbones and benchmarks.

New backbones and task sources register themselves by name and need no edit to core code::

    from metamapper.registry import VISION_ENCODERS

    @VISION_ENCODERS.register("my-encoder")
    def build_my_encoder(*, path=None, mode="pooled", **kwargs):
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no builder was registered for."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping from names to builder functions of one kind of object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers ``builder`` under ``name`` (names are unique)."""

        def decorate(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return decorate

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Build the object registered as ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._builders


VISION_ENCODERS: Registry[Any] = Registry("vision encoder")
LANGUAGE_MODELS: Registry[Any] = Registry("language model")
TASK_SOURCES: Registry[Any] = Registry("task source")


def list_vision_encoders() -> list[str]:
    """Names accepted by ``build_vision_encoder``."""
    return VISION_ENCODERS.names()


def list_language_models() -> list[str]:
    """Names accepted by ``build_language_model``."""
    return LANGUAGE_MODELS.names()
