"""Checkpoints: the mapper as safetensors + a JSON record, written atomically, checksummed.

A run folder holds ``config.yaml`` and ``checkpoints/step-NNNNNNN/`` folders, each with
``mapper.safetensors`` (the only trained weights), ``meta.json`` (step, method, backbone
identities, dimensions, the SHA-256 of the weights) and, for resuming, ``trainer.pt`` (optimizer,
scheduler and RNG states). A checkpoint folder appears whole or not at all (written in a temporary
folder, then renamed); a temporary folder left by a killed writer is never read and is removed
by the next save. Pruning to the last ``keep_last`` never removes the checkpoint just written.
Loading for inference needs only safetensors and the JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CKPT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A missing, corrupt or incompatible checkpoint (message names the path)."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
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


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    step: int,
    weights: dict[str, torch.Tensor],
    meta: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write ``checkpoints/step-{step}`` atomically and prune all but the last ``keep_last``.

    One process writes a run's checkpoints, so temporary folders it finds are leftovers of a
    killed save and are removed. ``keep_last`` counts the new checkpoint; 0 keeps everything.
    """
    for k, v in weights.items():
        if not torch.isfinite(v).all():
            raise CheckpointError(f"refusing to write a checkpoint with non-finite weights in {k!r}")
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # a save killed half-way
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / "mapper.safetensors")
        record = dict(meta, step=step, sha256=_sha256(tmp / "mapper.safetensors"))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer.pt")
            record["trainer_sha256"] = _sha256(tmp / "trainer.pt")
        (tmp / "meta.json").write_text(json.dumps(record, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep_last > 0:
        # The new one always stays, even when newer (corrupt, skipped on resume) steps exist.
        older = [p for p in list_checkpoints(run_dir) if p != final]
        for old in older[: max(0, len(older) - (keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def read_checkpoint(path: str | os.PathLike[str], *, trainer: bool = False) -> Checkpoint:
    """Read and verify one checkpoint folder (raises ``CheckpointError`` naming what is wrong)."""
    p = Path(path)
    meta_file, weights_file = p / "meta.json", p / "mapper.safetensors"
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if not meta_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} is incomplete (meta.json or mapper.safetensors missing)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8
        raise CheckpointError(f"checkpoint {str(meta_file)!r} is corrupt: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"checkpoint {str(meta_file)!r} is corrupt (no integer 'step')")
    if meta.get("sha256") != _sha256(weights_file):
        raise CheckpointError(f"checkpoint {str(weights_file)!r} is corrupt (checksum mismatch)")
    try:
        weights = load_file(str(weights_file))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {str(weights_file)!r} is unreadable: {e}") from None
    if trainer:
        tfile = p / "trainer.pt"
        if not tfile.is_file() or meta.get("trainer_sha256") != _sha256(tfile):
            raise CheckpointError(f"checkpoint {str(p)!r} has no valid trainer state for resuming")
    return Checkpoint(path=p, step=int(meta["step"]), meta=meta, weights=weights)


def latest_checkpoint(run_dir: str | os.PathLike[str], *, trainer: bool = False) -> Checkpoint:
    """The newest valid checkpoint of a run; corrupt newer ones are skipped with a warning."""
    import warnings

    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"run folder {str(run)!r} does not exist")
    errors = []
    for path in reversed(list_checkpoints(run)):
        try:
            return read_checkpoint(path, trainer=trainer)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            errors.append(str(e))
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise CheckpointError(f"run folder {str(run)!r} has no valid checkpoint{detail}")


def load_trainer_state(ckpt: Checkpoint) -> dict[str, Any]:
    """The optimizer/scheduler/RNG states saved beside the weights, on the CPU whatever device
    wrote them (``Optimizer.load_state_dict`` then moves the state to its parameters' device)."""
    return torch.load(ckpt.path / "trainer.pt", weights_only=False, map_location="cpu")


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
