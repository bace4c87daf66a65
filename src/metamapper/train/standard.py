"""Non-episodic (ClipCap-style) training: plain mini-batches of (image, caption) pairs.

The pairs are the support and query examples of the run's training tasks, each as
``[p(x); caption]`` with the caption as target; no task structure, no inner loop. With
``data.naming: real`` this is the paper's non-episodic baseline.

Example::

    cfg = load_config("configs/fashion_standard.yaml")
    train(cfg, "runs/standard")
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from metamapper.config import Config
from metamapper.eval.fewshot import evaluate
from metamapper.models.metamapper import Text
from metamapper.train import common, distributed


def caption_pairs(tasks: list[object]) -> list[tuple[str, str]]:
    """Every (image key, caption) of the tasks, once: support captions and query question +
    answer, e.g. ``("train/000017", "This is a coat.")``."""
    pairs: dict[str, str] = {}
    for t in tasks:
        for ex in t.support:  # type: ignore[attr-defined]
            pairs.setdefault(ex.image, ex.caption)
        for q in t.queries:  # type: ignore[attr-defined]
            pairs.setdefault(q.image, f"{q.question} {q.answer}".strip())
    return list(pairs.items())


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train the mapper on captioning mini-batches of ``train.meta_batch`` pairs."""
    from metamapper.meta.episode import sentence

    run_dir = Path(run_dir)
    t = cfg.train
    rank, world = distributed.init_from_env(cfg.runtime.device)
    main = rank == 0
    run = common.prepare_run(cfg, progress=progress and main)  # checks meta_batch vs ranks
    progress = progress and main
    model, table = run["model"], run["table"]
    pairs = caption_pairs(run["train_tasks"])
    order = np.random.default_rng(t.seed).permutation(len(pairs))
    params = list(model.mapper.parameters())
    opt, sched = common.make_optimizer(params, cfg)
    start, state = 0, {}
    if resume and (run_dir / "checkpoints").exists():
        start, state = common.resume(run_dir, model, opt, sched, None, cfg)
    if main:
        common.write_run_config(run_dir, cfg)
    log = common.MetricsLog(run_dir, enabled=main, resume_step=start if resume else None)
    deadline = time.time() + 60 * t.max_minutes if t.max_minutes else math.inf
    model.train()
    bar = tqdm(range(start, t.updates), initial=start, total=t.updates, desc="train (standard)",
               disable=not progress)
    bad_in_row = state.get("bad_in_row", 0)
    with common.StopSignal() as stop:
        for step in bar:
            idx = [int(order[(step * t.meta_batch + i) % len(pairs)]) for i in range(t.meta_batch)]
            idx = distributed.shard(idx, rank, world)  # this rank's share of the mini-batch
            feats = table([pairs[i][0] for i in idx])  # (batch, n_tokens, dim)
            rows = [[i, Text(" " + sentence(pairs[j][1]), target=True)] for i, j in enumerate(idx)]
            loss = model.loss(feats, model.pack(rows))
            opt.zero_grad(set_to_none=True)
            ok = distributed.all_true(bool(torch.isfinite(loss)))
            if ok:
                loss.backward()
                distributed.average_gradients(params)
                ok = math.isfinite(float(torch.nn.utils.clip_grad_norm_(params, t.clip)))
            if ok:
                opt.step()
            bad_in_row = 0 if ok else bad_in_row + 1
            sched.step()
            done = step + 1
            log.write(step=done, loss=distributed.mean_across(loss.item()), skipped=int(not ok))
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if bad_in_row >= t.max_bad_updates:
                raise common.diverged(run_dir, bad_in_row, done)
            if t.val_every and (done % t.val_every == 0 or done == t.updates):
                res = evaluate(model, run["val_tasks"][: t.val_tasks], run["val_table"],
                               method="no-adapt", progress=False, distributed=True)
                log.write(step=done, val_accuracy=res.accuracy, val_ci95=res.ci95, val_method="no-adapt")
                model.train()
            out_of_time = distributed.any_flag(time.time() > deadline)
            stopping = distributed.any_flag(stop.stop)
            if (done % t.checkpoint_every == 0 or done == t.updates or out_of_time or stopping) and main:
                common.save(run_dir, done, model, cfg, opt, sched, None, extra={"bad_in_row": bad_in_row})
            if out_of_time or stopping:
                bar.write(f"stopped after {done} updates; checkpoint saved, resume with --resume")
                break
    bar.close()
    distributed.barrier()
    return run_dir
