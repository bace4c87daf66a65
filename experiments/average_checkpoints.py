"""Average the mapper weights of some of a run's checkpoints into a new run folder.

The result is an inference checkpoint (no optimizer state) that ``metamapper evaluate`` reads:

    python experiments/average_checkpoints.py runs/fashion runs/fashion_avg 100 150
    metamapper evaluate --checkpoint runs/fashion_avg --dataset fashion-open-ended --ways 2 --shots 1 --tasks 1000
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from metamapper.checkpoint import save_checkpoint


def average_checkpoints(run: Path, out: Path, steps: list[int]) -> Path:
    """Write the mean of the weights of ``run``'s checkpoints at ``steps`` into ``out``."""
    folders = [run / "checkpoints" / f"step-{s:07d}" for s in steps]
    for f in folders:
        if not (f / "mapper.safetensors").is_file():
            raise SystemExit(f"error: {f} has no mapper.safetensors")
    weights = [load_file(str(f / "mapper.safetensors")) for f in folders]
    meta = json.loads((folders[-1] / "meta.json").read_text())
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
    print(average_checkpoints(a.run, a.out, a.steps))


if __name__ == "__main__":
    main()
