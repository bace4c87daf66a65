"""Probe (issue #19): are a task's prefixes too alike on a new domain? Amplify their differences.

`experiments/copy_prefix.py` found that even shown an exact repeat of the right support's prefix,
the LM copies its word far less often on icons (a domain the Fashion-trained mapper never saw)
than on Fashion-MNIST: the prefixes of one task look alike to the LM. Here, at test time only,
every in-context row's prefixes are pushed apart around their mean, ``mean + gamma * (p - mean)``
per prefix position (the row's images: its support and its query), then rescaled to their
original norms, so that the LM sees the task's images more distinct. Uses only the task's own
images (unlike re-estimated domain statistics, `experiments/domain_stats.py`).

    python experiments/contrast_prefix.py RUN_DIR [--dataset fashion-open-ended] [--split val]
                                          [--tasks 300] [--ways 2] [--gamma 1 2 3]  # a JSON line each
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence

import torch
from copy_prefix import ORIGINAL, probe_method, slots_by_row

from metamapper.models.metamapper import MetaMapper, PackedBatch


def contrasted_prefixes(gamma: float):  # noqa: ANN201
    """``task_prefixes`` with each row's prefixes moved apart around the row's mean by ``gamma``."""

    def task_prefixes(model: MetaMapper, features: torch.Tensor, batch: PackedBatch,
                      row_task: Sequence[int] | torch.Tensor, params: Sequence[Mapping[str, torch.Tensor]]
                      ) -> torch.Tensor:
        out = ORIGINAL(model, features, batch, row_task, params)
        if gamma == 1:
            return out
        new = out.clone()
        for slots in slots_by_row(batch):
            if len(slots) < 2:
                continue
            p = out[slots].float()  # (k, l, D)
            mean = p.mean(0, keepdim=True)
            q = mean + gamma * (p - mean)
            q = q * (p.norm(dim=-1, keepdim=True) / q.norm(dim=-1, keepdim=True).clamp(min=1e-6))
            new[slots] = q.to(out.dtype)
        return new

    return task_prefixes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--dataset", default="fashion-open-ended")
    p.add_argument("--split", default="val")
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--ways", type=int, default=2)
    p.add_argument("--gamma", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    a = p.parse_args()
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.run import evaluate_run
    from metamapper.pretrained import load_run

    run = load_run(a.run_dir, with_vision=True)
    ts = evaluation_tasks(a.dataset, data=None, ways=a.ways, shots=1, n_tasks=a.tasks, split=a.split)
    for gamma in a.gamma:
        method = probe_method(f"contrast-{gamma}", contrasted_prefixes(gamma))
        res = evaluate_run(run, ts, method=method, progress=False, with_zero_steps=False)
        print(json.dumps({"run": a.run_dir, "dataset": a.dataset, "split": a.split, "ways": a.ways,
                          "tasks": len(ts.tasks), "gamma": gamma, "accuracy": res["accuracy"],
                          "ci95": res["ci95"]}), flush=True)


if __name__ == "__main__":
    main()
