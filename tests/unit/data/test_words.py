import re

from metamapper.data.fashion import CLASS_NAMES
from metamapper.data.words import TEST_WORDS, made_up_words


def test_pool_is_deterministic_distinct_and_well_formed():
    pool = made_up_words()
    assert pool == made_up_words()
    assert len(pool) == 2000 == len(set(pool))
    assert all(re.fullmatch(r"[a-z]{3,9}", w) for w in pool)
    assert made_up_words(50, seed=1) != pool[:50]


def test_pool_is_disjoint_from_test_words_and_class_names():
    pool = set(made_up_words(2000))
    assert not pool & set(TEST_WORDS)
    names = {n.lower() for n in CLASS_NAMES} | {"shirt", "bag", "coat", "dress", "boot", "top"}
    assert not pool & names


def test_exclude():
    first = made_up_words(10)
    assert not set(made_up_words(10, exclude=[first[0].upper()])) & {first[0]}
