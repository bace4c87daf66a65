"""Results that describe themselves: ``metamapper evaluate --out`` records where a number comes
from (version, checkpoint and checksum, backbones, config, tasks, date, device), ``--log-samples``
writes one line per query, ``metamapper report`` compares results files, and ``train
--report-to tensorboard`` writes the scalars of ``metrics.jsonl`` as TensorBoard events."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch

import metamapper
from metamapper.cli import main
from metamapper.config import load_config
from metamapper.data.sources import evaluation_tasks
from metamapper.device import lm_dtype
from metamapper.eval.metrics import exact_match

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
TRAIN = ["train.updates=4", "train.meta_batch=2", "train.val_every=2", "train.checkpoint_every=2"]
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture(scope="module")
def trained(cli: Callable[..., str], in_process: Path) -> Path:
    out = in_process / "run"
    cli("train", "--config", SMOKE, "--out", out, *TRAIN,
        *(["--report-to", "tensorboard"] if HAS_TENSORBOARD else []))
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
    assert res["backbones"] == {"vision": meta["vision_identity"], "lm": meta["lm_identity"],
                                "lm_dtype": lm_dtype("auto", torch.device("cpu"))}
    assert res["backbones"]["lm"].startswith("tiny-lm")
    assert ckpt["config"] == load_config(trained / "config.yaml").to_dict()  # resolved: every key
    assert (res["dataset"], res["split"], res["seed"], res["source"]) == ("synthetic", "test", 7,
                                                                          str(trained))
    assert (res["ways"], res["shots"], res["method"], res["steps"]) == (2, 1, "in_context", 0)
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


def test_support_fit_is_scored_when_asked(cli: Callable[..., str], trained: Path, tmp_path: Path) -> None:
    args = ("--method", "in_context", "--steps", 1)
    assert evaluate(cli, trained, tmp_path / "plain.json", *args)["support_fit"] is None
    out = cli("evaluate", "--checkpoint", trained, "--dataset", "synthetic", "--tasks", 4, "--out",
              tmp_path / "fit.json", *args, "--support-fit")
    fit = json.loads((tmp_path / "fit.json").read_text())["support_fit"]
    assert 0.0 <= fit <= 1.0 and f"support fit: {100 * fit:.1f}% of the support images" in out


def test_report_compares_results_files(cli: Callable[..., str], trained: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    evaluate(cli, trained, tmp_path / "a.json")
    # an earlier version's spelling: accepted with a note, recorded as spelled today
    assert main(["evaluate", "--checkpoint", str(trained), "--dataset", "synthetic", "--tasks", "4",
                 "--out", str(tmp_path / "b.json"), "--step", "2", "--method", "no-adapt",
                 "--shots", "2"]) == 0
    assert "metamapper: warning: method 'no-adapt' is now spelled standard" in capsys.readouterr().err
    old = tmp_path / "old.json"  # written before results recorded provenance
    old.write_text(json.dumps([{"method": "maml", "label": "old run", "dataset": "synthetic",
                                "ways": 2, "shots": 1, "accuracy": 0.5, "ci95": 0.1, "n_tasks": 10}]))
    plot = tmp_path / "cmp.png"
    out = cli("report", tmp_path / "a.json", tmp_path / "b.json", old, "--plot", plot)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| result | dataset | split | ways | shots | method |")
    assert len(table) == 2 + 3
    assert table[2].startswith(f"| {trained}@4 | synthetic | test | 2 | 1 | in_context |")
    assert table[3].startswith(f"| {trained}@2 | synthetic | test | 2 | 2 | standard |")
    assert table[4] == "| old run | synthetic | — | 2 | 1 | maml | 50.0 ± 10.0 | 10 |"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_refuses_what_is_not_a_results_file(in_process: Path, trained: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(trained / "metrics.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a results file" in err


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_events_hold_the_metrics(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(trained / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    for name in ("loss", "grad_norm", "lr", "val_accuracy"):
        want = [(r["step"], r[name]) for r in records if name in r]
        got = [(e.step, e.value) for e in events.Scalars(name)]
        assert [s for s, _ in got] == [s for s, _ in want] and want, name
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), name
    assert {"val_ci95_low", "val_ci95_high"} <= set(events.Tags()["scalars"])


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_resumed_tensorboard_curves_drop_later_steps(tmp_path: Path) -> None:
    """As ``metrics.jsonl``: a run resumed from step 2 replaces what the stopped run logged after
    it, so the curve reads as one run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from metamapper.train.common import MetricsLog

    with MetricsLog(tmp_path, report_to=["tensorboard"]) as log:
        for step in (1, 2, 3, 4):
            log.write(step=step, loss=1.0)
    with MetricsLog(tmp_path, resume_step=2, report_to=["tensorboard"]) as log:
        log.write(step=3, loss=0.5)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 1.0), (3, 0.5)]


def test_report_to_tensorboard_without_the_package_is_one_line(
        in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = in_process / "no-tensorboard"
    code = main(["train", "--config", str(SMOKE), "--out", str(out), *TRAIN, "--report-to", "tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "pip install 'metamapper-fewshot[tensorboard]'" in err
    assert not (out / "checkpoints").exists()  # refused before any training


def test_fashion_all_on_a_fashion_trained_run_says_it_is_not_an_unseen_domain(
        cli: Callable[..., str], in_process: Path) -> None:
    import contextlib
    import io

    from metamapper.data.fashion import find_fashion_root

    if find_fashion_root() is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    out = in_process / "fashion-run"
    cli("train", "--config", SMOKE, "--out", out, "train.updates=1", "train.meta_batch=2",
        "train.val_every=0", "data.source=fashion-mnist", "data.images_per_class=8")
    for dataset, noted in (("fashion-all-open-ended", True), ("fashion-open-ended", False)):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert main(["evaluate", "--checkpoint", str(out), "--dataset", dataset, "--tasks", "2"]) == 0
        assert ("not a domain the run has not seen" in err.getvalue()) == noted
