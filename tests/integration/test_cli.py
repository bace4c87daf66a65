"""The real ``metamapper`` command on the smoke config: train -> evaluate -> predict, a stopped
run resumed to the same weights, and user mistakes ending in one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metamapper.checkpoint import list_checkpoints, read_checkpoint
from metamapper.cli import build_parser, main
from metamapper.data.synthetic import draw

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
CLI = [sys.executable, "-m", "metamapper.cli"]
TRAIN = ["train.updates=4", "train.meta_batch=2", "train.val_every=0", "train.checkpoint_every=2"]


def run(args: list[str], env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    p = ok(run(["train", "--config", str(SMOKE), "--out", str(out), *TRAIN,
                f"data.feature_cache={env['FEATURES']}"], env))
    assert "run written to" in p.stdout
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    paths = {"a": d / "a.png", "b": d / "b.png", "q": d / "q.png"}
    for path, (c, i) in zip(paths.values(), [(6, 0), (7, 0), (7, 1)], strict=True):
        draw(c, i).save(path)
    return paths


def test_train_writes_a_run(trained: Path) -> None:
    assert (trained / "config.yaml").is_file() and (trained / "metrics.jsonl").is_file()
    assert [p.name for p in list_checkpoints(trained)] == ["step-0000002", "step-0000004"]
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 4


def test_evaluate_writes_results(trained: Path, env: dict[str, str], tmp_path: Path) -> None:
    res_file = tmp_path / "res.json"
    p = ok(run(["evaluate", "--checkpoint", str(trained), "--dataset", "synthetic", "--ways", "2",
                "--shots", "1", "--tasks", "10", "--out", str(res_file),
                "--feature-cache", env["FEATURES"]], env))
    res = json.loads(res_file.read_text())
    assert 0.0 <= res["accuracy"] <= 1.0
    lo, hi = res["ci95"]  # two queries per task: Wilson with the tasks as trials
    assert 0.0 <= lo <= res["accuracy"] <= hi <= 1.0 and res["ci_method"] == "wilson-tasks"
    assert res["n_tasks"] == 10 and res["n_queries"] == 20
    assert (res["ways"], res["shots"], res["dataset"], res["method"]) == (2, 1, "synthetic", "in_context")
    assert (res["split"], res["seed"], res["trained_overlap"]) == ("test", 1234, 0)
    assert "| in_context | synthetic | 2 | 1 |" in p.stdout


def test_predict_prints_one_answer(trained: Path, env: dict[str, str], images: dict[str, Path]) -> None:
    p = ok(run(["predict", "--checkpoint", str(trained), "--support",
                f"{images['a']}=This is a dax.", f"{images['b']}=This is a blicket.",
                "--query", str(images["q"])], env))
    assert len(p.stdout.splitlines()) == 1
    assert "\t" not in p.stdout


def test_stopped_run_resumes_to_the_same_weights(trained: Path, env: dict[str, str],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "stopped"
    common = ["--config", str(SMOKE), "--out", str(out), *TRAIN, f"data.feature_cache={env['FEATURES']}"]
    p = ok(run(["train", *common, "train.max_minutes=0.00001"], env))  # stops after update 1
    assert [c.name for c in list_checkpoints(out)] == ["step-0000001"]
    assert "after 1 updates" in p.stdout + p.stderr
    ok(run(["train", "--resume", "--out", str(out), "train.max_minutes=null"], env))  # the run's config
    assert [c.name for c in list_checkpoints(out)][-1] == "step-0000004"
    want = read_checkpoint(trained / "checkpoints" / "step-0000004").weights
    got = read_checkpoint(out / "checkpoints" / "step-0000004").weights
    for k in want:
        assert torch.equal(got[k], want[k]), k
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_user_mistakes_end_with_one_line_and_exit_code_2(trained: Path, env: dict[str, str],
                                                         images: dict[str, Path], tmp_path: Path) -> None:
    cases = {
        "missing checkpoint": (["evaluate", "--checkpoint", str(tmp_path / "no-such-run"),
                                "--dataset", "synthetic", "--tasks", "2"], "does not exist"),
        "unknown key": (["train", "--config", str(SMOKE), "--out", str(tmp_path / "x"),
                         "train.bogus=1"], "unknown config key 'train.bogus'"),
        "missing support image": (["predict", "--checkpoint", str(trained), "--support",
                                   f"{tmp_path / 'nope.png'}=This is a dax.", "--query",
                                   str(images["q"])], "nope.png"),
        "ways=1": (["evaluate", "--checkpoint", str(trained), "--dataset", "synthetic", "--ways", "1",
                    "--tasks", "2", "--feature-cache", env["FEATURES"]], "ways must be >= 2"),
        "tasks=-1": (["evaluate", "--checkpoint", str(trained), "--dataset", "synthetic",
                      "--tasks", "-1"], "number of tasks must be >= 0"),
        "steps with standard": (["evaluate", "--checkpoint", str(trained), "--dataset", "synthetic",
                                 "--tasks", "2", "--method", "standard", "--steps", "3"],
                                "method standard takes no adaptation steps (got 3)"),
        "steps with no-adapt": (["evaluate", "--checkpoint", str(trained), "--dataset", "synthetic",
                                 "--tasks", "2", "--method", "no-adapt", "--steps", "3"],  # an old spelling
                                "method standard takes no adaptation steps (got 3)"),
        "unknown method": (["evaluate", "--checkpoint", str(trained), "--dataset", "synthetic",
                            "--tasks", "2", "--method", "zero-shot"],
                           "unknown method 'zero-shot'; registered: in_context, maml, standard"),
        "resume with another config": (["train", "--config", str(SMOKE), "--out", str(trained), "--resume",
                                        *TRAIN, f"data.feature_cache={env['FEATURES']}", "train.lr=0.5"],
                                       "train.lr: 0.001 -> 0.5"),
        "support without caption": (["predict", "--checkpoint", str(trained), "--support",
                                     str(images["a"]), "--query", str(images["q"])], "IMAGE=CAPTION"),
    }
    procs = {name: subprocess.Popen([*CLI, *argv], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (argv, _) in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, err[-2000:])
        assert "Traceback" not in err, (name, err)
        errors = [line for line in err.splitlines() if line.strip()]
        assert errors and errors[-1].startswith("metamapper: error: "), (name, err)
        assert sum("metamapper: error" in line for line in errors) == 1, (name, err)
        assert cases[name][1] in errors[-1], (name, errors[-1])
        old_spelling = "metamapper: warning: method 'no-adapt' is now spelled standard"
        assert (old_spelling in err) == (name == "steps with no-adapt"), (name, err)
    assert not (tmp_path / "x").exists()  # the bad config wrote nothing


def test_top_level_help() -> None:
    exe = Path(sys.executable).parent / "metamapper"
    cmd = [str(exe)] if exe.is_file() else CLI
    p = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    for sub in ("train", "evaluate", "predict", "prepare", "export-fashion", "export", "push", "demo"):
        assert sub in p.stdout


@pytest.mark.parametrize("sub", ["train", "evaluate", "predict", "prepare", "export-fashion", "export",
                                 "push", "demo"])
def test_subcommand_help(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: metamapper {sub}")


def test_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert build_parser().prog == "metamapper"
