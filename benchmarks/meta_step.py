"""Seconds per meta-update at the paper's configuration, peak memory, and achieved TFLOP/s.

Random-weight CLIP ViT-B/32 + GPT-2 124M, 2-way (``--ways``) 1-shot, 5 queries per class,
4 tasks, 5 first-order inner steps, features from the cache (encoded once, on the device; the
encoder is then freed, as only cached features are used). The batched path (all tasks in one LM
forward per step); ``--compare-loop`` also times a per-task loop in the same run. Prints one JSON
line, with the projected wall time of 15 000 meta-updates (a paper-config run).

Run::

    python benchmarks/meta_step.py [--device cuda] [--ways 5] [--precision float32] [--compile]
"""

from __future__ import annotations

import argparse
import gc
import json

import torch
from _hardware import (
    PAPER_UPDATES,
    add_device_args,
    compile_lm,
    hardware,
    reset_peak_memory,
    setup,
    timed,
)
from _paper_size import episodes, matmul_peak_flops, paper_model
from torch.utils.flop_counter import FlopCounterMode

from metamapper.meta.episode import query_rows
from metamapper.meta.maml import InnerLoop, adapt, meta_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser, repeats=3)
    parser.add_argument("--ways", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--compare-loop", action="store_true", help="also time a per-task loop")
    args = parser.parse_args()
    device = setup(args)
    model = paper_model(device, args.precision)
    model.train()
    eps, _ = episodes(model, tasks=args.tasks, ways=args.ways, shots=1, queries_per_class=5)
    model.vision = None  # training reads cached features only
    gc.collect()
    loop = InnerLoop(steps=5, lr=0.01, first_order=True)
    opt = torch.optim.AdamW(model.mapper.parameters(), lr=1e-3)

    def meta_update(batched: bool = True) -> None:
        traj = adapt(model, eps, loop=loop, batched=batched, trajectory=False)
        loss = meta_loss(model, eps, traj, query_rows, batched=batched)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.mapper.parameters(), 1.0)
        opt.step()

    with FlopCounterMode(display=False) as fc:  # counted eagerly: compiling changes no FLOP
        meta_update()
    flops = fc.get_total_flops()
    if args.compile:
        compile_lm(model)
    reset_peak_memory(device)
    best, median = timed(meta_update, device, args.repeats)
    out = {
        "benchmark": "meta_step",
        "config": f"clip-vit-b32-random + gpt2-random, {args.ways}-way 1-shot, 5 queries/class, "
                  f"{args.tasks} tasks, 5 inner steps, first-order, cached features",
        "s_per_meta_update": round(best, 4),
        "s_per_meta_update_median": round(median, 4),
        "repeats": args.repeats,
        "gflop_per_meta_update": round(flops / 1e9, 2),
        f"projected_hours_{PAPER_UPDATES}_updates": round(best * PAPER_UPDATES / 3600, 2),
        **hardware(device, flops=flops, seconds=best, precision=args.precision, compiled=args.compile),
    }
    if args.compare_loop:
        s_loop, _ = timed(lambda: meta_update(False), device, args.repeats)
        out.update(s_per_meta_update_per_task_loop=round(s_loop, 4), batched_speedup=round(s_loop / best, 2))
    if device.type == "cpu":  # a CPU has no tensor-core table: compare with its own matmul rate
        peak = matmul_peak_flops()
        out.update(matmul_peak_gflops=round(peak / 1e9, 2), fraction_of_matmul_peak=round(flops / best / peak, 3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
