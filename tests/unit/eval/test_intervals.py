"""95% intervals of accuracies: Wilson score (against published values), the seeded bootstrap
over tasks, which one ``evaluate`` reports, and how the report prints it."""

from __future__ import annotations

import math

import pytest

from metamapper.eval.metrics import accuracy_interval, bootstrap_interval, wilson_interval
from metamapper.eval.report import format_accuracy


def test_wilson_does_not_collapse_at_zero_or_all_hits() -> None:
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.161, abs=1e-3)  # z^2 / (n + z^2)
    assert hi == pytest.approx(1.96**2 / (20 + 1.96**2), abs=1e-4)
    lo, hi = wilson_interval(20, 20)
    assert lo == pytest.approx(0.839, abs=1e-3) and hi == 1.0


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Stat. Med. 17:857, table I, method 3
    (15, 148, 0.0624, 0.1605),  # ibid.
    (10, 20, 0.2993, 0.7007),
])
def test_wilson_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-3) and hi == pytest.approx(high, abs=1e-3)


def test_wilson_is_asymmetric_inside_0_1_and_refuses_impossible_counts() -> None:
    lo, hi = wilson_interval(1, 10)
    assert 0 < lo < 0.1 < hi < 1 and (0.1 - lo) < (hi - 0.1)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(21, 20)


def test_bootstrap_over_tasks_is_seeded_and_brackets_the_mean() -> None:
    per_task = [(7 * i % 11) / 10 for i in range(40)]  # 0.0 .. 1.0, mean 0.5
    a, b = bootstrap_interval(per_task, seed=0), bootstrap_interval(per_task, seed=0)
    assert a == b and a != bootstrap_interval(per_task, seed=1, resamples=500)
    assert a[0] < sum(per_task) / 40 < a[1]
    assert bootstrap_interval([0.0] * 10) == (0.0, 0.0)  # why it is not the reported interval
    assert all(math.isnan(x) for x in bootstrap_interval([]))


def test_evaluate_reports_wilson_over_queries_or_over_tasks() -> None:
    (lo, hi), method = accuracy_interval([0.0] * 20, n_queries=20)  # one query per task
    assert method == "wilson" and (lo, hi) == wilson_interval(0, 20)
    (lo, hi), method = accuracy_interval([0.5, 1.0, 0.5, 0.0], n_queries=8)  # two per task
    assert method == "wilson-tasks" and (lo, hi) == wilson_interval(2.0, 4)
    # conservative: wider than counting the 8 queries as independent trials
    q_lo, q_hi = wilson_interval(4, 8)
    assert lo < q_lo and hi > q_hi


def test_report_prints_the_asymmetric_interval() -> None:
    assert format_accuracy(0.0, wilson_interval(0, 20)) == "0.0 (0.0–16.1)"
    assert format_accuracy(1.0, [0.8389, 1.0]) == "100.0 (83.9–100.0)"
    assert format_accuracy(0.5, 0.1) == "50.0 ± 10.0"  # a result written by an older version
    assert format_accuracy(0.5, None) == "50.0"
