"""Who may write a run folder: one training at a time, and never into another run by mistake.

``claim_run`` is called before a training run touches its folder:

* an exclusive ``fcntl.flock`` on ``RUN/train.lock``, held for the life of the run (the kernel
  drops it when the process dies, even by SIGKILL); a second writer gets a one-line
  ``RunError`` naming the holder's PID and host;
* a folder that already holds a run (``config.yaml``, ``metrics.jsonl`` or ``checkpoints/``)
  is only trained into with ``resume=True`` (continue it) or ``overwrite=True`` (its run files
  are *moved*, not deleted, into ``RUN/replaced-YYYYmmdd-HHMMSS/``; nothing else in the folder
  is touched);
* ``resume=True`` on a folder that holds no run is an error (a mistyped path must not start a
  new run from scratch).

Under ``torchrun`` only rank 0 writes, so only rank 0 takes the lock and checks the folder; it
then tells every other rank whether it may go on (one collective that every rank joins, so an
error on rank 0 stops all ranks at once instead of leaving them waiting in their first
all-reduce).

Example::

    @exclusive_run
    def train(cfg, run_dir, *, resume=False, overwrite=False, progress=True): ...

    train(cfg, "runs/x")                   # refuses if runs/x holds a run or is being trained
    train(cfg, "runs/x", resume=True)      # continues it
    train(cfg, "runs/x", overwrite=True)   # moves the old run aside, starts again
"""

from __future__ import annotations

import fcntl
import functools
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from metamapper import distributed
from metamapper.checkpoint import CKPT_DIR, fsync_dir, list_checkpoints, write_error
from metamapper.device import resolve_device

LOCK_FILE = "train.lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", CKPT_DIR)  # what makes a folder hold a run
TENSORBOARD_DIR = "tensorboard"  # train.report_to=[tensorboard]: moved aside with the run files

F = TypeVar("F", bound=Callable[..., Path])


class RunError(ValueError):
    """A run folder that cannot be trained into as asked (in use, holds a run, holds none)."""


def has_run(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``run_dir`` holds a training run (any of ``RUN_FILES``)."""
    d = Path(run_dir)
    return any((d / name).exists() for name in RUN_FILES)


def is_finished(run_dir: str | os.PathLike[str], updates: int) -> bool:
    """Whether ``run_dir``'s newest valid checkpoint has reached update ``updates`` (False for no
    run, or one that a stop signal or ``train.max_minutes`` ended early: resume it)."""
    from metamapper.checkpoint import CheckpointError, latest_checkpoint

    try:
        return latest_checkpoint(Path(run_dir), fallback=False).step >= updates
    except CheckpointError:
        return False


def _describe(run_dir: Path) -> str:
    steps = [int(p.name[5:]) for p in list_checkpoints(run_dir)]
    return f"checkpoints up to step {max(steps)}" if steps else "no checkpoint yet"


class RunClaim:
    """The lock on one run folder; ``release()`` (or leaving the ``with`` block) lets it go."""

    def __init__(self, path: Path, fd: int | None, moved_to: Path | None = None) -> None:
        self.path = path
        self.moved_to = moved_to  # where overwrite=True moved the previous run, if anywhere
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(run_dir: Path) -> int:
    lock = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(lock, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"PID {holder[0]} on {holder[1]}" if len(holder) >= 2 else "a process"
        raise RunError(f"{run_dir} is being trained by another process ({who}, holding "
                       f"{lock}); wait for it to end, stop it, or train into another folder") from None
    except OSError as e:  # a file system without flock support
        os.close(fd)
        raise RunError(f"cannot lock {lock}: {e.strerror or e}") from None
    # the lock file itself stays (deleting it would let two processes lock two different files)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def _move_aside(run_dir: Path) -> Path:
    """Move the run files of ``run_dir`` into a new ``replaced-*`` folder inside it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = run_dir / f"replaced-{stamp}", 1
    while dest.exists():
        n += 1
        dest = run_dir / f"replaced-{stamp}-{n}"
    try:
        dest.mkdir()
        for name in (*RUN_FILES, TENSORBOARD_DIR):
            if (run_dir / name).exists():
                os.replace(run_dir / name, dest / name)  # same folder: a rename, atomic
        fsync_dir(run_dir)
    except OSError as e:
        raise write_error(dest, e) from None
    return dest


def claim_run(run_dir: str | os.PathLike[str], *, resume: bool = False,
              overwrite: bool = False) -> RunClaim:
    """Lock ``run_dir`` for one training run and check that it may be trained into as asked.

    Args:
        run_dir: the run folder (created if missing, unless ``resume``).
        resume: continue the run in the folder; it must hold one.
        overwrite: the folder may hold a run; its run files are moved into
            ``run_dir/replaced-YYYYmmdd-HHMMSS/`` (not deleted).

    Returns:
        The held claim; release it (or use it as a context manager) when the run ends.

    Raises:
        RunError: ``resume`` and ``overwrite`` together; ``resume`` without a run; a run
            without ``resume``/``overwrite``; another process training into the folder.
        RunWriteError: the folder or its lock file cannot be created.
    """
    d = Path(run_dir)
    if resume and overwrite:
        raise RunError("--resume continues a run and --overwrite replaces it: choose one")
    if resume and not has_run(d):  # checked before creating anything: a mistyped path stays absent
        raise RunError(f"cannot resume {d}: it holds no run (no config.yaml, metrics.jsonl or "
                       f"{CKPT_DIR}/); check the path, or train without --resume to start a new run")
    fd = _lock(d)
    claim = RunClaim(d, fd)
    try:
        if not resume and has_run(d):
            if not overwrite:
                raise RunError(f"{d} already holds a run ({_describe(d)}); continue it with "
                               "--resume, or pass --overwrite to move it into "
                               f"{d}/replaced-<time>/ and start again")
            claim.moved_to = _move_aside(d)
    except BaseException:
        claim.release()
        raise
    return claim


def exclusive_run(train: F) -> F:
    """Decorate a training recipe ``train(cfg, run_dir, *, resume, overwrite, ...)`` so that it
    runs under ``claim_run`` (rank 0 only; the other ranks wait for its verdict)."""

    @functools.wraps(train)
    def wrapper(cfg: Any, run_dir: str | os.PathLike[str], *, resume: bool = False,
                overwrite: bool = False, **kwargs: Any) -> Path:
        device = cfg.runtime.device if cfg is not None else None
        resolve_device(device)  # a missing device ends here, before the run folder is made
        rank, world = distributed.init_from_env(device)
        claim, error = None, None
        if rank == 0:
            try:
                claim = claim_run(run_dir, resume=resume, overwrite=overwrite)
            except (RunError, OSError) as e:
                if world == 1:
                    raise
                error = e
        if world > 1:  # every rank joins this one collective, whatever rank 0 found
            verdict = distributed.gather(None if error is None else str(error))[0]
            if error is not None:
                raise error
            if verdict is not None:
                raise RunError(verdict)
        if claim is not None and claim.moved_to is not None:
            print(f"metamapper: moved the previous run in {run_dir} to {claim.moved_to}",
                  file=sys.stderr, flush=True)
        try:
            return train(cfg, run_dir, resume=resume, overwrite=overwrite, **kwargs)
        finally:
            if claim is not None:
                claim.release()

    return wrapper  # type: ignore[return-value]
