import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metamapper.data.tasks import (
    Example,
    Query,
    Task,
    filter_tasks,
    induction_text,
    sample_task,
    with_repeats,
    with_task_induction,
)
from metamapper.data.words import TEST_WORDS, made_up_words

CLASSES = {f"class{c}": [f"c{c}/{i}" for i in range(6)] for c in range(5)}


def make_task():
    support = (Example("a1", "This is a dax."), Example("b1", "This is a blicket."))
    queries = (Query("a2", "This is a", "dax"),)
    return Task("t", 2, 1, support, queries, ("dax", "blicket"))


def test_task_validation():
    t = make_task()
    with pytest.raises(ValueError, match="ways"):
        Task("t", 1, 1, t.support, t.queries, ("dax",))
    with pytest.raises(ValueError, match="shots"):
        Task("t", 2, 0, t.support, t.queries, t.words)
    with pytest.raises(ValueError, match="words"):
        Task("t", 2, 1, t.support, t.queries, ("dax",))


def test_with_repeats_repeats_whole_support_list():
    t = make_task()
    r = with_repeats(t, 2)
    assert r.support == t.support * 3
    assert with_repeats(t, 0) == t
    assert r.shots == t.shots and r.queries == t.queries
    with pytest.raises(ValueError, match="repeats"):
        with_repeats(t, -1)


def test_task_induction_text():
    assert induction_text(["dax", "blicket"]) == "Answer with dax or blicket."
    assert induction_text(list(TEST_WORDS)) == (
        "Answer with dax, blicket, shously, slation or perpo.")
    t = with_task_induction(make_task())
    assert t.instruction == "Answer with dax or blicket."
    assert t.queries == make_task().queries and t.support == make_task().support


def test_sample_task_invariants_and_reproducibility():
    t1 = sample_task(CLASSES, ways=3, shots=2, queries_per_class=2,
                     rng=np.random.default_rng(7), naming="made_up")
    t2 = sample_task(CLASSES, ways=3, shots=2, queries_per_class=2,
                     rng=np.random.default_rng(7), naming="made_up")
    assert t1 == t2
    assert len(t1.support) == 6 and len(t1.queries) == 6
    support, queries = {e.image for e in t1.support}, {q.image for q in t1.queries}
    assert len(support) == 6 and not support & queries
    classes = {e.image.split("/")[0] for e in t1.support}
    assert len(classes) == 3
    assert len(set(t1.words)) == 3 and not set(t1.words) & set(TEST_WORDS)
    # Each query's answer is the word of its class, as captioned in the support set.
    word_of = {e.image.split("/")[0]: e.caption.removeprefix("This is a ").rstrip(".")
               for e in t1.support}
    assert all(q.answer == word_of[q.image.split("/")[0]] for q in t1.queries)
    t3 = sample_task(CLASSES, ways=3, shots=2, queries_per_class=2,
                     rng=np.random.default_rng(8), naming="made_up")
    assert t3 != t1


def test_sample_task_with_random_random_and_namings():
    rng = random.Random(0)
    real = sample_task(CLASSES, ways=2, shots=1, queries_per_class=1, rng=rng, naming="real",
                       real_names={"class0": "zero"})
    assert set(real.words) <= set(CLASSES) | {"zero"}
    fixed = sample_task(CLASSES, ways=5, shots=1, queries_per_class=0, rng=rng, naming="fixed")
    assert sorted(fixed.words) == sorted(TEST_WORDS) and fixed.queries == ()
    with pytest.raises(ValueError, match="naming must be one of"):
        sample_task(CLASSES, ways=2, shots=1, queries_per_class=1, rng=rng, naming="mixed")


def test_made_up_names_change_per_task():
    rng = np.random.default_rng(0)
    words = {sample_task(CLASSES, ways=2, shots=1, queries_per_class=1, rng=rng).words
             for _ in range(20)}
    assert len(words) > 15


def test_sample_task_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="fewer than shots"):
        sample_task(CLASSES, ways=2, shots=5, queries_per_class=2, rng=rng)
    with pytest.raises(ValueError, match="ways"):
        sample_task(CLASSES, ways=1, shots=1, queries_per_class=1, rng=rng)
    with pytest.raises(ValueError, match="classes"):
        sample_task(CLASSES, ways=6, shots=1, queries_per_class=1, rng=rng)
    with pytest.raises(ValueError, match="naming"):
        sample_task(CLASSES, ways=2, shots=1, queries_per_class=1, rng=rng, naming="odd")
    with pytest.raises(ValueError, match="distinct words"):
        sample_task(CLASSES, ways=3, shots=1, queries_per_class=1, rng=rng, naming="fixed",
                    words=["a", "b"])


def test_overlapping_classes_never_reuse_an_image():
    shared = {"a": ["x", "y", "z", "w"], "b": ["x", "y", "z", "w"]}
    for seed in range(20):
        t = sample_task(shared, ways=2, shots=1, queries_per_class=1,
                        rng=np.random.default_rng(seed))
        images = [e.image for e in t.support] + [q.image for q in t.queries]
        assert len(images) == len(set(images)) == 4


def test_filter_tasks():
    t = make_task()
    assert filter_tasks([t], ["zzz"]) == [t]
    assert filter_tasks([t], ["a2"]) == []


@settings(max_examples=40, deadline=None)
@given(ways=st.integers(2, 5), shots=st.integers(1, 3), q=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1), naming=st.sampled_from(["made_up", "real"]))
def test_sampler_properties(ways, shots, q, seed, naming):
    t = sample_task(CLASSES, ways=ways, shots=shots, queries_per_class=q,
                    rng=np.random.default_rng(seed), naming=naming)
    images = [e.image for e in t.support] + [x.image for x in t.queries]
    assert len(images) == len(set(images)) == ways * (shots + q)
    assert len({e.caption for e in t.support}) == ways
    assert {x.answer for x in t.queries} <= set(t.words)
    if naming == "made_up":
        assert set(t.words) <= set(made_up_words())
