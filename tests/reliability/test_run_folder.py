"""Round two of the run-folder faults (issue #21), through the real ``metamapper`` command where
the user meets them: a planted ``trainer.pt``, a second writer, a mistyped ``--resume``, training
again into a run, a full disk, a corrupt newest checkpoint at evaluation, the best checkpoint,
and the messages of small mistakes."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_helpers import ROOT, SMOKE, smoke_config

from metamapper.checkpoint import (
    CKPT_DIR,
    CheckpointError,
    list_checkpoints,
    read_checkpoint,
    select_checkpoint,
)
from metamapper.cli import main
from metamapper.data.synthetic import draw
from metamapper.eval.fewshot import EvalResult
from metamapper.methods import train
from metamapper.runs import LOCK_FILE
from metamapper.train import episodic

CLI = [sys.executable, "-m", "metamapper.cli"]
SLOW_CLI = [sys.executable, str(Path(__file__).with_name("slow_cli.py"))]
TRAIN = ["train.updates=4", "train.meta_batch=2", "train.checkpoint_every=2", "train.val_every=2",
         "train.val_tasks=4"]


def train_args(env: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(SMOKE), "--out", str(out), *TRAIN,
            f"data.feature_cache={env['FEATURES']}", *extra]


def cli(args: list[str], env: dict[str, str], timeout: int = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def one_line_error(p: subprocess.CompletedProcess, *parts: str) -> str:
    """The process failed with exit code 2 and one ``metamapper: error:`` line holding ``parts``."""
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("metamapper: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], p.stderr[-3000:]
    for part in parts:
        assert part in errors[0], (part, errors[0])
    return errors[0]


def steps(run: Path) -> list[int]:
    return [int(p.name[5:]) for p in list_checkpoints(run)]


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in line]


@pytest.fixture(scope="module")
def base_run(mm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 updates, checkpoints and validation at 2 and 4, through the CLI."""
    run = tmp_path_factory.mktemp("runs") / "base"
    p = cli(train_args(mm_env, run), mm_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert steps(run) == [2, 4]
    return run


@pytest.fixture
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def test_resuming_a_planted_trainer_state_refuses_it_and_runs_nothing(
        mm_env: dict[str, str], run_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"open({str(marker)!r}, 'w').write('pwned')"
    # a pickle whose loading calls exec(payload), planted as the newest trainer.pt with its
    # checksum updated in meta.json (anyone who can write the folder can do both)
    planted = subprocess.run([sys.executable, "-c", f"""
import hashlib, json, sys, torch
class Payload:
    def __reduce__(self):
        return (exec, ({payload!r},))
ckpt = sys.argv[1]
torch.save({{"optimizer": Payload()}}, ckpt + "/trainer.pt")
meta = json.load(open(ckpt + "/meta.json"))
meta["trainer_sha256"] = hashlib.sha256(open(ckpt + "/trainer.pt", "rb").read()).hexdigest()
json.dump(meta, open(ckpt + "/meta.json", "w"))
""", str(run_copy / CKPT_DIR / "step-0000004")], capture_output=True, text=True, timeout=60)
    assert planted.returncode == 0, planted.stderr
    p = cli(train_args(mm_env, run_copy, "train.updates=6", "--resume"), mm_env)
    one_line_error(p, "refusing to load", "step-0000004/trainer.pt", "it wants exec")
    assert not marker.exists()  # the payload never ran
    assert steps(run_copy) == [2, 4]  # and nothing was trained


def test_resume_of_a_folder_without_a_run_is_an_error(mm_env: dict[str, str], tmp_path: Path) -> None:
    typo = tmp_path / "runs" / "bsae"
    p = cli(train_args(mm_env, typo, "--resume"), mm_env)
    one_line_error(p, f"cannot resume {typo}: it holds no run")
    assert not typo.exists()


def test_training_again_into_a_run_needs_resume_or_overwrite(mm_env: dict[str, str],
                                                             run_copy: Path) -> None:
    before = {p.name: (p / "meta.json").read_text() for p in list_checkpoints(run_copy)}
    metrics = (run_copy / "metrics.jsonl").read_text()
    p = cli(train_args(mm_env, run_copy, "train.updates=2"), mm_env)
    one_line_error(p, f"{run_copy} already holds a run (checkpoints up to step 4)", "--resume",
                   "--overwrite")
    assert {p.name: (p / "meta.json").read_text() for p in list_checkpoints(run_copy)} == before
    assert (run_copy / "metrics.jsonl").read_text() == metrics

    p = cli(train_args(mm_env, run_copy, "train.updates=2", "--overwrite"), mm_env)
    assert p.returncode == 0, p.stderr[-3000:]
    [old] = run_copy.glob("replaced-*")
    assert f"moved the previous run in {run_copy} to {old}" in p.stderr
    assert steps(run_copy) == [2] and logged_steps(run_copy) == [1, 2]  # the new run alone
    assert steps(old) == [2, 4] and (old / "metrics.jsonl").read_text() == metrics  # kept whole


def test_a_second_writer_gets_one_line_naming_the_first(mm_env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "busy"
    # each checkpoint write pauses 2 s: the first run holds the folder for over a minute
    first = subprocess.Popen([*SLOW_CLI, "2", *train_args(mm_env, run, "train.updates=40",
                                                            "train.checkpoint_every=1", "train.val_every=0")],
                             env=mm_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not steps(run):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run did not reach its first checkpoint"
            time.sleep(0.05)
        assert (run / LOCK_FILE).read_text().split()[0] == str(first.pid)
        for extra in (["--resume"], ["--overwrite"]):
            p = cli(train_args(mm_env, run, "train.updates=40", "train.checkpoint_every=1",
                               "train.val_every=0", *extra), mm_env)
            one_line_error(p, f"{run} is being trained by another process (PID {first.pid} on ")
            assert not list(run.glob("replaced-*"))
    finally:
        first.send_signal(signal.SIGTERM)  # stops cleanly with a checkpoint
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    last = max(steps(run))
    assert steps(run) == list(range(max(1, last - 2), last + 1))  # keep_last=3, none lost
    for path in list_checkpoints(run):
        read_checkpoint(path, trainer=True)


def test_two_ranks_refused_by_rank_0_both_stop(mm_env: dict[str, str], run_copy: Path) -> None:
    """torchrun: rank 0 finds the folder holds a run; rank 1 must stop too, not wait forever."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    p = subprocess.run([*torchrun, "-m", "metamapper.cli", *train_args(mm_env, run_copy)],
                       env={**mm_env, "METAMAPPER_DIST_TIMEOUT": "60"}, cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode != 0
    # one line per rank (the launcher then prints its own report of the failed children)
    assert p.stderr.count("metamapper: error: ") == 2, p.stderr[-3000:]
    assert p.stderr.count("already holds a run") == 2, p.stderr[-3000:]
    assert steps(run_copy) == [2, 4]


def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(mm_env: dict[str, str],
                                                                    run_copy: Path) -> None:
    """A real write error from the kernel: files over 60 kB (RLIMIT_FSIZE) cannot be written, so
    the first checkpoint of the resumed run (trainer.pt is ~100 kB) fails half-way."""
    assert (run_copy / CKPT_DIR / "step-0000004" / "trainer.pt").stat().st_size > 60_000

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    args = train_args(mm_env, run_copy, "train.updates=8", "--resume")
    p = cli(args, mm_env, preexec_fn=small_disk)
    one_line_error(p, f"cannot write checkpoint {run_copy / CKPT_DIR / 'step-0000006'}: File too large",
                   "are intact")
    assert steps(run_copy) == [2, 4]
    assert not list((run_copy / CKPT_DIR).glob(".tmp-*"))
    read_checkpoint(run_copy / CKPT_DIR / "step-0000004", trainer=True)
    # room again: the run resumes from step 4 and ends as one run
    p = cli(args, mm_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert steps(run_copy)[-1] == 8 and logged_steps(run_copy) == list(range(1, 9))


def test_a_corrupt_newest_checkpoint_at_evaluation(mm_env: dict[str, str], run_copy: Path,
                                                   tmp_path: Path) -> None:
    weights = run_copy / CKPT_DIR / "step-0000004" / "mapper.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    ev = ["evaluate", "--checkpoint", str(run_copy), "--dataset", "synthetic", "--tasks", "4",
          "--feature-cache", mm_env["FEATURES"], "--out", str(tmp_path / "res.json")]
    p = cli(ev, mm_env)
    one_line_error(p, f"the newest checkpoint of {run_copy} is unusable", "checksum mismatch",
                   "--step", "--allow-fallback")
    assert not (tmp_path / "res.json").exists()
    p = cli([*ev, "--allow-fallback"], mm_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "skipping" in p.stderr and "step-0000004" in p.stderr  # said, not silent
    rec = json.loads((tmp_path / "res.json").read_text())["checkpoint"]
    step2 = read_checkpoint(run_copy / CKPT_DIR / "step-0000002")
    assert rec["step"] == 2 and rec["sha256"] == step2.meta["sha256"]
    assert rec["run"] == str(run_copy.resolve()) and rec["checkpoint"] == str(step2.path.resolve())
    assert rec["config"] == step2.meta["config"] and rec["metamapper_version"]


def test_predict_json_and_step_selection(mm_env: dict[str, str], base_run: Path, tmp_path: Path) -> None:
    images = []
    for c, i in [(6, 0), (7, 0), (7, 1)]:
        images.append(tmp_path / f"{c}-{i}.png")
        draw(c, i).save(images[-1])
    p = cli(["predict", "--checkpoint", str(base_run), "--step", "2", "--json", "--support",
             f"{images[0]}=This is a dax.", f"{images[1]}=This is a blicket.", "--query",
             str(images[2])], mm_env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert [a["query"] for a in out["answers"]] == [str(images[2])]
    assert isinstance(out["answers"][0]["answer"], str)
    assert out["checkpoint"]["step"] == 2
    assert out["checkpoint"]["sha256"] == read_checkpoint(base_run / CKPT_DIR / "step-0000002").meta["sha256"]
    p = cli(["predict", "--checkpoint", str(base_run), "--step", "3", "--support",
             f"{images[0]}=This is a dax.", f"{images[1]}=This is a blicket.", "--query",
             str(images[2])], mm_env)
    one_line_error(p, "has no checkpoint of step 3 (it has: 2, 4)")


def test_keep_best_keeps_and_selects_the_best_validated_checkpoint(
        mm_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation at 3 and 6 (accuracies made up: 0.9, then 0.1), checkpoints every 100
    updates, keep_last=1: a checkpoint is written at each validation and the best one stays."""
    accuracies = iter([0.9, 0.1])

    def fake_evaluate(*args, **kwargs) -> EvalResult:
        return EvalResult(method="in_context", accuracy=next(accuracies), ci95=(0.0, 0.0), n_tasks=1,
                          n_queries=1, steps=0)

    monkeypatch.setattr(episodic, "evaluate", fake_evaluate)
    run = tmp_path / "best"
    cfg = smoke_config(mm_env, "train.updates=6", "train.val_every=3", "train.checkpoint_every=100",
                       "train.keep_last=1", "train.meta_batch=2")
    train(cfg, run, progress=False)
    assert steps(run) == [3, 6]
    assert [read_checkpoint(p).meta["val_accuracy"] for p in list_checkpoints(run)] == [0.9, 0.1]
    assert select_checkpoint(run, "best").step == 3 and select_checkpoint(run).step == 6


# ------------------------------------------------------------------ the smaller messages


def test_an_empty_section_in_a_config_file_means_its_defaults(tmp_path: Path) -> None:
    from metamapper.config import Config, load_config

    path = tmp_path / "c.yaml"
    path.write_text("data:\ntrain:\n  inner:\n  updates: 7\n")
    cfg = load_config(path, ["data.source=synthetic"])
    assert cfg.data.source == "synthetic" and cfg.train.updates == 7
    assert cfg.train.inner == Config().train.inner and cfg.data.ways == Config().data.ways


def test_an_empty_benchmark_is_named_before_any_backbone_loads(base_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "open_ended_mi_shots_1_ways_2_all_questions.json").write_text("[]")
    monkeypatch.setattr("metamapper.loading.load_run",
                        lambda *a, **k: pytest.fail("the backbones were loaded"))
    rc = main(["evaluate", "--checkpoint", str(base_run), "--dataset", "open_ended_mi",
               "--data", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "open_ended_mi_shots_1_ways_2_all_questions.json" in err and "empty" in err


def test_too_many_shots_names_the_config_keys(mm_env: dict[str, str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(train_args(mm_env, tmp_path / "run", "data.shots=500"))
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.shots=500" in err and "data.queries_per_class=" in err and "fewer than" in err
    assert not list((tmp_path / "run").glob("*.yaml"))  # nothing of a run written


def test_a_meta_json_without_config_is_named(base_run: Path, tmp_path: Path) -> None:
    from metamapper.loading import load_run

    run = Path(shutil.copytree(base_run, tmp_path / "run"))
    meta_file = run / CKPT_DIR / "step-0000004" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["config"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"step-0000004/meta\.json has no 'config'"):
        load_run(run)

