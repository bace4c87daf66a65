"""Meta-test: answer normalisation, exact match, CIs, evaluate() on synthetic tasks, reports."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metamapper.config import Config, load_config
from metamapper.data.sources import evaluation_tasks
from metamapper.data.synthetic import build_synthetic_tasks
from metamapper.eval.fewshot import answer_episodes, evaluate, support_fit_episode
from metamapper.eval.metrics import accuracy_interval, exact_match, normalize_answer
from metamapper.eval.report import (
    load_results,
    plot_accuracy_vs_shots,
    plot_training_curves,
    result_name,
    results_table,
    write_results,
)
from metamapper.meta.episode import Episode, episode_from_task
from metamapper.meta.maml import InnerLoop
from metamapper.methods import OLD_SPELLINGS, get_method, method_names
from metamapper.models.metamapper import MetaMapper
from metamapper.registry import METHODS, UnknownNameError

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def model(lively_dirs: dict[str, Path]) -> MetaMapper:
    """The smoke model (random mapper, dropout 0.1, 16-d features) on a tiny LM whose answers
    depend on its input: the smoke config's own tiny LM answers "a a a a" to everything, so
    comparisons of its answers could not fail."""
    from metamapper.models.factory import build_model

    cfg = load_config(SMOKE, ["backbones.lm=hf", f"backbones.lm_path={lively_dirs['lm']}"])
    assert cfg.mapper.dropout > 0  # so that answering in training mode would show
    torch.manual_seed(0)
    return build_model(cfg.backbones, cfg.mapper, with_vision=False, visual_dim=16)


@pytest.fixture(autouse=True)
def _eval_mode(model: MetaMapper) -> Iterator[None]:
    """Each test starts with the shared model in eval mode (dropout off) and leaves it so."""
    model.eval()
    yield
    model.eval()


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
    """One registry, one spelling: the three built-in methods, each under its own name."""
    assert METHODS.names() == method_names() == ["in_context", "maml", "standard"]
    assert all(get_method(n).name == n for n in method_names())
    assert [get_method(n).adapts for n in method_names()] == [True, True, False]
    assert (get_method("maml").default_steps, get_method("in_context").default_steps) == (5, 0)
    assert get_method("maml").support_fit and not get_method("in_context").support_fit
    assert get_method("in_context").queries_per_row and not get_method("maml").queries_per_row
    with pytest.raises(UnknownNameError, match="unknown method 'zero-shot'; registered: in_context, maml, standard"):
        get_method("zero-shot")
    with pytest.raises(UnknownNameError, match="unknown method"):
        get_method("in_context_maml")  # neither today's spelling nor an old one


@pytest.mark.parametrize(("old", "new", "note"), [
    ("in-context", "in_context", "now spelled in_context"),
    ("in-context-maml", "in_context", "now spelled in_context with --steps"),
    ("no-adapt", "standard", r"now spelled standard \(the query alone, no adaptation\)"),
])
def test_old_spellings_are_accepted_with_a_warning(old: str, new: str, note: str) -> None:
    assert OLD_SPELLINGS[old][0] == new and old not in METHODS
    with pytest.warns(FutureWarning, match=f"method '{old}' is {note}"):
        assert get_method(old) is get_method(new)
    with warnings.catch_warnings():  # today's spelling: no warning
        warnings.simplefilter("error")
        get_method(new)


def trained(method: str, steps: int) -> Config:
    """The config of a run trained with ``method`` and ``steps`` inner steps."""
    return load_config(SMOKE, [f"train.method={method}", f"train.inner.steps={steps}"])


# (method, explicit steps, (the run's train.method, its inner steps) or None) -> steps
STEP_CASES = {
    ("maml", None, None): 5,  # the method's own default, the paper's 5
    ("maml", None, ("maml", 3)): 3,  # a run trained with maml adapts as many steps as it trained with
    ("maml", None, ("maml", 0)): 0,
    ("maml", None, ("in_context", 3)): 5,  # trained with another method: the method's default
    ("maml", None, ("standard", 3)): 5,
    ("maml", 2, ("maml", 3)): 2,  # explicit steps win
    ("maml", 0, ("maml", 3)): 0,
    ("maml", 7, None): 7,
    ("in_context", None, None): 0,
    ("in_context", None, ("in_context", 4)): 4,  # what in-context-maml was
    ("in_context", None, ("in_context", 0)): 0,
    ("in_context", None, ("maml", 4)): 0,
    ("in_context", 2, ("in_context", 0)): 2,
    ("in_context", 0, ("in_context", 4)): 0,
    ("standard", None, None): 0,  # never adapts
    ("standard", None, ("standard", 5)): 0,
    ("standard", None, ("maml", 5)): 0,
    ("standard", 0, ("maml", 5)): 0,
}


def test_one_rule_for_adaptation_steps() -> None:
    got = {(m, s, t): get_method(m).steps(s, trained(*t) if t else None) for m, s, t in STEP_CASES}
    assert got == STEP_CASES


@pytest.mark.parametrize(("method", "steps", "run", "error"), [
    ("standard", 2, None, r"method standard takes no adaptation steps \(got 2\)"),
    ("standard", 1, ("standard", 5), "method standard takes no adaptation steps"),
    ("maml", -1, None, "adaptation steps must be >= 0, got -1"),
    ("in_context", -1, ("in_context", 2), ">= 0"),
    ("standard", -1, None, ">= 0"),
])
def test_adaptation_steps_a_method_cannot_take_are_refused(method: str, steps: int,
                                                           run: tuple[str, int] | None, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        get_method(method).steps(steps, trained(*run) if run else None)


def test_a_method_trains_only_a_config_of_its_own(tmp_path: Path) -> None:
    """The recipe of ``train.method`` trains a run; another method refuses before writing."""
    with pytest.raises(ValueError, match="method maml cannot train a config of train.method=in_context"):
        get_method("maml").train(trained("in_context", 0), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_steps_for_a_method_that_never_adapts(model: MetaMapper, tasks) -> None:
    with pytest.raises(ValueError, match=r"method standard takes no adaptation steps \(got 1\)"):
        evaluate(model, tasks, Features(), method=get_method("standard"), loop=InnerLoop(steps=1),
                 progress=False)


def answers_of(model: MetaMapper, eps: list[Episode], method: str, loop: InnerLoop) -> list[list[str]]:
    return answer_episodes(model, eps, method=get_method(method), loop=loop, max_new_tokens=4)[0]


def test_the_models_answers_depend_on_the_input(model: MetaMapper, tasks) -> None:
    """Guards the tests below: answers that never change would make their comparisons vacuous."""
    eps = [episode_from_task(t, Features()) for t in tasks]
    for method in method_names():
        answers = [a for ep in answers_of(model, eps, method, InnerLoop(steps=0)) for a in ep]
        assert len(set(answers)) >= 3, (method, answers)


class ScriptedLM:
    """Stands in for ``model.generate``: runs the real generation (so the prompts are built and
    checked as usual) but returns ``outputs`` in order, one per prompt row."""

    def __init__(self, model: MetaMapper, outputs: list[str]) -> None:
        self.generate, self.outputs, self.calls = model.generate, list(outputs), []

    def __call__(self, features, rows, *args, **kwargs) -> list[str]:
        assert len(self.generate(features, rows, *args, **kwargs)) == len(rows)
        self.calls.append(len(rows))
        out, self.outputs = self.outputs[: len(rows)], self.outputs[len(rows) :]
        return out


@pytest.mark.parametrize("method", ["maml", "standard", "in_context"])
def test_evaluate_scores_each_query_against_its_own_answer(model: MetaMapper, tasks, method: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Known accuracy: the LM's answer to query q of task t is right (written as the LM might:
    capitals, article, period, more text after a newline) when ``(t + q) % 3 == 0`` or q == 0 for
    even t, and otherwise wrong (the task's other word, or a near miss: the answer plus "s");
    with maml, its answer to support image i (support fit) is right for i == 0 only."""
    eps = [episode_from_task(t, Features()) for t in tasks]
    right = [[(t + q) % 3 == 0 or (q == 0 and t % 2 == 0) for q in range(ep.n_query)]
             for t, ep in enumerate(eps)]
    outputs = []
    for t, (ep, task) in enumerate(zip(eps, tasks, strict=True)):
        for q, answer in enumerate(ep.answers):
            wrong = next(w for w in task.words if w != answer) if t % 2 else f"{answer}s"
            outputs.append(f" The {answer.title()}.\nThis is" if right[t][q] else f" {wrong}")
    fit = method == "maml"
    if fit:  # one batch: the queries' prompts, then the support images' prompts
        outputs += [f" {c.split()[-1]}" if i == 0 else " nothing" for ep in eps
                    for i, c in enumerate(ep.captions)]
    lm = ScriptedLM(model, outputs)
    monkeypatch.setattr(model, "generate", lm)
    model.train()
    res = evaluate(model, tasks, Features(), method=get_method(method),
                   loop=InnerLoop(steps=1) if method == "maml" else None, progress=False, max_new_tokens=3, support_fit=fit, batch_tasks=len(tasks),
                   samples=True)
    assert model.training  # the mode is restored
    assert lm.outputs == [] and lm.calls == [2 * len(tasks)] + ([2 * len(tasks)] if fit else [])
    per_task = [sum(r) / len(r) for r in right]
    assert res.accuracy == pytest.approx(sum(per_task) / len(per_task))
    assert tuple(res.ci95) == tuple(accuracy_interval(per_task, 2 * len(tasks))[0])
    assert 0 < res.accuracy < 1
    assert res.n_tasks == len(tasks) and res.n_queries == 2 * len(tasks)
    assert res.steps == (1 if method == "maml" else 0) and res.method == method
    assert res.support_fit == (0.5 if fit else None)
    assert [e["answer"] for e in res.examples] == [ep.answers[0] for ep in eps]
    assert [e["prediction"] for e in res.examples] == [outputs[2 * t] for t in range(len(tasks))]
    saved = json.loads(json.dumps(res.to_dict()))  # the results file holds what evaluate measured
    assert saved["accuracy"] == res.accuracy and saved["ci95"] == list(res.ci95)
    assert saved["examples"] == res.examples and saved["n_queries"] == res.n_queries
    # one sample per query, in task order: what was asked, answered and expected, and the score
    assert "samples" not in saved and res.samples is not None
    assert [(s["task_index"], s["query_index"]) for s in res.samples] == [
        (t, q) for t, ep in enumerate(eps) for q in range(ep.n_query)]
    for s in res.samples:
        t, q = s["task_index"], s["query_index"]
        assert s["task_id"] == tasks[t].task_id and s["support_captions"] == eps[t].captions
        assert (s["question"], s["target"]) == (eps[t].questions[q], eps[t].answers[q])
        assert s["prediction"] == outputs[2 * t + q] and s["correct"] == right[t][q]
    lo, hi = res.ci95  # two queries per task: Wilson over the tasks, and the bootstrap beside it
    assert res.ci_method == "wilson-tasks" and lo <= res.accuracy <= hi
    assert res.ci95_bootstrap is not None


@pytest.mark.parametrize("method", ["maml", "in_context"])
def test_evaluate_answers_with_dropout_off(model: MetaMapper, tasks, method: str) -> None:
    """Lesson 6: a model left in training mode (mapper dropout 0.1) answers as in eval mode."""
    feats = Features()
    kw = dict(method=get_method(method), loop=InnerLoop(steps=2, lr=0.5), progress=False,
              n_examples=100, max_new_tokens=4)
    want = evaluate(model, tasks, feats, **kw).to_dict()
    for _ in range(2):
        model.train()
        assert evaluate(model, tasks, feats, **kw).to_dict() == want


@pytest.mark.parametrize("method", ["maml", "in_context"])
def test_batch_tasks_do_not_change_predictions(model: MetaMapper, tasks, method: str) -> None:
    feats = Features()
    loop = InnerLoop(steps=2, lr=0.5)
    kw = dict(method=get_method(method), loop=loop, progress=False, n_examples=100, max_new_tokens=4)
    one = evaluate(model, tasks, feats, batch_tasks=1, **kw)
    many = evaluate(model, tasks, feats, batch_tasks=32, **kw)
    assert one.to_dict() == many.to_dict()
    # every query's prediction, not only the scored summary
    eps = [episode_from_task(t, feats) for t in tasks]
    together = answers_of(model, eps, method, loop)
    alone = [answers_of(model, [ep], method, loop)[0] for ep in eps]
    assert together == alone
    assert [len(a) for a in together] == [ep.n_query for ep in eps]
    assert len({a for ep in together for a in ep}) > 1  # not one answer for everything


def test_samples_leave_the_result_as_it_is(model: MetaMapper, tasks) -> None:
    """Per-query samples come from the answers already generated: the same result, and each
    sample holds its query's prediction, over several batches."""
    feats = Features()
    kw = dict(method=get_method("maml"), loop=InnerLoop(steps=2, lr=0.5), progress=False,
              n_examples=100, max_new_tokens=4, batch_tasks=2)
    plain = evaluate(model, tasks, feats, **kw)
    logged = evaluate(model, tasks, feats, samples=True, **kw)
    assert plain.samples is None and logged.to_dict() == plain.to_dict()
    eps = [episode_from_task(t, feats) for t in tasks]
    want = [a for ep in answers_of(model, eps, "maml", InnerLoop(steps=2, lr=0.5)) for a in ep]
    assert logged.samples is not None and [s["prediction"] for s in logged.samples] == want
    assert [s["correct"] for s in logged.samples] == [exact_match(s["prediction"], s["target"])
                                                      for s in logged.samples]


def test_adaptation_steps_change_the_maml_answers(model: MetaMapper, tasks) -> None:
    feats = Features()
    eps = [episode_from_task(t, feats) for t in tasks]
    maml = get_method("maml")
    a0, p0 = answer_episodes(model, eps, method=maml, loop=InnerLoop(steps=0), max_new_tokens=4)
    a2, p2 = answer_episodes(model, eps, method=maml, loop=InnerLoop(steps=2, lr=0.5), max_new_tokens=4)
    assert p0 == [{} for _ in eps]
    assert not torch.allclose(p2[0]["prefix"], model.mapper.prefix)
    assert not p2[0]["prefix"].requires_grad
    assert a2 != a0  # the adapted parameters answer
    assert answers_of(model, eps, "maml", InnerLoop(steps=0)) == a0  # the model is untouched
    assert answers_of(model, eps, "standard", InnerLoop(steps=0)) == a0  # the same prompt, unadapted


def test_the_question_and_the_support_reach_the_lm(model: MetaMapper, tasks) -> None:
    """Lesson 1: the question text is part of the prompt of every method; the support captions
    are in context for in_context answers, and are not seen by maml / standard answers without
    steps."""
    eps = [episode_from_task(t, Features()) for t in tasks]
    asked = [dataclasses.replace(ep, questions=["What colour is it?"] * ep.n_query) for ep in eps]
    renamed = [dataclasses.replace(ep, captions=[c.replace("This is a", "Look, a") for c in ep.captions])
               for ep in eps]
    still = InnerLoop(steps=0)
    for method in method_names():
        base = answers_of(model, eps, method, still)
        assert answers_of(model, asked, method, still) != base, method
    assert answers_of(model, renamed, "in_context", still) != answers_of(model, eps, "in_context", still)
    for method in ("maml", "standard"):
        assert answers_of(model, renamed, method, still) == answers_of(model, eps, method, still), method


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
    {"method": "in_context", "label": "frozen", "dataset": "fashion", "split": "val", "ways": 2,
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


def test_results_compared_side_by_side(tmp_path: Path) -> None:
    """``metamapper report``'s table: a result per row, named by its label, else its run and
    step; files of one result or of a list (the demo's), old rows without the new fields too."""
    new = {**ROWS[0], "method": "standard", "split": "val", "source": "runs/a",
           "checkpoint": {"run": "/abs/runs/a", "step": 40, "sha256": "0" * 64}}
    (tmp_path / "one.json").write_text(json.dumps(new))
    write_results(ROWS[2:], tmp_path / "list.json")
    rows = load_results([tmp_path / "one.json", tmp_path / "list.json"])
    assert [result_name(r) for r in rows] == ["runs/a@40", "frozen", None]
    assert result_name({"checkpoint": {"run": "/abs/runs/b", "step": None}}) == "b"
    table = results_table(rows, compare=True).splitlines()
    assert table[0] == ("| result | dataset | split | ways | shots | method | accuracy % (95% CI) "
                        "| tasks |")
    assert table[2] == "| runs/a@40 | synthetic | val | 2 | 1 | standard | 50.0 (30.0–70.0) | 10 |"
    assert table[3] == "| frozen | fashion | val | 2 | 1 | in_context | 0.0 (0.0–16.1) | 20 |"
    assert table[4] == "| — | synthetic | — | 2 | 1 | maml | 50.0 ± 10.0 | 10 |"
    (tmp_path / "bad.json").write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(ValueError, match="bad.json is not a results file"):
        load_results([tmp_path / "bad.json"])


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
