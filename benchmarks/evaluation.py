"""Benchmark: meta-test throughput of the embedded default (tasks per second), the frozen LM in
float32 against bfloat16, and what the LM head's contiguous input (``backbones._contiguous_input``)
is worth in each.

The default backbones (EfficientNet-Lite0 + SmolLM2-135M) with an untrained default mapper (the
rate does not depend on the mapper's weights), Fashion-MNIST's held-out-class test tasks, 2-way
1-shot, two queries per task, answered in context as ``metamapper evaluate`` does (the features
from the cache; ``eval.batch_tasks`` tasks per generation). Needs the Fashion-MNIST files
(``make fashion``). Prints one JSON line: tasks/s for each dtype with and without the fix, and
the ratios, all measured in this one run.

Run::

    python benchmarks/evaluation.py [--tasks 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _hardware import device_name

from metamapper.config import Config
from metamapper.data.feature_table import FeatureTable
from metamapper.data.sources import evaluation_tasks
from metamapper.device import resolve_device, setup_device, synchronize
from metamapper.eval.fewshot import evaluate
from metamapper.methods import get_method
from metamapper.models import backbones
from metamapper.models.factory import build_model, set_lm_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--tasks", type=int, default=128, help="test tasks per measurement")
    args = parser.parse_args()
    device = setup_device(resolve_device(args.device))
    cfg = Config()
    torch.manual_seed(0)
    model = build_model(cfg.backbones, cfg.mapper, device=device)
    ts = evaluation_tasks("fashion-open-ended", data=None, ways=2, shots=1, n_tasks=args.tasks)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, ts.images, keys, root=cfg.data.feature_cache,
                                    progress=False)
    head = model.lm.head

    def rate(dtype: str, fixed: bool) -> float:
        set_lm_dtype(model, dtype)
        hooks = dict(head._forward_pre_hooks)
        if not fixed:
            head._forward_pre_hooks.clear()
        try:
            run = lambda n: evaluate(model, ts.tasks[:n], table, method=get_method("in_context"),  # noqa: E731
                                     batch_tasks=cfg.eval.batch_tasks, progress=False)
            run(cfg.eval.batch_tasks)  # warm-up
            synchronize(device)
            t = time.perf_counter()
            run(len(ts.tasks))
            synchronize(device)
            return len(ts.tasks) / (time.perf_counter() - t)
        finally:
            head._forward_pre_hooks.update(hooks)

    assert any(h is backbones._contiguous_input for h in head._forward_pre_hooks.values())
    out: dict[str, object] = {"benchmark": "evaluation", "config": "default backbones, untrained "
                              "default mapper, Fashion-MNIST held-out classes, 2-way 1-shot, in_context",
                              "tasks": len(ts.tasks)}
    for dtype in ("float32", "bfloat16"):
        fast, slow = rate(dtype, True), rate(dtype, False)
        out[f"tasks_per_s_{dtype}"] = round(fast, 2)
        out[f"tasks_per_s_{dtype}_strided_head_input"] = round(slow, 2)
        out[f"head_fix_speedup_{dtype}"] = round(fast / slow, 2)
    out["bfloat16_speedup"] = round(out["tasks_per_s_bfloat16"] / out["tasks_per_s_float32"], 2)  # type: ignore[operator]
    out.update(device=str(device), device_name=device_name(device), threads=torch.get_num_threads(),
               cpu_capability=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
