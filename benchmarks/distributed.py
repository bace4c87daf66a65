"""Meta-updates/s with 1 and 2 processes (torchrun, Gloo, CPU) on tiny backbones.

Both runs use the whole machine: one process with 2 threads vs two processes with 1 thread each.
The rate is measured between the first and the last logged update (start-up excluded).
Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPDATES = 30
ARGS = ["-m", "metamapper.cli", "train", "--config", str(ROOT / "configs" / "smoke.yaml"),
        f"train.updates={UPDATES}", "train.meta_batch=16", "train.val_every=0",
        f"train.checkpoint_every={UPDATES}", "backbones.lm=tiny-lm"]


def rate(run_dir: Path) -> float:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    first, last = steps[0], steps[-1]
    return (last["step"] - first["step"]) / (last["time_s"] - first["time_s"])


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "METAMAPPER_CACHE": str(tmp / "cache")}
    cache = f"data.feature_cache={tmp / 'features'}"
    one = tmp / "one"
    subprocess.run([sys.executable, *ARGS, "--out", str(one), cache], check=True, cwd=ROOT,
                   env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True)
    two = tmp / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", *ARGS, "--out", str(two), cache], check=True, cwd=ROOT,
                   env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True)
    r1, r2 = rate(one), rate(two)
    print(json.dumps({
        "benchmark": "distributed",
        "config": "smoke.yaml (tiny-clip + tiny-lm), in-context, meta_batch 16, Gloo on CPU",
        "updates_per_s_1_process": round(r1, 3),
        "updates_per_s_2_processes": round(r2, 3),
        "speedup": round(r2 / r1, 3),
        "scaling_efficiency": round(r2 / r1 / 2, 3),
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
