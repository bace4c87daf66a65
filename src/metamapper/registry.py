"""Name -> builder registries for backbones, and the one registry of task sources.

New backbones and task sources register themselves by name and need no edit to core code::

    from metamapper.registry import VISION_ENCODERS

    @VISION_ENCODERS.register("my-encoder")
    def build_my_encoder(*, path=None, mode="pooled", **kwargs):
        ...

A task source (``data.source`` in a config, ``--dataset`` of ``metamapper evaluate``) is a
``TaskSource``: meta-training and validation tasks from a ``DataConfig``, test tasks for
evaluation. Training, validation and evaluation all look sources up here
(``metamapper.data.sources``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from metamapper.config import DataConfig
    from metamapper.data.tasks import TaskSet

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no builder was registered for."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping from names to one kind of entry (a builder function, a ``TaskSource``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or call) that registers an entry under ``name`` (names are unique)."""

        def decorate(builder: T) -> T:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return decorate

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._builders)

    def get(self, name: str) -> T:
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the builder registered as ``name`` with keyword arguments."""
        builder: Any = self.get(name)
        return builder(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._builders


@dataclass(frozen=True)
class TaskSource:
    """A named source of few-shot tasks.

    Attributes:
        train_val: ``(data config, n_tasks, seed) -> (train, validation)`` task sets for
            meta-training; None for a source that only tests.
        test: ``(*, root, variant, ways, shots, n_tasks, seed, split) -> TaskSet``: the
            evaluation tasks of ``split`` (``data.tasks.EVAL_SPLITS``; ``"test"``: classes,
            images or tasks that meta-training never saw; a source refuses a split it lacks with
            a ``ValueError``); None for a training-only source.
        datasets: the evaluation names this source answers (``--dataset``) -> the ``variant``
            passed to ``test``.
        no_induction: evaluation names on which task induction ("Answer with dax or
            blicket.") is refused: their answers are not the support words (VQA).
        describe: ``(root) -> str``: one line on the source's data in ``root`` (None: its
            default), e.g. its class counts per split; cheap (it builds and downloads nothing).
    """

    train_val: Callable[[DataConfig, int, int], tuple[TaskSet, TaskSet]] | None = None
    test: Callable[..., TaskSet] | None = None
    datasets: Mapping[str, str] = field(default_factory=dict)
    no_induction: frozenset[str] = frozenset()
    describe: Callable[[str | None], str] | None = None


VISION_ENCODERS: Registry[Callable[..., Any]] = Registry("vision encoder")
LANGUAGE_MODELS: Registry[Callable[..., Any]] = Registry("language model")
TASK_SOURCES: Registry[TaskSource] = Registry("task source")


def list_vision_encoders() -> list[str]:
    """Names accepted by ``build_vision_encoder``."""
    return VISION_ENCODERS.names()


def list_language_models() -> list[str]:
    """Names accepted by ``build_language_model``."""
    return LANGUAGE_MODELS.names()
