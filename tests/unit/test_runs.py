"""Run folders: the lock, resume/overwrite rules, atomic writes and their errors (metamapper.runs,
metamapper.checkpoint's writers)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metamapper.checkpoint import RunWriteError, append_line, write_atomic
from metamapper.runs import LOCK_FILE, RunError, claim_run, exclusive_run, has_run


def make_run(d: Path) -> Path:
    (d / "checkpoints" / "step-0000004").mkdir(parents=True)
    (d / "config.yaml").write_text("train: {}\n")
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    return d


def test_has_run() -> None:
    assert not has_run("/nonexistent/folder")


def test_resume_needs_a_run_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "runs" / "fashon"
    with pytest.raises(RunError, match=r"cannot resume .*fashon: it holds no run.*without --resume"):
        claim_run(typo, resume=True)
    assert not typo.exists() and not (tmp_path / "runs").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="holds no run"):
        claim_run(tmp_path / "empty", resume=True)


def test_a_run_is_only_continued_or_overwritten(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "tensorboard").mkdir()  # train.report_to=[tensorboard]: its curves go with the run
    with pytest.raises(RunError, match=r"already holds a run \(checkpoints up to step 4\).*--resume.*--overwrite"):
        claim_run(run)
    assert has_run(run)  # untouched
    with claim_run(run, resume=True) as claim:
        assert claim.moved_to is None
    with claim_run(run, overwrite=True) as claim:
        moved = claim.moved_to
    assert moved is not None and moved.parent == run and moved.name.startswith("replaced-")
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl",
                                                      "tensorboard"]
    assert not has_run(run)
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files move
    with pytest.raises(RunError, match="choose one"):
        claim_run(run, resume=True, overwrite=True)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from metamapper.runs import claim_run\n"
         "c = claim_run(sys.argv[1]); print('locked', flush=True); sys.stdin.read()", str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=rf"being trained by another process \(PID {holder.pid} on "):
            claim_run(run)
        with pytest.raises(RunError, match=f"PID {holder.pid}"):
            claim_run(run, overwrite=True)
    finally:
        holder.communicate("", timeout=30)
    with claim_run(run):  # released when the holder exited
        pass


def test_the_lock_is_released_after_the_run_even_on_an_error(tmp_path: Path) -> None:
    calls = []

    @exclusive_run
    def fake_train(cfg: object, run_dir: Path, *, resume: bool = False, overwrite: bool = False) -> Path:
        calls.append((resume, overwrite))
        with pytest.raises(RunError, match="another process"):  # held while it runs
            claim_run(run_dir, overwrite=True)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        fake_train(None, tmp_path / "run")
    assert calls == [(False, False)]
    claim_run(tmp_path / "run").release()  # not held any more
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # the lock file stays (see runs._lock)


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    write_atomic(path, "old: 1\n")
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RunWriteError) as e:
        write_atomic(path, "new: 2\n")
    assert str(e.value) == f"cannot write {path}: No space left on device"
    assert isinstance(e.value, OSError)
    with pytest.raises(RunWriteError, match=f"cannot write {tmp_path / 'metrics.jsonl'}: No space"):
        append_line(tmp_path / "metrics.jsonl", '{"step": 1}')
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_text() == "old: 1\n"  # the old content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "metrics.jsonl"]  # no .tmp-*


def test_append_line_fsyncs_each_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    append_line(tmp_path / "m.jsonl", "a")
    append_line(tmp_path / "m.jsonl", "b")
    assert (tmp_path / "m.jsonl").read_text() == "a\nb\n" and len(synced) == 2

