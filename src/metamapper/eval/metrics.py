"""Open-ended exact match and confidence intervals."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """The answer as scored: cut at the first newline or period, lower-case, without
    punctuation, articles and extra whitespace (``" The Blicket.\\n" -> "blicket"``)."""
    text = re.split(r"[\n.]", text, maxsplit=1)[0].lower()
    text = _ARTICLES.sub(" ", text.translate(_PUNCT))
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> bool:
    """Whether the normalised prediction equals the normalised answer (both non-empty)."""
    p, a = normalize_answer(prediction), normalize_answer(answer)
    return bool(a) and p == a


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal-approximation confidence interval."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, 1.96 * math.sqrt(var / n)
