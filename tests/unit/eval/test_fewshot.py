"""Meta-test: answer normalisation, exact match, CIs, evaluate() on synthetic tasks, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metamapper.data.sources import evaluation_tasks
from metamapper.data.synthetic import build_synthetic_tasks
from metamapper.eval.fewshot import (
    METHODS,
    adaptation_steps,
    answer_episodes,
    evaluate,
    get_method,
    support_fit_episode,
)
from metamapper.eval.metrics import exact_match, normalize_answer
from metamapper.eval.report import (
    plot_accuracy_vs_shots,
    plot_training_curves,
    results_table,
    write_results,
)
from metamapper.meta.episode import Episode, episode_from_task
from metamapper.meta.maml import InnerLoop
from metamapper.models.metamapper import MetaMapper

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(smoke_model: MetaMapper) -> MetaMapper:
    return smoke_model


@pytest.fixture(scope="module")
def tasks():
    return build_synthetic_tasks(split="test", ways=2, shots=1, n_tasks=5, seed=3).tasks


class Features:
    """Deterministic fake features per image key (as a feature table would give)."""

    def __init__(self) -> None:
        self.table: dict[str, torch.Tensor] = {}

    def __call__(self, keys: list[str]) -> torch.Tensor:
        for k in keys:
            if k not in self.table:
                g = torch.Generator().manual_seed(sum(map(ord, k)) * 7919 + len(self.table))
                self.table[k] = torch.randn(1, 16, generator=g)
        return torch.stack([self.table[k] for k in keys])


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Blicket.", "blicket"),
        (" The Blicket.\nThis is a dax.", "blicket"),
        ("dax\nblicket", "dax"),
        ("an ankle boot!", "ankle boot"),
        ("  A   red, circle ", "red circle"),
        ("theory", "theory"),  # articles only as whole words
        ("", ""),
        (".", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "answer", "hit"),
    [
        (" blicket.", "blicket", True),
        ("The Blicket.", "blicket", True),
        ("blicket is", "blicket", False),
        ("dax", "blicket", False),
        ("\nblicket", "blicket", False),  # cut at the first newline
        ("", "", False),  # an empty answer never matches
        ("the", "a", False),
        ("anything", "", False),
    ],
)
def test_exact_match(prediction: str, answer: str, hit: bool) -> None:
    assert exact_match(prediction, answer) is hit


# ----------------------------------------------------------------------------- evaluate


def test_methods() -> None:
    assert set(METHODS) == {"maml", "no-adapt", "in-context", "in-context-maml"}
    with pytest.raises(ValueError, match="unknown method"):
        get_method("zero-shot")


def test_one_rule_for_adaptation_steps() -> None:
    # (method, --steps, trained steps) -> steps
    cases = {("maml", None, 0): 5, ("maml", None, 3): 3, ("maml", 2, 3): 2, ("maml", 0, 3): 0,
             ("in-context", None, 4): 0, ("in-context", 2, 0): 2, ("in-context-maml", None, 4): 4,
             ("in-context-maml", None, 0): 5, ("no-adapt", None, 5): 0, ("no-adapt", 0, 5): 0}
    assert {k: adaptation_steps(*k) for k in cases} == cases
    with pytest.raises(ValueError, match="no-adapt takes no adaptation steps"):
        adaptation_steps("no-adapt", 2, 0)
    with pytest.raises(ValueError, match=">= 0"):
        adaptation_steps("maml", -1, 0)


@pytest.mark.parametrize("method", ["maml", "no-adapt", "in-context"])
def test_evaluate_on_synthetic_tasks(model: MetaMapper, tasks, method: str) -> None:
    model.train()
    res = evaluate(model, tasks, Features(), method=method, steps=1 if method == "maml" else None,
                   progress=False, max_new_tokens=3)
    assert model.training  # the mode is restored
    assert 0.0 <= res.accuracy <= 1.0
    assert res.n_tasks == len(tasks) and res.n_queries == 2 * len(tasks)
    assert res.steps == (1 if method == "maml" else 0)
    assert res.method == method and res.support_fit is None
    assert len(res.examples) == 5 and all(isinstance(e["prediction"], str) for e in res.examples)
    assert {e["answer"] for e in res.examples} <= {w for t in tasks for w in t.words}
    assert json.loads(json.dumps(res.to_dict()))["n_tasks"] == len(tasks)
    lo, hi = res.ci95  # two queries per task: Wilson over the tasks, and the bootstrap beside it
    assert res.ci_method == "wilson-tasks" and lo <= res.accuracy <= hi
    assert res.ci95_bootstrap is not None


@pytest.mark.parametrize("method", ["maml", "in-context"])
def test_batch_tasks_do_not_change_predictions(model: MetaMapper, tasks, method: str) -> None:
    feats = Features()
    kw = dict(method=method, steps=2, loop=InnerLoop(lr=0.5), progress=False, n_examples=100,
              max_new_tokens=4)
    one = evaluate(model, tasks, feats, batch_tasks=1, **kw)
    many = evaluate(model, tasks, feats, batch_tasks=32, **kw)
    assert one.to_dict() == many.to_dict()
    # every query's prediction, not only the scored summary
    eps = [episode_from_task(t, feats) for t in tasks]
    fmt = METHODS[method].query_format
    loop = InnerLoop(steps=METHODS[method].default_steps or 2, lr=0.5)
    together, _ = answer_episodes(model, eps, query_format=fmt, loop=loop, max_new_tokens=4)
    alone = [answer_episodes(model, [ep], query_format=fmt, loop=loop, max_new_tokens=4)[0][0]
             for ep in eps]
    assert together == alone
    assert [len(a) for a in together] == [ep.n_query for ep in eps]


def test_adaptation_steps_change_the_maml_answers(model: MetaMapper, tasks) -> None:
    feats = Features()
    eps = [episode_from_task(t, feats) for t in tasks]
    _, p0 = answer_episodes(model, eps, query_format="prefix", loop=InnerLoop(steps=0))
    _, p2 = answer_episodes(model, eps, query_format="prefix", loop=InnerLoop(steps=2, lr=0.5))
    assert p0 == [{} for _ in eps]
    assert not torch.allclose(p2[0]["prefix"], model.mapper.prefix)
    assert not p2[0]["prefix"].requires_grad


def test_support_fit_is_computed_for_maml(model: MetaMapper, tasks) -> None:
    res = evaluate(model, tasks, Features(), method="maml", steps=1, support_fit=True, progress=False,
                   max_new_tokens=3)
    assert res.support_fit is not None and 0.0 <= res.support_fit <= 1.0


def test_support_fit_episode_asks_for_the_support_words() -> None:
    ep = Episode(features=torch.arange(4.0).reshape(4, 1, 1), captions=["This is a dax.", "This is a blicket."],
                 questions=["This is a", "This is a"], answers=["blicket", "dax"])
    fit = support_fit_episode(ep)
    assert fit.answers == ["dax", "blicket"]
    assert fit.questions == ["This is a", "This is a"]
    assert fit.features.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]  # support images as queries


def test_evaluation_tasks_refuse_bad_settings() -> None:
    with pytest.raises(ValueError, match="ways"):
        evaluation_tasks("synthetic", data=None, ways=1, shots=1, n_tasks=3)
    with pytest.raises(ValueError, match="shots"):
        evaluation_tasks("synthetic", data=None, ways=2, shots=0, n_tasks=3)
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluation_tasks("imagenet", data=None, ways=2, shots=1, n_tasks=3)
    ts = evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=3)
    assert len(ts.tasks) == 3 and all(t.ways == 2 and t.shots == 1 for t in ts.tasks)


# ----------------------------------------------------------------------------- reports


ROWS = [
    {"method": "maml", "dataset": "synthetic", "ways": 2, "shots": 1, "accuracy": 0.5,
     "ci95": [0.3, 0.7], "n_tasks": 10, "accuracy_0_steps": 0.25},
    {"method": "maml", "dataset": "synthetic", "ways": 2, "shots": 5, "accuracy": 0.75,
     "ci95": [float("nan"), float("nan")], "n_tasks": 10},
    {"method": "in-context", "label": "frozen", "dataset": "fashion", "split": "val", "ways": 2,
     "shots": 1, "accuracy": 0.0, "ci95": [0.0, 0.1611], "n_tasks": 20},
    {"method": "maml", "dataset": "synthetic", "ways": 2, "shots": 1, "accuracy": 0.5, "ci95": 0.1,
     "n_tasks": 10},  # a row written before intervals were asymmetric: a half-width
]


def test_results_table() -> None:
    table = results_table(ROWS).splitlines()
    assert len(table) == 2 + len(ROWS)
    assert table[0].startswith("| method | dataset | ways | shots | accuracy % (95% CI) |")
    assert table[2] == "| maml | synthetic | 2 | 1 | 50.0 (30.0–70.0) | 25.0 | 10 |"
    assert table[3] == "| maml | synthetic | 2 | 5 | 75.0 | — | 10 |"
    assert table[4] == "| frozen | fashion (val) | 2 | 1 | 0.0 (0.0–16.1) | — | 20 |"
    assert table[5] == "| maml | synthetic | 2 | 1 | 50.0 ± 10.0 | — | 10 |"


def test_results_and_plots_are_written(tmp_path: Path) -> None:
    write_results(ROWS[:1], tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())[0]["accuracy"] == 0.5
    png = plot_accuracy_vs_shots(ROWS, tmp_path / "shots.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "val_accuracy": 0.5}]) + "\n")
    curves = plot_training_curves(metrics, tmp_path / "curves.png")
    assert curves.stat().st_size > 1000
