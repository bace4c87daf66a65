"""Meta-updates/s with 1 and 2 processes (torchrun, Gloo, CPU).

Two language models: ``tiny-lm`` (overhead-bound: all-reduce and Python dominate) and
``gpt2-random`` (GPT-2 124M architecture: compute-bound, the case distribution is for).
Three runs per model: one process with 1 thread (one worker's share of the machine), two
processes with 1 thread each (scaling efficiency = rate / (2 x the 1-thread rate)), and one
process with 2 threads (the same cores used by intra-op threads instead of ranks). The rate is
measured between the first and the last logged update (start-up excluded).
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
UPDATES = {"tiny-lm": 30, "gpt2-random": 6}


def train_args(lm: str) -> list[str]:
    n = UPDATES[lm]
    return ["-m", "metamapper.cli", "train", "--config", str(ROOT / "configs" / "smoke.yaml"),
            f"train.updates={n}", "train.meta_batch=16", "train.val_every=0",
            f"train.checkpoint_every={n}", f"backbones.lm={lm}"]


def rate(run_dir: Path) -> float:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    first, last = steps[0], steps[-1]
    return (last["step"] - first["step"]) / (last["time_s"] - first["time_s"])


def measure(tmp: Path, lm: str, processes: int, threads: int) -> float:
    env = {**os.environ, "METAMAPPER_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": str(threads)}
    out = tmp / f"{lm}-{processes}x{threads}"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(processes)] if processes > 1 else []
    subprocess.run([sys.executable, *launcher, *train_args(lm), "--out", str(out),
                    f"data.feature_cache={tmp / 'features'}"], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    return rate(out)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    out: dict[str, object] = {
        "benchmark": "distributed",
        "config": "smoke.yaml (tiny-clip features), in_context, meta_batch 16, Gloo on CPU",
    }
    for lm in UPDATES:
        r1 = measure(tmp, lm, 1, 1)
        r2 = measure(tmp, lm, 2, 1)
        r1t2 = measure(tmp, lm, 1, 2)
        out[lm] = {"updates_per_s_1_process_1_thread": round(r1, 3),
                   "updates_per_s_2_processes_1_thread": round(r2, 3),
                   "updates_per_s_1_process_2_threads": round(r1t2, 3),
                   "speedup_2_processes": round(r2 / r1, 3),
                   "scaling_efficiency": round(r2 / r1 / 2, 3)}
    out["cores"] = os.cpu_count()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
