"""A meta-training run stopped by SIGKILL (even during a checkpoint write), SIGTERM or Ctrl-C
and resumed ends with exactly the mapper weights of an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import ROOT, SMOKE, smoke_config

from metamapper import distributed
from metamapper.checkpoint import CKPT_DIR, list_checkpoints, read_checkpoint
from metamapper.methods import train

RUN = ["train.updates=12", "train.checkpoint_every=1", "train.val_every=0", "mapper.dropout=0.1"]
SLOW_CLI = [sys.executable, str(Path(__file__).with_name("slow_cli.py"))]
CLI = [sys.executable, "-m", "metamapper.cli"]


def cli_args(env: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(SMOKE), "--out", str(out), *RUN,
            f"data.feature_cache={env['FEATURES']}", *extra]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(run / CKPT_DIR / "step-0000012", trainer=True)
    return ckpt.weights


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(mm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run, in process (bitwise equal to the CLI's: same code, one thread)."""
    run = tmp_path_factory.mktemp("runs") / "uninterrupted"
    train(smoke_config(mm_env, *RUN), run, progress=False)
    return run


def wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before the signal could be sent: "
                        f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("timed out waiting for the run to reach the signal point")
        time.sleep(0.005)


def steps_done(run: Path) -> list[int]:
    return [int(p.name[5:]) for p in list_checkpoints(run)]


def writes_in_progress(ckpts: Path) -> list[Path]:
    """Temporary folders of checkpoint saves (not of prunes: ``.tmp-pruned-*`` hold an old
    checkpoint's files while it is deleted)."""
    return [d for d in ckpts.glob(".tmp-*") if not d.name.startswith(".tmp-pruned-")]


def test_sigkill_during_a_checkpoint_write_then_resume(mm_env: dict[str, str], uninterrupted: Path,
                                                       tmp_path: Path) -> None:
    run = tmp_path / "killed"
    ckpts = run / CKPT_DIR
    proc = subprocess.Popen([*SLOW_CLI, "0.5", *cli_args(mm_env, run)], env=mm_env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # step >= 4 on disk and the next checkpoint half-written in its temporary folder
    wait_for(proc, lambda: max(steps_done(run), default=0) >= 4
             and any((d / "mapper.safetensors").is_file() for d in writes_in_progress(ckpts)))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # a partial checkpoint (its weights written, not yet published)
    assert any((d / "mapper.safetensors").is_file() for d in writes_in_progress(ckpts))
    last = max(steps_done(run))
    assert 4 <= last < 12

    p = subprocess.run([*CLI, *cli_args(mm_env, run), "--resume"], env=mm_env, cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not list(ckpts.glob(".tmp-*"))  # the killed write's leftovers are cleaned up
    assert_same_weights(final_weights(run), final_weights(uninterrupted))
    assert logged_steps(run) == list(range(1, 13))  # records after step `last` were dropped, once


def test_sigterm_saves_a_checkpoint_exits_0_and_resumes(mm_env: dict[str, str], uninterrupted: Path,
                                                        tmp_path: Path) -> None:
    run = tmp_path / "terminated"
    proc = subprocess.Popen([*SLOW_CLI, "0.2", *cli_args(mm_env, run)], env=mm_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(proc, lambda: max(steps_done(run), default=0) >= 4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    stopped = int(out.split("stopped after ")[1].split()[0])
    assert 4 <= stopped < 12
    assert max(steps_done(run)) == stopped  # a checkpoint of the very step it stopped at
    read_checkpoint(run / CKPT_DIR / f"step-{stopped:07d}", trainer=True)

    p = subprocess.run([*CLI, *cli_args(mm_env, run), "--resume"], env=mm_env, cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_weights(final_weights(run), final_weights(uninterrupted))
    assert logged_steps(run) == list(range(1, 13))


def test_ctrl_c_saves_a_checkpoint_and_resumes(mm_env: dict[str, str], uninterrupted: Path,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT (Ctrl-C) in process, sent by the run itself right after update 5."""

    def interrupt(rank: int, step: int) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "interrupted"
    cfg = smoke_config(mm_env, *RUN)
    monkeypatch.setattr(distributed, "fault_hook", interrupt)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    train(cfg, run, progress=False)
    assert steps_done(run)[-1] == 5
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored
    monkeypatch.undo()
    train(cfg, run, resume=True, progress=False)
    assert_same_weights(final_weights(run), final_weights(uninterrupted))
    assert logged_steps(run) == list(range(1, 13))
