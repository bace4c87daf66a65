"""Results that describe themselves: ``metamapper evaluate --out`` records where a number comes
from (version, checkpoint and checksum, backbones, config, tasks, date, device), ``--log-samples``
writes one line per query, and ``metamapper report`` compares results files."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import metamapper
from metamapper.cli import main
from metamapper.config import load_config
from metamapper.data.sources import evaluation_tasks
from metamapper.eval.metrics import exact_match

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
TRAIN = ["train.updates=4", "train.meta_batch=2", "train.val_every=2", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained(cli: Callable[..., str], in_process: Path) -> Path:
    out = in_process / "run"
    cli("train", "--config", SMOKE, "--out", out, *TRAIN)
    return out


def evaluate(cli: Callable[..., str], run: Path, out: Path, *args: object) -> dict:
    cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--tasks", 4, "--out", out, *args)
    return json.loads(out.read_text())


def test_results_say_where_they_come_from(cli: Callable[..., str], trained: Path,
                                          tmp_path: Path) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    res = evaluate(cli, trained, tmp_path / "res.json", "--seed", 7)
    try:  # the installed distribution's version (a source tree never installed: unknown)
        version = importlib.metadata.version("metamapper-fewshot")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    assert res["metamapper_version"] == version == metamapper.__version__
    assert before <= datetime.fromisoformat(res["date"]) <= before + timedelta(minutes=10)
    assert datetime.fromisoformat(res["date"]).utcoffset() == timedelta(0)
    assert res["device"] == "cpu"
    ckpt = res["checkpoint"]
    weights = trained / "checkpoints" / "step-0000004" / "mapper.safetensors"
    assert (ckpt["run"], ckpt["step"]) == (str(trained.resolve()), 4)
    assert ckpt["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    meta = json.loads((weights.parent / "meta.json").read_text())
    assert res["backbones"] == {"vision": meta["vision_identity"], "lm": meta["lm_identity"]}
    assert res["backbones"]["lm"].startswith("tiny-lm")
    assert ckpt["config"] == load_config(trained / "config.yaml").to_dict()  # resolved: every key
    assert (res["dataset"], res["split"], res["seed"], res["source"]) == ("synthetic", "test", 7,
                                                                          str(trained))
    assert (res["ways"], res["shots"], res["method"], res["steps"]) == (2, 1, "in-context", 0)
    assert res["ci_method"] == "wilson-tasks" and res["n_tasks"] == 4


def test_log_samples_writes_one_line_per_query(cli: Callable[..., str], trained: Path,
                                               tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    res = evaluate(cli, trained, tmp_path / "res.json", "--log-samples", samples, "--repeats", 1)
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(lines) == res["n_queries"] == 8  # 4 tasks of 2 queries
    tasks = evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=4).tasks
    want = [(t.task_id, i, j, q.question, q.answer) for i, t in enumerate(tasks)
            for j, q in enumerate(t.queries)]
    assert [(s["task_id"], s["task_index"], s["query_index"], s["question"], s["target"])
            for s in lines] == want
    for s in lines:  # the support as shown (repeated once more), the score of the prediction
        captions = [e.caption for e in tasks[s["task_index"]].support]
        assert s["support_captions"] == captions * 2
        assert s["correct"] == exact_match(s["prediction"], s["target"])
    assert sum(s["correct"] for s in lines) / len(lines) == pytest.approx(res["accuracy"])
    assert lines[0]["prediction"] == res["examples"][0]["prediction"]


def test_report_compares_results_files(cli: Callable[..., str], trained: Path,
                                       tmp_path: Path) -> None:
    evaluate(cli, trained, tmp_path / "a.json")
    evaluate(cli, trained, tmp_path / "b.json", "--step", 2, "--method", "no-adapt", "--shots", 2)
    old = tmp_path / "old.json"  # written before results recorded provenance
    old.write_text(json.dumps([{"method": "maml", "label": "old run", "dataset": "synthetic",
                                "ways": 2, "shots": 1, "accuracy": 0.5, "ci95": 0.1, "n_tasks": 10}]))
    plot = tmp_path / "cmp.png"
    out = cli("report", tmp_path / "a.json", tmp_path / "b.json", old, "--plot", plot)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| result | dataset | split | ways | shots | method |")
    assert len(table) == 2 + 3
    assert table[2].startswith(f"| {trained}@4 | synthetic | test | 2 | 1 | in-context |")
    assert table[3].startswith(f"| {trained}@2 | synthetic | test | 2 | 2 | no-adapt |")
    assert table[4] == "| old run | synthetic | — | 2 | 1 | maml | 50.0 ± 10.0 | 10 |"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_refuses_what_is_not_a_results_file(in_process: Path, trained: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(trained / "metrics.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a results file" in err
