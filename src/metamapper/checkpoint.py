"""Checkpoints: the mapper as safetensors + a JSON record, written atomically, checksummed.

A run folder holds ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/step-NNNNNNN/`` folders,
each with ``mapper.safetensors`` (the only trained weights), ``meta.json`` (step, method, backbone
identities, dimensions, the config, the SHA-256 of the weights, the validation accuracy when the
step was validated) and, for resuming, ``trainer.pt`` (optimizer, scheduler and RNG states).

* A checkpoint folder appears whole or not at all: it is written in a temporary ``.tmp-*``
  folder, fsynced, then renamed; a temporary folder left by a killed writer is never read and is
  removed by the next save (one writer per run: ``metamapper.runs`` holds the lock).
* Every other run file is written with ``write_atomic`` (temporary file, fsync, rename) or
  appended with ``append_line`` (fsync per record). An ``OSError`` (disk full, permission,
  read-only file system) becomes a ``RunWriteError`` whose one-line message names the file and
  the cause; the checkpoints already on disk stay as they were.
* Pruning keeps the last ``keep_last`` (and, with ``keep_best``, the one of the best validation
  accuracy); a pruned folder is first renamed to ``.tmp-*`` and only then deleted, so a kill
  half-way never leaves a half ``step-*`` folder.
* ``trainer.pt`` is read with ``torch.load(weights_only=True)``: tensors, plain Python data and
  NumPy arrays (the NumPy RNG state) only, so a planted file cannot run code (its checksum sits
  in the same folder and proves nothing).

Loading for inference needs only safetensors and the JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from metamapper._version import __version__
from metamapper.downloads import sha256_file

CKPT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A missing, corrupt or incompatible checkpoint (message names the path)."""


class RunWriteError(OSError):
    """A run file that could not be written (disk full, permission, read-only file system).

    The message is one line: ``cannot write PATH: CAUSE``.
    """


@dataclass
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(path: str | os.PathLike[str], e: OSError) -> RunWriteError:
    """``RunWriteError("cannot write PATH: CAUSE")`` for an ``OSError`` met while writing ``path``."""
    cause = e.strerror or str(e) or type(e).__name__
    return RunWriteError(f"cannot write {os.fspath(path)}: {cause}")


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file (no rename: the caller publishes it)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically: a temporary file beside it, fsync, rename.

    A reader sees the old content or the new one, never a mix; after a crash, a
    ``.tmp-NAME-*`` file may be left beside it (never read).

    Raises:
        RunWriteError: the file could not be written (the old content, if any, is kept).
    """
    p = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    tmp = p.with_name(f".tmp-{p.name}-{uuid.uuid4().hex[:8]}")
    try:
        _write_file(tmp, blob)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(p, e) from None
    fsync_dir(p.parent)


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to ``path`` and fsync it (an append-only log such as ``metrics.jsonl``).

    A crash can at worst cut the last line; readers drop a line that does not parse.

    Raises:
        RunWriteError: the line could not be written.
    """
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e) from None


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``; an existing ``final`` is replaced (and
    restored if the rename fails)."""
    old = None
    if final.exists():
        old = final.with_name(f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    step: int,
    weights: dict[str, torch.Tensor],
    meta: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    keep_last: int = 3,
    keep_best: bool = False,
    val_accuracy: float | None = None,
) -> Path:
    """Write ``checkpoints/step-{step}`` atomically and prune all but the last ``keep_last``.

    Args:
        run_dir: the run folder.
        step: the update the weights are from.
        weights: the trained tensors (saved as safetensors).
        meta: what to record beside them (JSON-ready); ``step``, ``sha256`` and
            ``trainer_sha256`` are added.
        trainer_state: optimizer/scheduler/RNG states for resuming (tensors, plain Python data
            and NumPy arrays only: see ``load_trainer_state``).
        keep_last: checkpoints kept, the new one included; 0 keeps everything.
        keep_best: also keep the checkpoint of the best ``val_accuracy`` (``best_checkpoint``).
        val_accuracy: the validation accuracy of these weights, if validated at this step.

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointError: a non-finite weight (nothing is written).
        RunWriteError: the disk is full or not writable; the checkpoints already on disk are
            kept as they were and no temporary folder is left.

    One process writes a run's checkpoints (``metamapper.runs`` holds the run's lock), so
    temporary folders it finds are leftovers of a killed save or prune and are removed.
    """
    for k, v in weights.items():
        if not torch.isfinite(v).all():
            raise CheckpointError(f"refusing to write a checkpoint with non-finite weights in {k!r}")
    root = Path(run_dir) / CKPT_DIR
    final = root / f"step-{step:07d}"
    record = dict(meta, step=step)
    if val_accuracy is not None:
        record["val_accuracy"] = float(val_accuracy)
    # serialise in memory first: the files are then written with plain writes, whose errors
    # are OSErrors naming the cause (torch.save's own writer says only "file write failed")
    blob = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in weights.items()})
    record["sha256"] = hashlib.sha256(blob).hexdigest()
    state_blob = None
    if trainer_state is not None:
        buf = io.BytesIO()
        torch.save(trainer_state, buf)
        state_blob = buf.getvalue()
        record["trainer_sha256"] = hashlib.sha256(state_blob).hexdigest()
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # a save or prune killed half-way
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        _save_weights(blob, tmp / "mapper.safetensors")
        if state_blob is not None:
            _write_file(tmp / "trainer.pt", state_blob)
        _write_file(tmp / "meta.json", json.dumps(record, indent=2).encode())
        fsync_dir(tmp)
        _publish(tmp, final)
    except OSError as e:
        raise RunWriteError(f"cannot write checkpoint {final}: {e.strerror or e}; the checkpoints "
                            f"already in {root} are intact") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    if keep_last > 0:
        _prune(run_dir, final, keep_last, keep_best)
    return final


def _save_weights(blob: bytes, path: Path) -> None:
    """Write the serialised weights (a function of its own: the stop tests slow it down)."""
    _write_file(path, blob)


def _prune(run_dir: str | os.PathLike[str], new: Path, keep_last: int, keep_best: bool) -> None:
    # The new one always stays, even when newer (corrupt, skipped on resume) steps exist.
    ckpts = list_checkpoints(run_dir)
    older = [p for p in ckpts if p != new]
    keep = {new, *older[len(older) - (keep_last - 1):]} if keep_last > 1 else {new}
    best = best_checkpoint(run_dir) if keep_best else None
    if best is not None:
        keep.add(best)
    for old in ckpts:
        if old in keep:
            continue
        # rename first: a kill during the deletion leaves a .tmp-* folder (never read, removed by
        # the next save), not a step folder missing its weights
        trash = old.with_name(f".tmp-pruned-{old.name}")
        try:
            os.replace(old, trash)
        except OSError:
            continue  # an old checkpoint that stays is harmless
        shutil.rmtree(trash, ignore_errors=True)


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def _read_meta(meta_file: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8
        raise CheckpointError(f"checkpoint {str(meta_file)!r} is corrupt: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"checkpoint {str(meta_file)!r} is corrupt (no integer 'step')")
    return meta


def read_checkpoint(path: str | os.PathLike[str], *, trainer: bool = False) -> Checkpoint:
    """Read and verify one checkpoint folder (raises ``CheckpointError`` naming what is wrong)."""
    p = Path(path)
    meta_file, weights_file = p / "meta.json", p / "mapper.safetensors"
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if not meta_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} is incomplete (meta.json or mapper.safetensors missing)")
    meta = _read_meta(meta_file)
    blob = weights_file.read_bytes()  # hashed and loaded from the same bytes: read once, and what
    if meta.get("sha256") != hashlib.sha256(blob).hexdigest():  # was checked is what is loaded
        raise CheckpointError(f"checkpoint {str(weights_file)!r} is corrupt (checksum mismatch)")
    try:
        weights = safetensors_load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {str(weights_file)!r} is unreadable: {e}") from None
    if trainer:
        tfile = p / "trainer.pt"
        if not tfile.is_file() or meta.get("trainer_sha256") != sha256_file(tfile):
            raise CheckpointError(f"checkpoint {str(p)!r} has no valid trainer state for resuming")
    return Checkpoint(path=p, step=int(meta["step"]), meta=meta, weights=weights)


def latest_checkpoint(run_dir: str | os.PathLike[str], *, trainer: bool = False,
                      fallback: bool = True) -> Checkpoint:
    """The newest valid checkpoint of a run.

    Args:
        run_dir: the run folder.
        trainer: also require a valid trainer state (for resuming).
        fallback: skip corrupt newer checkpoints with a warning (resuming re-creates the steps
            after the one it continues from); ``False``: a corrupt newest checkpoint is an error
            (evaluation must not silently report an older step).

    Raises:
        CheckpointError: no run folder, no valid checkpoint, or (``fallback=False``) a corrupt
            newest one.
    """
    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"run folder {str(run)!r} does not exist")
    errors = []
    ckpts = list_checkpoints(run)
    for path in reversed(ckpts):
        try:
            return read_checkpoint(path, trainer=trainer)
        except CheckpointError as e:
            if not fallback:
                steps = ", ".join(p.name[5:].lstrip("0") or "0" for p in ckpts[:-1]) or "none"
                raise CheckpointError(
                    f"the newest checkpoint of {run} is unusable: {e}; choose a step with --step "
                    f"(others: {steps}) or pass --allow-fallback to use the newest valid one") from None
            warnings.warn(f"skipping {e}", stacklevel=2)
            errors.append(str(e))
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise CheckpointError(f"run folder {str(run)!r} has no valid checkpoint{detail}")


def best_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder with the highest ``val_accuracy`` in its ``meta.json`` (the newest
    of equals), or ``None`` when no checkpoint of the run was validated.

    Only ``meta.json`` is read (the weights are checked when the checkpoint is loaded). Derived
    from what is on disk, so it cannot disagree with it: pruning with ``keep_best`` never
    removes the best, so this is the best of every validated checkpoint the run wrote.
    """
    best, best_acc = None, -float("inf")
    for path in list_checkpoints(run_dir):
        try:
            acc = _read_meta(path / "meta.json").get("val_accuracy")
        except CheckpointError:
            continue
        if isinstance(acc, (int, float)) and acc >= best_acc:
            best, best_acc = path, float(acc)
    return best


def select_checkpoint(path: str | os.PathLike[str], step: str | int | None = None, *,
                      allow_fallback: bool = False) -> Checkpoint:
    """The checkpoint that evaluation, prediction and the web demo use.

    Args:
        path: a run folder, or one ``checkpoints/step-*`` folder.
        step: ``"latest"`` (default), ``"best"`` (highest validation accuracy, see
            ``best_checkpoint``) or a step number; only with a run folder.
        allow_fallback: with ``latest``, use the newest *valid* checkpoint when the newest is
            corrupt (with a warning) instead of failing.

    Raises:
        CheckpointError: a missing run or step, a corrupt checkpoint, no validated checkpoint
            for ``best``; the message names the path.

    Example::

        >>> select_checkpoint("runs/demo", "best").meta["val_accuracy"]
        0.8
    """
    p = Path(path)
    if (p / "meta.json").is_file():  # a checkpoint folder itself
        if step is not None:
            raise CheckpointError(f"{p} is a checkpoint folder; --step chooses among a run "
                                  f"folder's checkpoints (give {p.parent.parent})")
        return read_checkpoint(p)
    if not p.exists():
        raise CheckpointError(f"run folder {str(p)!r} does not exist")
    choice = "latest" if step is None else str(step).strip().lower()
    if choice == "latest":
        return latest_checkpoint(p, fallback=allow_fallback)
    if choice == "best":
        best = best_checkpoint(p)
        if best is None:
            raise CheckpointError(f"run {p} has no validated checkpoint (train.val_every=0, or "
                                  "trained before train.keep_best): use --step latest or a number")
        return read_checkpoint(best)
    if not choice.isdigit():
        raise CheckpointError(f"--step must be best, latest or a step number, got {step!r}")
    want = p / CKPT_DIR / f"step-{int(choice):07d}"
    if not want.is_dir():
        have = ", ".join(c.name[5:].lstrip("0") or "0" for c in list_checkpoints(p)) or "none"
        raise CheckpointError(f"run {p} has no checkpoint of step {int(choice)} (it has: {have})")
    return read_checkpoint(want)


# What trainer.pt may hold besides tensors and plain Python data: NumPy arrays (the NumPy RNG
# state), as Hugging Face Trainer allows for its RNG files. No other global is reachable.
_NUMPY_CORE = getattr(np, "_core", None) or np.core
_TRAINER_STATE_GLOBALS = [_NUMPY_CORE.multiarray._reconstruct, np.ndarray, np.dtype,
                          type(np.dtype(np.uint32))]


def load_trainer_state(ckpt: Checkpoint) -> dict[str, Any]:
    """The optimizer/scheduler/RNG states saved beside the weights.

    Read with ``torch.load(weights_only=True)`` and an explicit allowlist (NumPy arrays), so a
    planted ``trainer.pt`` cannot run code even when its checksum matches.

    Raises:
        CheckpointError: the file holds anything else (names the file and the refused global).
    """
    path = ckpt.path / "trainer.pt"
    try:
        with torch.serialization.safe_globals(_TRAINER_STATE_GLOBALS):
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # pickle.UnpicklingError for a refused global, RuntimeError for a bad file
        # name the refused global, not torch's advice to allowlist it
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        reason = f"it wants {found.group(1)}" if found else (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"refusing to load {path}: it holds more than tensors and plain data "
                              f"({reason}); resume only runs you trust") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"refusing to load {path}: not a trainer state (a {type(state).__name__})")
    return state


class _HasCheckpoint(Protocol):
    path: Path
    meta: dict[str, Any]


def checkpoint_record(ckpt: _HasCheckpoint) -> dict[str, Any]:
    """Where a result comes from: run folder, checkpoint step and checksum, version, the arithmetic
    it was trained in, config.

    ``ckpt``: a ``Checkpoint`` or anything with its ``path`` and ``meta`` (``LoadedRun``).

    Example::

        >>> checkpoint_record(read_checkpoint("runs/demo/checkpoints/step-0000129"))["step"]
        129
    """
    path = Path(ckpt.path).resolve()
    run = path.parent.parent if path.parent.name == CKPT_DIR else path
    return {"run": str(run), "checkpoint": str(path), "step": ckpt.meta.get("step"),
            "sha256": ckpt.meta.get("sha256"), "metamapper_version": __version__,
            "arithmetic": ckpt.meta.get("arithmetic"), "config": ckpt.meta.get("config")}


def checkpoint_config(ckpt: _HasCheckpoint) -> dict[str, Any]:
    """The config a checkpoint was trained with (``meta.json``'s ``config``).

    Raises:
        CheckpointError: ``meta.json`` has no config mapping (names the file).
    """
    cfg = ckpt.meta.get("config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {Path(ckpt.path) / 'meta.json'} has no 'config' mapping "
                              "(not written by metamapper train?)")
    return cfg


def check_compatible(meta: dict[str, Any], *, vision: str | None, lm: str, visual_dim: int,
                     embed_dim: int, where: str) -> None:
    """Refuse a checkpoint trained with other backbones (identities or dimensions differ)."""
    problems = []
    if meta.get("lm_identity") != lm:
        problems.append(f"language model {meta.get('lm_identity')!r} != {lm!r}")
    if vision is not None and meta.get("vision_identity") not in (None, vision):
        problems.append(f"vision encoder {meta.get('vision_identity')!r} != {vision!r}")
    if meta.get("visual_dim") != visual_dim or meta.get("embed_dim") != embed_dim:
        problems.append(
            f"dimensions visual {meta.get('visual_dim')}/embed {meta.get('embed_dim')} != "
            f"{visual_dim}/{embed_dim}"
        )
    if problems:
        raise CheckpointError(f"checkpoint {where} was trained with other backbones: " + "; ".join(problems))
