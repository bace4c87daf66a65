"""``metamapper study`` on tiny random backbones and the real Fashion-MNIST split: the orchestration
(trainings per seed, rows scored once, the report rewritten with every claim), not the accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import metamapper.eval.run
import metamapper.study as study
from metamapper.cli import main
from metamapper.config import Config, config_from_dict, dump_config, load_config
from metamapper.data.fashion import find_fashion_root
from metamapper.registry import Method

TINY = ("backbones.vision=tiny-clip", "backbones.vision_mode=pooled", "backbones.lm=tiny-lm",
        "mapper.prefix_len=2", "mapper.num_heads=4", "mapper.ff_dim=64", "data.images_per_class=8",
        "train.updates=2", "train.meta_batch=2", "train.val_every=0")


def test_trainings_are_at_the_fashion_recipes_compute() -> None:
    specs = study.trainings()
    fashion = Path(__file__).resolve().parents[2] / "configs" / "fashion.yaml"
    assert study.training_changes(load_config(fashion), specs["fashion"].config()) == []
    std = specs["non-episodic"].config()
    # 150 updates, each on the (image, caption) pairs of 32 tasks of 2 ways x (1 shot + 2 queries)
    assert (std.train.method, std.train.updates, std.train.meta_batch) == ("standard", 150, 32 * 6)
    maml = specs["maml"].config()
    assert (maml.train.method, maml.train.updates * maml.train.meta_batch) == ("maml", 150 * 32)
    assert specs["mlp"].config().mapper.kind == "mlp"
    assert {c.config().data.source for n, c in specs.items() if not n.startswith("broad")} == {"fashion-mnist"}
    # the study's overrides come after a training's recipe, before its own overrides
    assert specs["maml"].config(["train.updates=7"]).train.updates == 1200
    assert study.trainings(["train.updates=2"])["maml"].config(["train.updates=2"]).train.updates == 2 * 32 // 4
    rows = [r for c in study.CLAIMS.values() for r in c.rows]
    assert {r.training for r in rows} <= set(specs)
    for claim in study.CLAIMS.values():  # comparisons name rows of their own claim
        labels = [r.label for r in claim.rows]
        assert len(set(labels)) == len(labels)
        assert {x for c in claim.comparisons for x in (c.better, c.worse)} <= set(labels)


def test_the_default_is_the_studys_broad_training() -> None:
    broad = Path(__file__).resolve().parents[2] / "configs" / "broad.yaml"
    assert study.training_changes(load_config(broad), study.training_configs()["broad"]) == []
    assert study.training_changes(Config(), study.training_configs()["broad"]) == []


def test_measurements_are_kept_apart_by_the_lms_dtype(tmp_path: Path) -> None:
    row = study.CLAIMS["induction"].rows[0]
    bf16 = study.Store.open(tmp_path / "results.jsonl", {row.training: "bfloat16"})
    bf16.add(bf16.key(row, 0, 10), {"accuracy": 0.5})
    assert study.Store.open(tmp_path / "results.jsonl", {row.training: "bfloat16"}).get(row, 0, 10)
    assert study.Store.open(tmp_path / "results.jsonl", {row.training: "float32"}).get(row, 0, 10) is None
    # the paper's recipes pin float32; the default follows the machine (CPU here)
    dtypes = study.eval_dtypes(device="cpu")
    assert dtypes["maml"] == "float32" and dtypes["fashion"] in ("float32", "bfloat16")


def test_measurements_of_a_changed_training_are_set_aside(tmp_path: Path) -> None:
    row = study.CLAIMS["induction"].rows[0]
    now = config_from_dict({})
    assert study.training_changes(config_from_dict({}, ["train.seed=3", "runtime.device=cpu"]), now) == []
    assert study.training_changes(config_from_dict({}, ["train.lr=0.01"]), now) == ["train.lr: 0.01 -> 0.001"]
    path = tmp_path / "results.jsonl"
    store = study.Store.open(path, {row.training: "bfloat16"}, {row.training: now})
    # a measurement records the config of the run it scored (evaluate_run's provenance)
    store.add(store.key(row, 0, 10), {"accuracy": 0.5, "training": row.training,
                                      "checkpoint": {"config": config_from_dict({}, ["train.seed=0"]).to_dict()}})
    store.add(store.key(row, 1, 10), {"accuracy": 0.6, "training": row.training})  # none: taken as today's
    older = now.to_dict()  # written before a key was added to the config: not a change
    del older["train"]["queries_per_row"]
    store.add(store.key(row, 2, 10), {"accuracy": 0.7, "training": row.training, "checkpoint": {"config": older}})
    assert len(study.Store.open(path, {row.training: "bfloat16"}, {row.training: now}).results) == 3
    changed = config_from_dict({}, ["train.updates=7"])
    moved = study.Store.open(path, {row.training: "bfloat16"}, {row.training: changed})
    assert moved.get(row, 0, 10) is None and [r["accuracy"] for r in moved.stale] == [0.5, 0.7]
    assert moved.get(row, 1, 10) is not None


def test_a_run_folder_of_another_training_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "fashion" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(config_from_dict({}, ["train.updates=150", "train.seed=0",
                                                                       "runtime.device=cpu"])))
    study.check_run_config(run, config_from_dict({}, ["train.updates=150", "train.seed=1"]))  # seed, runtime: same
    with pytest.raises(ValueError, match=r"config.yaml: trained as another training .*train.updates: 150 -> 300"):
        study.check_run_config(run, config_from_dict({}, ["train.updates=300"]))


def test_verdict() -> None:
    assert study.verdict([0.05, 0.06, 0.04]) == "holds"
    assert study.verdict([-0.05, -0.06, -0.04]) == "fails"
    assert study.verdict([0.02, -0.02, 0.01]) == "not separated"
    assert study.verdict([0.05]) == "too few seeds"
    assert study.verdict([0.0, 0.01, -0.01], "not_worse") == "holds"
    assert study.verdict([-0.03, -0.04, -0.05], "not_worse") == "fails"


def test_study_trains_scores_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if find_fashion_root() is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist, or metamapper download)")
    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path / "cache"))
    claim = study.Claim("tiny", (study.Row("in context", "fashion"),
                                 study.Row("in context, 2 shots", "fashion", shots=2),
                                 study.Row("non-episodic", "non-episodic"),
                                 study.Row("in context, val", "fashion", split="val")),
                        (study.Comparison("in context", "non-episodic"),))
    monkeypatch.setattr(study, "CLAIMS", {"tiny": claim, "other": study.CLAIMS["mapper"]})
    out, report = tmp_path / "study", tmp_path / "docs" / "RESULTS.md"
    study.run_study(["tiny"], seeds=2, tasks=3, slow_tasks=2, out=out, results=report, overrides=TINY,
                    only=["fashion"])
    assert not (out / "non-episodic").exists()  # only the trainings asked for
    assert "| non-episodic | " in report.read_text() and "not yet measured" in report.read_text()
    study.run_study(["tiny"], seeds=2, tasks=3, slow_tasks=2, out=out, results=report, overrides=TINY)

    for name in ("fashion", "non-episodic"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["seed0", "seed1"]
    assert load_config(out / "fashion" / "seed1" / "config.yaml").train.seed == 1
    lines = [json.loads(x) for x in study.measurements_path(report).read_text().splitlines()]
    assert study.measurements_path(report) == tmp_path / "docs" / "results" / "measurements.jsonl"
    assert len(lines) == 4 * 2 and {x["n_tasks"] for x in lines} == {3}
    assert sorted(x["split"] for x in lines) == ["test"] * 6 + ["val"] * 2  # recorded with each result
    text = report.read_text()
    assert "`metamapper study --claim tiny --seeds 2 --tasks 3 --slow-tasks 2`" in text
    assert "| in context, 2 shots | " in text and "(2 of 2 seeds)" not in text
    assert "| in context > non-episodic | " in text
    assert "not yet measured" in text  # the claim not run is listed, unmeasured
    assert (report.parent / "results" / "tiny.png").is_file()

    # a rerun trains and scores nothing again
    # (every method's recipe: the study trains through Method.train)
    monkeypatch.setattr(Method, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    monkeypatch.setattr(metamapper.eval.run, "evaluate_run",
                        lambda *a, **k: pytest.fail("a finished row was scored again"))
    study.run_study(["tiny"], seeds=2, tasks=3, slow_tasks=2, out=out, results=report, overrides=TINY)
    assert report.read_text() == text
    shutil.rmtree(out / "fashion")  # nor trains again a run that is gone once its rows are measured
    study.run_study(["tiny"], seeds=2, tasks=3, slow_tasks=2, out=out, results=report, overrides=TINY)
    assert report.read_text() == text
    report.unlink()  # the CLI rewrites it from the measurements alone
    assert main(["study", "--report-only", "--seeds", "2", "--tasks", "3", "--slow-tasks", "2",
                 "--out", str(out), "--results", str(report), *TINY]) == 0
    assert report.read_text() == text


def test_a_training_stopped_early_is_not_scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claim = study.Claim("tiny", (study.Row("in context", "fashion"),))
    monkeypatch.setattr(study, "CLAIMS", {"tiny": claim})
    stopped = []  # a training that returns on a stop signal, before its last update's checkpoint
    monkeypatch.setattr(Method, "train", lambda method, cfg, run_dir, **k: stopped.append(run_dir))
    monkeypatch.setattr(metamapper.eval.run, "evaluate_run",
                        lambda *a, **k: pytest.fail("a training stopped early was scored"))
    said: list[str] = []
    report = study.run_study(["tiny"], seeds=2, tasks=3, slow_tasks=2, out=tmp_path / "study",
                             results=tmp_path / "RESULTS.md", overrides=TINY, say=said.append)
    assert stopped == [tmp_path / "study" / "fashion" / "seed0"]  # and seed 1 is not started
    assert "stopped before update 2" in said[-1] and "not yet measured" in report.read_text()
    assert not study.measurements_path(report).exists() or not study.measurements_path(report).read_text()
    stopped.clear()  # one seed of the study alone, as one of several processes would
    study.run_study(["tiny"], seeds=2, tasks=3, slow_tasks=2, out=tmp_path / "study",
                    results=tmp_path / "RESULTS.md", overrides=TINY, only_seeds=[1], say=said.append)
    assert stopped == [tmp_path / "study" / "fashion" / "seed1"]
    with pytest.raises(ValueError, match="seed 2 is not among the study's seeds 0..1"):
        study.run_study(["tiny"], seeds=2, out=tmp_path / "study", results=tmp_path / "RESULTS.md",
                        overrides=TINY, only_seeds=[2])


def test_a_claim_measured_elsewhere_keeps_its_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = study.Claim("A measured here", (study.Row("row a", "fashion"),))
    b = study.Claim("B measured elsewhere", (study.Row("row b", "mlp"),))
    monkeypatch.setattr(study, "CLAIMS", {"a": a, "b": b})
    report = tmp_path / "RESULTS.md"
    report.write_text("# Results\n\nold header\n\n## A measured here\n\nold a: 50.0\n\n"
                      "## B measured elsewhere\n\n| row b | 71.2 |\n")
    store = study.Store.open(tmp_path / "results.jsonl", {"fashion": "bfloat16", "mlp": "bfloat16"})
    store.add(store.key(a.rows[0], 0, 10), {"accuracy": 0.8, "ci95": [0.7, 0.9]})
    text = study.write_report(store, report, seeds=1, tasks=10, slow_tasks=5).read_text()
    assert "old a" not in text and "| row a | " in text and "80.0 (70.0–90.0)" in text
    assert "## B measured elsewhere\n\n| row b | 71.2 |\n" in text and "old header" not in text
    report.unlink()  # without a report to keep from, an unmeasured claim says so
    assert "not yet measured" in study.write_report(store, report, seeds=1, tasks=10, slow_tasks=5).read_text()


def test_a_claim_partly_measured_here_keeps_the_other_lines_marked(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rows = (study.Row("row a", "fashion"), study.Row("row b", "mlp"), study.Row("row c", "mlp", shots=3))
    claim = study.Claim("C", rows, (study.Comparison("row a", "row b"), study.Comparison("row a", "row c")))
    monkeypatch.setattr(study, "CLAIMS", {"c": claim})
    report = tmp_path / "RESULTS.md"
    report.write_text("# Results\n\n## C\n\n| row | training | evaluation | tasks | mean | per seed |\n"
                      "| row a | x | y | 10 | 50.0 ± 1.0 | 49, 51 |\n| row b | x | y | 10 | 71.2 ± 2.0 | 70, 72 |\n"
                      "| row c | x | y | 10 | not yet measured | — |\n\n| comparison | d | seeds | verdict |\n"
                      "| row a > row b | -21.2 ± 1.0 | 2 | fails |\n| row a > row c | — | 0 | too few seeds |\n")
    store = study.Store.open(tmp_path / "results.jsonl", {"fashion": "bfloat16", "mlp": "bfloat16"})
    for seed, acc in enumerate((0.8, 0.82)):
        store.add(store.key(rows[0], seed, 10), {"accuracy": acc, "ci95": [0.7, 0.9]})
    text = study.write_report(store, report, seeds=2, tasks=10, slow_tasks=5).read_text()
    assert "| row a | " in text and "81.0 ± 1.4" in text and "50.0" not in text  # measured here: new
    assert "| row b † | x | y | 10 | 71.2 ± 2.0 | 70, 72 |" in text  # not here: the old line, marked
    assert "| row a > row b † | -21.2 ± 1.0 | 2 | fails |" in text
    assert "| row c | " in text and "not yet measured" in text  # nothing to keep
    assert "| row a > row c | — | 0 | too few seeds |" in text and "† Kept from an earlier run" in text
    assert study.write_report(store, report, seeds=2, tasks=10, slow_tasks=5).read_text() == text  # stable
    store.add(store.key(rows[1], 0, 10), {"accuracy": 0.5, "ci95": [0.4, 0.6]})  # one seed here:
    text = study.write_report(store, report, seeds=2, tasks=10, slow_tasks=5).read_text()
    assert "| row b | " in text and "70, 72" not in text  # the row is the store's now,
    assert "| row a > row b † | -21.2 ± 1.0 | 2 | fails |" in text  # the comparison not yet (1 seed)


def test_a_seed_trained_twice_is_marked_in_its_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = (study.Row("row a", "fashion"), study.Row("row b", "fashion", shots=3), study.Row("row c", "mlp"))
    claim = study.Claim("D", rows)
    monkeypatch.setattr(study, "CLAIMS", {"d": claim})
    store = study.Store.open(tmp_path / "results.jsonl", {"fashion": "bfloat16", "mlp": "bfloat16"})
    for row, seed, sha in ((rows[0], 0, "a" * 64), (rows[1], 0, "b" * 64), (rows[0], 1, "c" * 64),
                           (rows[1], 1, "c" * 64), (rows[2], 0, "d" * 64)):
        store.add(store.key(row, seed, 10), {"accuracy": 0.5, "ci95": [0.4, 0.6], "checkpoint": {"sha256": sha}})
    assert study.seed_runs(claim, store, 2, 10, 5) == {("fashion", 0): ["a" * 64, "b" * 64],
                                                       ("fashion", 1): ["c" * 64], ("mlp", 0): ["d" * 64]}
    text = study.write_report(store, tmp_path / "RESULTS.md", seeds=2, tasks=10, slow_tasks=5).read_text()
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| row ")}
    assert lines["| row a"].endswith("| 50.0 (40.0–60.0)ᵃ, 50.0 (40.0–60.0) |")  # seed 1: one training
    assert lines["| row b"].endswith("| 50.0 (40.0–60.0)ᵇ, 50.0 (40.0–60.0) |")
    assert lines["| row c"].endswith("| 50.0 (40.0–60.0), — |")
    assert "`fashion` seed 0: ᵃ checkpoint aaaaaaaa, ᵇ checkpoint bbbbbbbb." in text
    assert "mlp` seed" not in text
