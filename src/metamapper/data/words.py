"""Answer words for few-shot tasks: the Frozen test nonsense words and a made-up word pool.

Binding tasks name each class with a word that carries no prior meaning, drawn afresh per task, so
the model must bind the word to the support images instead of memorising class -> word. The pool is
built from syllables (onset + vowel + optional coda), so the words are pronounceable and tokenise
like ordinary words. It never contains the five test words of Open-Ended miniImageNet nor the
names a caller excludes (a task source passes its class names, so meta-training never sees a
test-time answer).

Example::

    from metamapper.data.words import TEST_WORDS, made_up_words
    pool = made_up_words(100, seed=0, exclude=["T-shirt/top", "Ankle boot"])  # deterministic
    assert not set(pool) & set(TEST_WORDS)
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from functools import lru_cache

TEST_WORDS: tuple[str, ...] = ("dax", "blicket", "shously", "slation", "perpo")
"""The nonsense words of Frozen's Open-Ended miniImageNet (used only at test time)."""

_ONSETS = (
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "bl", "br", "dr", "fl",
    "fr", "gl", "gr", "kl", "kr", "pl", "pr", "sk", "sl", "sm", "sn", "sp", "st", "tr", "sh", "ch",
    "th", "",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ee", "oo", "ou", "y")
_CODAS = ("", "", "", "", "n", "m", "l", "r", "s", "t", "k", "x", "nd", "nt", "sk", "rp", "lb")
_WORD = re.compile(r"^[a-z]{3,9}$")


def _reserved(exclude: frozenset[str]) -> set[str]:
    """The test words, and each excluded name with its words and their plurals ("ankle boot" ->
    "ankle boot", "ankle", "boot", "boots", ...)."""
    reserved = set(TEST_WORDS)
    for name in exclude:
        low = name.lower()
        reserved.add(low)
        reserved.update(t for t in re.split(r"[^a-z]+", low) if t)
    reserved.update({w + "s" for w in list(reserved)})  # plurals ("trousers")
    return reserved


@lru_cache(maxsize=16)
def _pool(n: int, seed: int, exclude: frozenset[str]) -> tuple[str, ...]:
    rng = random.Random(seed)
    banned = _reserved(exclude)
    words: list[str] = []
    seen: set[str] = set()
    for _ in range(max(1000, n * 200)):
        if len(words) == n:
            break
        n_syll = rng.choice((1, 2, 2, 3))
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if i == n_syll - 1
                                                         else "")
            for i in range(n_syll)
        )
        if _WORD.match(word) and word not in seen and word not in banned:
            seen.add(word)
            words.append(word)
    if len(words) < n:
        raise ValueError(f"could only build {len(words)} distinct made-up words, asked for {n}")
    return tuple(words)


def made_up_words(n: int = 2000, seed: int = 0, exclude: Iterable[str] = ()) -> list[str]:
    """A deterministic pool of ``n`` distinct pronounceable made-up words.

    Each word has 1-3 syllables, 3-9 lower-case ASCII letters, and is never one of
    ``TEST_WORDS`` nor a name in ``exclude`` (nor a word or plural of one).
    The same ``(n, seed, exclude)`` always gives the same list. A pool word can still
    accidentally be a real English word ("sand"); pass such words in ``exclude`` if it matters.

    Args:
        n: number of words.
        seed: seed of the generator.
        exclude: names the pool must not contain (compared lower-case; their words and plurals
            are excluded too), e.g. the class names of a task source.

    Returns:
        A list of ``n`` distinct words.

    Example::

        >>> words = made_up_words(5, seed=1)
        >>> len(set(words)) == 5 and "dax" not in words
        True
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(_pool(n, seed, frozenset(w.lower() for w in exclude)))
