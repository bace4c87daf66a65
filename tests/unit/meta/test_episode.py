"""Row layouts of episodes: caption, query and in-context rows, and batching with offsets."""

from __future__ import annotations

import pytest
import torch

from metamapper.data.tasks import Example, Query, Task
from metamapper.meta.episode import (
    Episode,
    batch_rows,
    caption_rows,
    episode_from_task,
    in_context_rows,
    query_rows,
    sentence,
)
from metamapper.models.metamapper import Text


def make_episode(n_support: int = 2, n_query: int = 2, question: str = "This is a") -> Episode:
    captions = ["This is a dax", "This is a blicket."] + [f"This is a w{i}" for i in range(n_support - 2)]
    return Episode(
        features=torch.arange(n_support + n_query, dtype=torch.float32).reshape(-1, 1, 1).expand(-1, 1, 16),
        captions=captions[:n_support],
        questions=[question] * n_query,
        answers=["dax", "blicket"][:n_query] + ["w0"] * max(0, n_query - 2),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("This is a dax", "This is a dax."),
        ("This is a dax.", "This is a dax."),
        ("  What is this?  ", "What is this?"),
        ("Wow!", "Wow!"),
        ("dax", "dax."),
    ],
)
def test_sentence_adds_a_final_period_only_when_missing(text: str, expected: str) -> None:
    assert sentence(text) == expected


def test_counts() -> None:
    ep = make_episode(3, 2)
    assert (ep.n_support, ep.n_query) == (3, 2)


def test_caption_rows_pair_each_support_image_with_its_caption_as_target() -> None:
    ep = make_episode()
    assert caption_rows(ep) == [
        [0, Text(" This is a dax.", target=True)],
        [1, Text(" This is a blicket.", target=True)],
    ]
    assert caption_rows(ep, offset=7) == [
        [7, Text(" This is a dax.", target=True)],
        [8, Text(" This is a blicket.", target=True)],
    ]


def test_query_rows_use_query_images_after_the_support_and_the_answer_as_target() -> None:
    ep = make_episode()
    assert query_rows(ep) == [
        [2, Text(" This is a"), Text(" dax.", target=True)],
        [3, Text(" This is a"), Text(" blicket.", target=True)],
    ]
    assert query_rows(ep, 10, with_answer=False) == [[12, Text(" This is a")], [13, Text(" This is a")]]


def test_query_rows_without_question_hold_only_the_image() -> None:
    ep = make_episode(question="   ")
    assert query_rows(ep, with_answer=False) == [[2], [3]]
    assert query_rows(ep)[0] == [2, Text(" dax.", target=True)]


def test_in_context_rows_put_the_support_before_each_query_and_only_the_answer_is_target() -> None:
    ep = make_episode()
    context = [0, Text(" This is a dax."), 1, Text(" This is a blicket.")]
    rows = in_context_rows(ep)
    assert rows == [
        [*context, 2, Text(" This is a"), Text(" dax.", target=True)],
        [*context, 3, Text(" This is a"), Text(" blicket.", target=True)],
    ]
    targets = [it for row in rows for it in row if isinstance(it, Text) and it.target]
    assert len(targets) == 2
    shifted = in_context_rows(ep, 5, with_answer=False)
    assert shifted[1] == [5, Text(" This is a dax."), 6, Text(" This is a blicket."), 8, Text(" This is a")]


def test_task_induction_opens_every_query_row_and_no_support_row() -> None:
    from dataclasses import replace

    ep = replace(make_episode(), instruction="Answer with dax or blicket.")
    first = Text(" Answer with dax or blicket.")
    assert query_rows(ep, with_answer=False) == [[first, 2, Text(" This is a")], [first, 3, Text(" This is a")]]
    for row in in_context_rows(ep):  # before the whole sequence, support included (Frozen)
        assert row[:2] == [first, 0]
    assert caption_rows(ep) == caption_rows(make_episode())  # support fitting is unchanged


def test_every_text_piece_starts_with_one_space() -> None:
    ep = Episode(features=torch.zeros(2, 1, 16), captions=["  This is a dax  "], questions=[" This is a "],
                 answers=[" dax "])
    for row in in_context_rows(ep) + caption_rows(ep) + query_rows(ep):
        for it in row:
            if isinstance(it, Text):
                assert it.text.startswith(" ") and not it.text.startswith("  "), it


@pytest.mark.parametrize("make_rows", [caption_rows, query_rows, in_context_rows])
def test_batch_rows_offsets_image_indices_into_the_concatenated_features(make_rows) -> None:
    a, b = make_episode(2, 1), make_episode(3, 2)
    b.features = b.features + 100
    eb = batch_rows([a, b], make_rows)
    assert torch.equal(eb.features, torch.cat([a.features, b.features]))
    rows_a, rows_b = make_rows(a, 0), make_rows(b, 3)  # b's images start after a's 3 rows
    assert eb.rows == rows_a + rows_b
    assert eb.row_task == [0] * len(rows_a) + [1] * len(rows_b)
    for row, t in zip(eb.rows, eb.row_task, strict=True):
        for it in row:
            if isinstance(it, int):  # every image index points into its own episode's features
                own = a if t == 0 else b
                assert eb.features[it, 0, 0] in own.features[:, 0, 0]


def test_batch_rows_passes_keyword_arguments() -> None:
    eb = batch_rows([make_episode()], query_rows, with_answer=False)
    assert all(not (isinstance(it, Text) and it.target) for row in eb.rows for it in row)


def test_episode_from_task_orders_support_then_query_features() -> None:
    task = Task("t", 2, 1, (Example("k1", "This is a dax."), Example("k2", "This is a blicket.")),
                (Query("k3", "This is a", "blicket"),), ("dax", "blicket"))
    table = {"k1": 1.0, "k2": 2.0, "k3": 3.0}
    seen = []

    def features_of(keys: list[str]) -> torch.Tensor:
        seen.append(list(keys))
        return torch.tensor([table[k] for k in keys]).reshape(-1, 1, 1)

    ep = episode_from_task(task, features_of)
    assert seen == [["k1", "k2", "k3"]]
    assert ep.features.flatten().tolist() == [1.0, 2.0, 3.0]
    assert ep.captions == ["This is a dax.", "This is a blicket."]
    assert (ep.questions, ep.answers, ep.instruction) == (["This is a"], ["blicket"], "")
    from metamapper.data.tasks import with_task_induction

    assert episode_from_task(with_task_induction(task), features_of).instruction == "Answer with dax or blicket."


def test_in_context_rows_pack_several_queries_after_one_context() -> None:
    ep = make_episode(n_support=2, n_query=3)
    rows = in_context_rows(ep, queries_per_row=2)
    assert len(rows) == 2  # queries 0, 1 together; query 2 alone
    images = [it for it in rows[0] if isinstance(it, int)]
    assert images == [0, 1, 2, 3]
    targets = [it.text for it in rows[0] if isinstance(it, Text) and it.target]
    assert targets == [" " + sentence(ep.answers[0]), " " + sentence(ep.answers[1])]
    assert [it for it in rows[1] if isinstance(it, int)] == [0, 1, 4]
    with pytest.raises(ValueError, match="answers"):
        in_context_rows(ep, with_answer=False, queries_per_row=2)
