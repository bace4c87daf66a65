"""Open-ended exact match and 95% confidence intervals.

Two intervals, both asymmetric and never outside [0, 1]:

* ``wilson_interval`` — the Wilson score interval of a binomial proportion (``k`` hits of ``n``
  independent queries). Unlike the normal approximation (``p ± 1.96 sqrt(p(1-p)/n)``) it does not
  collapse to a point at 0 or n hits: 0 of 20 gives (0, 0.161), not "0 ± 0".
* ``bootstrap_interval`` — a seeded percentile bootstrap over tasks of the mean of per-task
  accuracies (for tasks with several queries, which share one adapted mapper and so are not
  independent queries).

``accuracy_interval`` picks the one ``evaluate`` reports as ``ci95`` (see its docstring).

Example::

    >>> lo, hi = wilson_interval(0, 20)
    >>> round(lo, 3), round(hi, 3)
    (0.0, 0.161)
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CI_METHODS = ("wilson", "wilson-tasks")


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


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: ``successes`` of ``n`` trials.

    ``successes`` may be fractional (a mean of per-task accuracies times the number of tasks).

    Args:
        successes: hits, ``0 <= successes <= n``.
        n: trials (``0``: ``(nan, nan)``).
        z: the normal quantile (default: 95% two-sided).

    Returns:
        ``(low, high)``, with ``0 <= low <= successes / n <= high <= 1``.

    Example::

        >>> [round(x, 4) for x in wilson_interval(20, 20)]
        [0.8389, 1.0]
    """
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at p = 0 (or 1) the low (high) end is exactly 0 (1); clamp the rounding error
    return max(0.0, centre - half) if p > 0 else 0.0, min(1.0, centre + half) if p < 1 else 1.0


def bootstrap_interval(values: Sequence[float], *, seed: int = 0,
                       resamples: int = 2000) -> tuple[float, float]:
    """A seeded percentile bootstrap 95% interval of the mean of ``values`` (e.g. per-task
    accuracies): resample the values with replacement ``resamples`` times.

    At a mean of exactly 0 or 1 it is the point itself (every resample is the same): it says
    nothing about the accuracy's uncertainty there, which is why ``accuracy_interval`` does not
    report it.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no values.
    """
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    x = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = x[idx].mean(axis=1)  # (resamples,)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def accuracy_interval(per_task: Sequence[float], n_queries: int) -> tuple[tuple[float, float], str]:
    """The 95% interval ``evaluate`` reports as ``ci95``, and its method's name.

    * Every task has one query (the Frozen benchmarks): the Wilson interval over the queries
      (``"wilson"``), the exact binomial setting.
    * Tasks with several queries: the Wilson interval with the number of *tasks* as ``n`` and
      the mean per-task accuracy as the proportion (``"wilson-tasks"``). The queries of a task
      share one adapted mapper, so counting them as independent trials would be too narrow; a
      per-task accuracy in [0, 1] with mean p has variance at most p(1 - p), so this interval is
      conservative, and unlike a bootstrap over tasks it does not collapse at 0% or 100%.

    Args:
        per_task: the accuracy of each task.
        n_queries: the number of queries over all tasks.

    Example::

        >>> accuracy_interval([0.0] * 20, 20)[1]
        'wilson'
    """
    n = len(per_task)
    method = "wilson" if n_queries == n else "wilson-tasks"
    # one query per task: the sum is the number of hits; else n times the mean accuracy
    return wilson_interval(min(float(n), max(0.0, float(sum(per_task)))), n), method
