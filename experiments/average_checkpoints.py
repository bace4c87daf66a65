"""Average the mapper weights of some of a run's checkpoints into a new run folder.

The result is an inference checkpoint (no optimizer state) that ``metamapper evaluate`` reads:

    python experiments/average_checkpoints.py runs/fashion runs/fashion_avg 100 150
    metamapper evaluate --checkpoint runs/fashion_avg --dataset fashion-open-ended --ways 2 --shots 1 --tasks 1000
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from metamapper.checkpoint import (
    CheckpointError,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
)


def average_checkpoints(run: Path, out: Path, steps: list[int]) -> Path:
    """Write the mean of the weights of ``run``'s checkpoints at ``steps`` into ``out``."""
    by_step = {c.step: c for c in map(read_checkpoint, list_checkpoints(run))}  # checksums verified
    missing = [s for s in steps if s not in by_step]
    if missing:
        raise CheckpointError(f"{run} has no checkpoint at steps {missing} (it has {sorted(by_step)})")
    weights = [by_step[s].weights for s in steps]
    meta = dict(by_step[steps[-1]].meta)
    for key in ("step", "sha256", "trainer_sha256"):  # rewritten by save_checkpoint
        meta.pop(key, None)
    mean = {k: (sum(w[k].to(torch.float64) for w in weights) / len(weights)).to(weights[0][k].dtype)
            for k in weights[0]}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "config.yaml", out / "config.yaml")
    return save_checkpoint(out, step=steps[-1], weights=mean, meta=meta, keep_last=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder with checkpoints/")
    ap.add_argument("out", type=Path, help="new run folder")
    ap.add_argument("steps", type=int, nargs="+", help="checkpoint steps to average")
    a = ap.parse_args()
    try:
        print(average_checkpoints(a.run, a.out, a.steps))
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
