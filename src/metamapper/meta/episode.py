"""Turning few-shot tasks into LM input rows.

A task's images are looked up in the feature cache once; its support and query sets become rows
of ``Item`` s (see ``models/metamapper.py``). Three row formats:

* ``caption_rows`` — the paper's support input: ``[p(x_i); caption_i]``, the caption is the target;
* ``query_rows`` — the paper's query input: ``[p(x_q); question]`` with the answer as target;
* ``in_context_rows`` — the support in the LM context before the query:
  ``[p(x_1); caption_1; ...; p(x_S); caption_S; p(x_q); question]`` with the answer as target.

A task's instruction (task induction), if it has one, opens every query row of either format.

Captions are made sentences (a final period is added when missing) and every piece of text
starts with a space, so that words tokenise as they do inside running text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from metamapper.models.metamapper import Item, MetaMapper, Text
from metamapper.registry import Method


def sentence(text: str) -> str:
    """``"This is a dax"`` -> ``"This is a dax."`` (keeps an existing final . ! or ?)."""
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _space(text: str) -> str:
    text = text.strip()
    return " " + text if text else ""


@dataclass
class Episode:
    """One task with its visual features.

    Attributes:
        features: ``(S + Q, n_tokens, dim)`` support features then query features.
        captions: the ``S`` support captions.
        questions: the ``Q`` query questions ("" when there is none).
        answers: the ``Q`` answers.
        instruction: text that opens every query row (task induction); ``""``: none.
    """

    features: torch.Tensor
    captions: list[str]
    questions: list[str]
    answers: list[str]
    instruction: str = ""

    @property
    def n_support(self) -> int:
        return len(self.captions)

    @property
    def n_query(self) -> int:
        return len(self.questions)


def episode_from_task(task: object, features_of: Callable[[list[str]], torch.Tensor]) -> Episode:
    """Build an ``Episode`` from a ``data.tasks.Task`` (apply ``with_repeats`` and
    ``with_task_induction`` from ``metamapper.data`` to the task first).

    Args:
        task: a task with ``support`` (image, caption) and ``queries`` (image, question, answer).
        features_of: image keys -> features ``(len(keys), n_tokens, dim)`` (the feature cache).
    """
    support = list(task.support)  # type: ignore[attr-defined]
    queries = list(task.queries)  # type: ignore[attr-defined]
    keys = [ex.image for ex in support] + [q.image for q in queries]
    return Episode(
        features=features_of(keys),
        captions=[ex.caption for ex in support],
        questions=[q.question for q in queries],
        answers=[q.answer for q in queries],
        instruction=getattr(task, "instruction", ""),
    )


def episode_for(method: Method, model: MetaMapper, task: object,
                features_of: Callable[[list[str]], torch.Tensor]) -> Episode:
    """A task as ``method`` sees it: its ``episode`` hook (``registry.Method``), else
    ``episode_from_task``. Training, validation and evaluation all build episodes here."""
    if method.episode is not None:
        return method.episode(model, task, features_of)
    return episode_from_task(task, features_of)


def caption_rows(ep: Episode, offset: int = 0) -> list[list[Item]]:
    """The paper's support input: one row ``[p(x_i); caption_i]`` per support example."""
    return [[offset + i, Text(_space(sentence(c)), target=True)] for i, c in enumerate(ep.captions)]


def _instruction(ep: Episode) -> list[Item]:
    return [Text(_space(ep.instruction))] if ep.instruction.strip() else []


def _question(ep: Episode, j: int) -> list[Item]:
    q = ep.questions[j].strip()
    return [Text(_space(q))] if q else []


def _answer(ep: Episode, j: int) -> list[Item]:
    return [Text(_space(sentence(ep.answers[j])), target=True)]


def query_rows(ep: Episode, offset: int = 0, *, with_answer: bool = True) -> list[list[Item]]:
    """The paper's query input: ``[p(x_q); question]`` (+ the answer as target), after the
    task's instruction if it has one."""
    rows: list[list[Item]] = []
    for j in range(ep.n_query):
        row: list[Item] = [*_instruction(ep), offset + ep.n_support + j, *_question(ep, j)]
        if with_answer:
            row += _answer(ep, j)
        rows.append(row)
    return rows


def in_context_rows(ep: Episode, offset: int = 0, *, with_answer: bool = True,
                    queries_per_row: int = 1) -> list[list[Item]]:
    """Support in context: ``[p(x_1); c_1; ...; p(x_S); c_S; p(x_q); question]`` per query,
    after the task's instruction if it has one.

    With ``queries_per_row > 1`` (training only: every answer is a target), several queries
    follow one copy of the context, ``[...; p(x_q1); question; answer_1; p(x_q2); question;
    answer_2]``: one LM pass trains on several answers.
    """
    if queries_per_row > 1 and not with_answer:
        raise ValueError("several queries per row need their answers (training rows)")
    context: list[Item] = _instruction(ep)
    for i, c in enumerate(ep.captions):
        context += [offset + i, Text(_space(sentence(c)))]
    rows: list[list[Item]] = []
    for start in range(0, ep.n_query, queries_per_row):
        row = list(context)
        for j in range(start, min(start + queries_per_row, ep.n_query)):
            row += [offset + ep.n_support + j, *_question(ep, j)]
            if with_answer:
                row += _answer(ep, j)
        rows.append(row)
    return rows


@dataclass
class EpisodeBatch:
    """Several episodes' rows packed side by side.

    ``features`` concatenates all episodes' features; ``row_task[r]`` is the episode of row r.
    """

    features: torch.Tensor
    rows: list[list[Item]]
    row_task: list[int]


def batch_rows(
    episodes: Sequence[Episode], make_rows: Callable[..., list[list[Item]]], **kwargs: object
) -> EpisodeBatch:
    """Rows of many episodes with image indices offset into one concatenated features tensor."""
    rows: list[list[Item]] = []
    row_task: list[int] = []
    offset = 0
    for t, ep in enumerate(episodes):
        r = make_rows(ep, offset, **kwargs)
        rows += r
        row_task += [t] * len(r)
        offset += ep.features.shape[0]
    features = torch.cat([ep.features for ep in episodes])  # (sum S+Q, n_tokens, dim)
    return EpisodeBatch(features=features, rows=rows, row_task=row_task)
