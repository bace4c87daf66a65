"""Honest evaluation splits: a benchmark file's fixed train / val / test parts shared by training
and ``evaluate``, the refusal to score tasks a run meta-trained on, the val streams of the
sampled sources, the run's ``eval`` defaults, and no task induction on the VQA sets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from metamapper import cli
from metamapper.config import Config, DataConfig, config_from_dict
from metamapper.data.benchmarks import SPLIT_SEED, load_benchmark, split_tasks
from metamapper.data.fashion import find_fashion_root
from metamapper.data.sources import check_task_induction, evaluation_tasks, training_tasks
from metamapper.data.tasks import VAL_SEED_OFFSET
from metamapper.eval import run as eval_run

WORDS = ["dax", "blicket"]


def write_benchmark(folder: Path, n: int, *, name: str = "open_ended_mi", ways: int = 2,
                    shots: int = 1) -> Path:
    """A Frozen-format JSON of ``n`` tasks with tiny solid-colour images beside it."""
    records = []
    for q in range(1, n + 1):
        stem = f"{name}_shots_{shots}_ways_{ways}_id_{q:04d}"
        rec = {"question_id": f"{q:04d}", "question": "This is a", "answer": WORDS[q % 2],
               "question_image": f"{stem}_question.jpg"}
        for i in range(ways * shots):
            rec[f"caption_{i + 1}"] = f"This is a {WORDS[i % ways]}"
            rec[f"image_{i + 1}"] = f"{stem}_image_{i + 1}.jpg"
        for key, value in rec.items():
            if "image" in key:
                Image.new("RGB", (8, 6), (q * 7 % 255, 0, 0)).save(folder / value)
        records.append(rec)
    path = folder / f"{name}_shots_{shots}_ways_{ways}_all_questions.json"
    path.write_text(json.dumps(records))
    return folder


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return write_benchmark(tmp_path, 20)


def in_domain_run(root: Path, **data: object) -> Config:
    """The config of a run meta-trained in-domain on ``root`` (8 tasks drawn, train.seed 3)."""
    return config_from_dict({"data": {"source": "frozen-benchmark", "root": str(root),
                                      "benchmark": "open_ended_mi", **data},
                             "train": {"updates": 2, "meta_batch": 4, "seed": 3}})


def ids(ts) -> list[str]:
    return [t.task_id for t in ts.tasks]


def test_benchmark_parts_are_fixed_disjoint_and_complete(bench: Path) -> None:
    parts = {s: ids(evaluation_tasks("open_ended_mi", data=str(bench), ways=2, shots=1, n_tasks=0,
                                     split=s)) for s in ("train", "val", "test", "all")}
    assert [len(parts[s]) for s in ("train", "val", "test", "all")] == [14, 2, 4, 20]
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(parts["all"])
    want = split_tasks(load_benchmark(bench, "open_ended_mi", 2, 1), seed=SPLIT_SEED)
    assert parts["test"] == [t.task_id for t in want["test"]]
    # the default is the test part, and --tasks takes its first tasks (no longer the file's)
    first = evaluation_tasks("open_ended_mi", data=str(bench), ways=2, shots=1, n_tasks=3)
    assert ids(first) == parts["test"][:3] and ids(first) != parts["all"][:3]
    with pytest.raises(ValueError, match="split must be one of"):
        evaluation_tasks("open_ended_mi", data=str(bench), ways=2, shots=1, n_tasks=0, split="dev")


@pytest.mark.parametrize("seed", [0, 7])
def test_in_domain_training_uses_the_same_parts_whatever_its_seed(bench: Path, seed: int) -> None:
    d = DataConfig(source="frozen-benchmark", root=str(bench), benchmark="open_ended_mi")
    train, val = training_tasks(d, n_tasks=40, seed=seed)
    test = evaluation_tasks("open_ended_mi", data=str(bench), ways=2, shots=1, n_tasks=0)
    val_part = evaluation_tasks("open_ended_mi", data=str(bench), ways=2, shots=1, n_tasks=0, split="val")
    assert set(ids(train)) <= set(ids(evaluation_tasks(
        "open_ended_mi", data=str(bench), ways=2, shots=1, n_tasks=0, split="train")))
    assert not set(ids(train)) & set(ids(test)) and ids(val) == ids(val_part)


def test_scoring_training_tasks_is_refused_unless_all(bench: Path) -> None:
    cfg = in_domain_run(bench)
    drawn = {t.task_id for t in training_tasks(cfg.data, 8, 3)[0].tasks}  # what the run trained on

    def check(split: str) -> int:
        ts = evaluation_tasks("open_ended_mi", data=str(bench), ways=2, shots=1, n_tasks=0, split=split)
        return eval_run.check_trained_tasks(cfg, "open_ended_mi", ts, split=split, data=str(bench))

    assert check("test") == 0 and check("val") == 0
    with pytest.raises(ValueError, match=rf"^{len(drawn)} of the 14 train tasks of open_ended_mi are "
                                         "tasks this run meta-trained on"):
        check("train")
    assert check("all") == len(drawn) > 0  # asked for knowingly: allowed, and counted
    # a run trained on another file, on another benchmark, or cross-domain never overlaps
    ts = evaluation_tasks("open_ended_mi", data=str(bench), ways=2, shots=1, n_tasks=0, split="train")
    for other in (in_domain_run(bench, shots=5), in_domain_run(bench, benchmark="real_name_mi"),
                  replace(cfg, data=DataConfig(source="synthetic"))):
        assert eval_run.check_trained_tasks(other, "open_ended_mi", ts, split="train", data=str(bench)) == 0


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_evaluate_refuses_training_tasks_before_loading_the_model(
        bench: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(eval_run, "read_run_config", lambda path, **k: (object(), in_domain_run(bench)))
    monkeypatch.setattr("metamapper.loading.load_run", lambda *a, **k: pytest.fail("loaded"))
    code, err = run_cli(["evaluate", "--checkpoint", "runs/x", "--dataset", "open_ended_mi",
                         "--data", str(bench), "--split", "train"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("metamapper: error: ") and "meta-trained on" in err and "--split all" in err


def test_evaluate_takes_its_defaults_from_the_runs_eval_section(
        bench: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    cfg = config_from_dict({"eval": {"tasks": 3, "max_new_tokens": 5, "batch_tasks": 2}})
    seen = {}

    def fake_evaluate_run(run, taskset, **kw):
        seen.update(n=len(taskset.tasks), kw=kw)
        return {"method": "maml", "accuracy": 0.0, "ci95": [0.0, 0.5], "n_tasks": len(taskset.tasks),
                "dataset": taskset.dataset, "split": taskset.split, "seed": taskset.seed}  # as evaluate_run records them

    ckpt, loaded = object(), []  # the checkpoint read once, then loaded as it was read

    def fake_load_run(source, **kw):
        loaded.append((source, kw["checkpoint"]))
        return object()

    monkeypatch.setattr(eval_run, "read_run_config", lambda path, **k: (ckpt, cfg))
    monkeypatch.setattr("metamapper.loading.load_run", fake_load_run)
    monkeypatch.setattr(eval_run, "evaluate_run", fake_evaluate_run)
    out = tmp_path / "res.json"
    code, _ = run_cli(["evaluate", "--checkpoint", "runs/x", "--dataset", "open_ended_mi",
                       "--data", str(bench), "--split", "val", "--out", str(out)], capsys)
    assert code == 0 and seen["n"] == 2  # eval.tasks=3, but the val part holds 2
    assert loaded == [("runs/x", ckpt)]
    res = json.loads(out.read_text())
    assert (res["split"], res["trained_overlap"], res["dataset"]) == ("val", 0, "open_ended_mi")
    run_cli(["evaluate", "--checkpoint", "runs/x", "--dataset", "synthetic"], capsys)
    assert seen["n"] == 3  # the run's eval.tasks
    # batch_tasks / max_new_tokens: evaluate_run reads them from the run's config when not given
    assert "batch_tasks" not in seen["kw"] and "max_new_tokens" not in seen["kw"]


def test_sampled_sources_have_a_val_stream_and_refuse_file_parts() -> None:
    test = evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=30)
    val = evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=30, split="val")
    assert all(t.task_id.startswith("synthetic-test-") for t in test.tasks)
    assert all(t.task_id.startswith(f"synthetic-val-{1234 + VAL_SEED_OFFSET}-") for t in val.tasks)
    content = lambda t: (t.support, t.queries)  # noqa: E731
    assert not {content(t) for t in test.tasks} & {content(t) for t in val.tasks}
    for split in ("train", "all"):
        with pytest.raises(ValueError, match="test and a val stream"):
            evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=3, split=split)


@pytest.mark.skipif(find_fashion_root() is None, reason="Fashion-MNIST is not here (apt-get "
                    "install dataset-fashion-mnist, or metamapper download fashion-mnist)")
def test_fashion_val_stream_is_held_out_classes_with_its_own_seed() -> None:
    kw = dict(data=None, ways=2, shots=1, n_tasks=200)
    test = evaluation_tasks("fashion-open-ended", **kw)
    val = evaluation_tasks("fashion-open-ended", split="val", **kw)
    assert all(t.task_id.startswith("fashion-val-") for t in val.tasks)
    assert not set(ids(test)) & set(ids(val))
    assert not {(t.support, t.queries) for t in test.tasks} & {(t.support, t.queries) for t in val.tasks}
    held_out = {"shirt", "sneaker", "bag", "ankle boot"}
    real = evaluation_tasks("fashion-real-name", split="val", **kw)
    assert {w for t in real.tasks for w in t.words} <= held_out
    assert ids(evaluation_tasks("fashion-open-ended", **kw)) == ids(test)  # fixed test seed
    with pytest.raises(ValueError, match="test and a val stream"):
        evaluation_tasks("fashion-open-ended", split="train", **kw)


def test_task_induction_is_refused_on_the_vqa_sets(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    for name in ("open_ended_mi", "real_name_mi", "synthetic", "fashion-open-ended"):
        check_task_induction(name)
    for name in ("fast_vqa", "guided_vqa"):
        with pytest.raises(ValueError, match=f"task induction is not defined for {name}"):
            check_task_induction(name)
    # the command refuses it first, in one line (the run is not even read)
    code, err = run_cli(["evaluate", "--checkpoint", str(tmp_path / "none"), "--dataset", "fast_vqa",
                         "--data", str(tmp_path), "--task-induction"], capsys)
    assert code == 2 and err.count("\n") == 1 and "task induction is not defined for fast_vqa" in err
