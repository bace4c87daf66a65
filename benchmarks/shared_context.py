"""Benchmark: in-context evaluation with each task's support context computed once for all its
queries (``models.generation.SharedContext``) against once per query, and whether the answers
agree.

In-context evaluation repeats a task's whole support set (its images' prefixes and captions)
before each of the task's queries, so at N ways with one query per class the LM prefills the same
context N times. Shared, the context goes through the LM once per task and its KV cache serves
every query. A trained run (``--run``, e.g. a ``metamapper train`` folder) or the default
backbones with an untrained default mapper (the rate does not depend on the mapper's weights; the
answers then say nothing of accuracy). Fashion-MNIST's held-out-class test tasks (``make
fashion``). Prints one JSON line: tasks/s with and without sharing, the ratio, and the share of
queries answered identically, all measured in this one run.

Run::

    python benchmarks/shared_context.py [--run RUN] [--ways 4] [--shots 5] [--tasks 32]
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import torch
from _hardware import device_name

from metamapper.config import Config
from metamapper.data.feature_table import FeatureTable
from metamapper.data.sources import evaluation_tasks
from metamapper.device import resolve_device, setup_device, synchronize
from metamapper.eval.fewshot import evaluate
from metamapper.loading import load_run
from metamapper.methods import get_method
from metamapper.models.factory import build_model, set_lm_dtype
from metamapper.models.generation import SharedContext
from metamapper.models.metamapper import MetaMapper


def _unshared(self: MetaMapper, rows: object, groups: list[int]) -> SharedContext:
    """Every row alone (its BOS as its context): the computation before sharing."""
    return SharedContext(leader=list(range(len(groups))), length=[1] * len(groups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run (default: an untrained default mapper)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--ways", type=int, default=4)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=32, help="test tasks per measurement")
    parser.add_argument("--lm-dtype", choices=("float32", "bfloat16"),
                        help="the frozen LM's dtype (default: the run's, or bfloat16 where the CPU has it)")
    args = parser.parse_args()
    device = setup_device(resolve_device(args.device))
    if args.run:
        run = load_run(args.run, device=device)
        model, cfg = run.model, run.config
    else:
        cfg = Config()
        torch.manual_seed(0)
        model = build_model(cfg.backbones, cfg.mapper, device=device)
        set_lm_dtype(model, "bfloat16" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "float32")
    if args.lm_dtype:
        set_lm_dtype(model, args.lm_dtype)
    ts = evaluation_tasks("fashion-open-ended", data=None, ways=args.ways, shots=args.shots, n_tasks=args.tasks)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, ts.images, keys, root=cfg.data.feature_cache, progress=False)

    def answers() -> tuple[float, list[str]]:
        run = lambda tasks: evaluate(model, tasks, table, method=get_method("in_context"),  # noqa: E731
                                     batch_tasks=cfg.eval.batch_tasks, progress=False, samples=True)
        run(ts.tasks[:2])  # warm-up
        synchronize(device)
        t = time.perf_counter()
        res = run(ts.tasks)
        synchronize(device)
        return len(ts.tasks) / (time.perf_counter() - t), [s["prediction"] for s in res.samples or []]

    shared_rate, shared = answers()
    with mock.patch.object(MetaMapper, "shared_context", _unshared):
        alone_rate, alone = answers()
    same = sum(a == b for a, b in zip(shared, alone, strict=True)) / len(alone)
    print(json.dumps({
        "benchmark": "shared_context", "run": args.run or "untrained default mapper",
        "config": f"Fashion-MNIST held-out classes, {args.ways}-way {args.shots}-shot, in_context",
        "tasks": len(ts.tasks), "lm_dtype": str(next(model.lm.model.parameters()).dtype).removeprefix("torch."),
        "tasks_per_s_shared": round(shared_rate, 2), "tasks_per_s_unshared": round(alone_rate, 2),
        "speedup": round(shared_rate / alone_rate, 2), "same_answers": round(same, 4),
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
