"""Name -> builder registries for backbones, the one registry of task sources, and the one
registry of adaptation methods.

New backbones and task sources register themselves by name and need no edit to core code::

    from metamapper.registry import VISION_ENCODERS

    @VISION_ENCODERS.register("my-encoder")
    def build_my_encoder(*, path=None, mode="pooled", **kwargs):
        ...

Task sources (``data.source`` in a config, ``--dataset`` of ``metamapper evaluate``) have their
registry where tasks are defined, ``metamapper.data.tasks.TASK_SOURCES`` (a ``Registry`` of
``TaskSource`` s; ``metamapper.data.sources`` registers the built-in ones).

An adaptation method (``train.method`` in a config, ``--method`` of ``evaluate`` and ``predict``,
the web page's choice) is a ``Method``: how the mapper is trained and how it meets a new task.
The built-in ones (``in_context``, ``maml``, ``standard``) are registered by
``metamapper.methods``, one file each; a new one is one more file (``docs/METHODS.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from pathlib import Path

    from metamapper.config import Config

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
class Method:
    """An adaptation method: how a mapper is trained, and how it meets a new task at test time.

    Attributes:
        name: the one spelling, as in ``train.method`` and ``--method`` (``in_context``).
        description: one sentence for the model card, the web page and ``--help``.
        recipe: trains a run: ``recipe(cfg, run_dir, *, method, resume, overwrite, progress) ->
            run_dir`` (``train.episodic.train``, ``train.standard.train``); call it through
            ``Method.train``.
        query_rows: the LM input of a task's queries, ``(episode, offset, *, with_answer,
            **kw) -> rows`` (``meta.episode.query_rows``: ``[p(x_q); question]``;
            ``in_context_rows``: the support pairs first). Training's query loss and the answers
            at test time both use it.
        default_steps: adaptation steps at test time for a run not trained with this method
            (a run trained with it adapts as many steps as it trained with).
        adapts: False for a method that never takes adaptation steps (asking for some is an
            error).
        prefixes: how the image slots of a batch become prefix vectors, each with its task's
            mapper parameters (``meta.maml.task_prefixes``' signature); None: that function.
            The hook for methods that make a prefix knowing the rest of its task.
        episode: how a task becomes an ``Episode`` of cached features, ``episode(model, task,
            features_of)``; None: ``meta.episode.episode_from_task(task, features_of)``. The
            hook for methods that change a task's features (relative to its support, say) in
            training, validation and evaluation alike.
        queries_per_row: with the in-context format, training's query loss reads this config's
            ``train.queries_per_row`` queries per copy of the support (else one query a row).
        support_fit: validation during training also scores whether the adapted mapper names
            its own support images (for methods whose inner loop must write the support words).
        unit: what one update trains on, for reports ("tasks", "captioned images").
    """

    name: str
    description: str
    recipe: Callable[..., Path]
    query_rows: Callable[..., list[list[Any]]]
    default_steps: int = 0
    adapts: bool = True
    prefixes: Callable[..., Any] | None = None
    episode: Callable[..., Any] | None = None
    queries_per_row: bool = False
    support_fit: bool = False
    unit: str = "tasks"

    def train(self, cfg: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> Path:
        """Train a run of ``cfg`` (whose ``train.method`` must be this method) into ``run_dir``."""
        if cfg.train.method != self.name:
            raise ValueError(f"method {self.name} cannot train a config of train.method={cfg.train.method}")
        return self.recipe(cfg, run_dir, method=self, resume=resume, overwrite=overwrite, progress=progress)

    def steps(self, steps: int | None, trained: Config | None = None) -> int:
        """The one rule for adaptation steps at test time (``evaluate``, ``predict``, the Python
        API and the web page all use it): a method that never adapts takes 0; else an explicit
        ``steps`` wins, then the steps the run was trained with if it was trained with this
        method (``trained``: its config), then the method's ``default_steps``.

        Raises:
            ValueError: negative ``steps``, or steps for a method that never adapts.
        """
        if steps is not None and steps < 0:
            raise ValueError(f"adaptation steps must be >= 0, got {steps}")
        if not self.adapts:
            if steps:
                raise ValueError(f"method {self.name} takes no adaptation steps (got {steps})")
            return 0
        if steps is not None:
            return steps
        if trained is not None and trained.train.method == self.name:
            return trained.train.inner.steps
        return self.default_steps


VISION_ENCODERS: Registry[Callable[..., Any]] = Registry("vision encoder")
LANGUAGE_MODELS: Registry[Callable[..., Any]] = Registry("language model")
METHODS: Registry[Method] = Registry("method")  # the built-in ones: metamapper.methods


def list_vision_encoders() -> list[str]:
    """Names accepted by ``build_vision_encoder``."""
    return VISION_ENCODERS.names()


def list_language_models() -> list[str]:
    """Names accepted by ``build_language_model``."""
    return LANGUAGE_MODELS.names()
