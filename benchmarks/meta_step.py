"""Seconds per meta-update at the paper's configuration, and achieved FLOP/s vs a matmul peak.

Random-weight CLIP ViT-B/32 + GPT-2 124M, 2-way 1-shot, 5 queries per class, 4 tasks, 5 inner
steps, first-order, features from the cache (encoded once). Compares the batched path (all tasks
in one LM forward per step) with a per-task loop, in the same run. Prints one JSON line.
"""

from __future__ import annotations

import json
import time

import torch
from _paper_size import episodes, matmul_peak_flops, paper_model
from torch.utils.flop_counter import FlopCounterMode

from metamapper.meta.episode import query_rows
from metamapper.meta.maml import InnerLoop, adapt, meta_loss


def main() -> None:
    model = paper_model()
    model.train()
    eps, _ = episodes(model, tasks=4, ways=2, shots=1, queries_per_class=5)
    loop = InnerLoop(steps=5, lr=0.01, first_order=True)
    opt = torch.optim.AdamW(model.mapper.parameters(), lr=1e-3)

    def meta_update(batched: bool) -> None:
        traj = adapt(model, eps, loop=loop, batched=batched)
        loss = meta_loss(model, eps, traj, query_rows, batched=batched)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.mapper.parameters(), 1.0)
        opt.step()

    def timed(batched: bool, n: int = 3) -> float:
        meta_update(batched)  # warm-up
        best = float("inf")
        for _ in range(n):
            t = time.perf_counter()
            meta_update(batched)
            best = min(best, time.perf_counter() - t)
        return best

    s_batched = timed(True)
    s_loop = timed(False)
    with FlopCounterMode(display=False) as fc:
        meta_update(True)
    flops = fc.get_total_flops()
    peak = matmul_peak_flops()
    achieved = flops / s_batched
    print(json.dumps({
        "benchmark": "meta_step",
        "config": "clip-vit-b32-random + gpt2-random, 2-way 1-shot, 5 queries/class, 4 tasks, "
                  "5 inner steps, first-order, cached features",
        "s_per_meta_update_batched": round(s_batched, 3),
        "s_per_meta_update_per_task_loop": round(s_loop, 3),
        "batched_speedup": round(s_loop / s_batched, 2),
        "gflop_per_meta_update": round(flops / 1e9, 2),
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "fraction_of_peak": round(achieved / peak, 3),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
