"""Non-episodic (ClipCap-style) training: plain mini-batches of (image, caption) pairs.

The pairs are the support and query examples of the run's training tasks, each as
``[p(x); caption]`` with the caption as target; no task structure, no inner loop. With
``data.naming: real`` this is the paper's non-episodic baseline.

The recipe of the ``standard`` method (``metamapper.methods.standard``).

Example::

    cfg = load_config("configs/fashion_standard.yaml")
    methods.train(cfg, "runs/standard")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metamapper import distributed, runs
from metamapper.config import Config
from metamapper.data.tasks import Task
from metamapper.eval.fewshot import EvalResult, evaluate
from metamapper.meta.episode import sentence
from metamapper.models.metamapper import Item, Text
from metamapper.registry import Method
from metamapper.train import common


def caption_pairs(tasks: Sequence[Task]) -> list[tuple[str, str]]:
    """Every (image key, caption) of the tasks, once: support captions and query question +
    answer, e.g. ``("train/000017", "This is a coat.")``."""
    pairs: dict[str, str] = {}
    for t in tasks:
        for ex in t.support:
            pairs.setdefault(ex.image, ex.caption)
        for q in t.queries:
            pairs.setdefault(q.image, f"{q.question} {q.answer}".strip())
    return list(pairs.items())


@runs.exclusive_run  # one writer per run folder; resume/overwrite checked (metamapper.runs)
def train(cfg: Config, run_dir: str | Path, *, method: Method, resume: bool = False,
          overwrite: bool = False, progress: bool = True) -> Path:
    """Train the mapper on captioning mini-batches of ``train.meta_batch`` pairs, validated as
    ``method`` answers (``resume`` / ``overwrite``: as in ``episodic.train``)."""
    run_dir = Path(run_dir)
    t = cfg.train
    rank, world = distributed.init_from_env(cfg.runtime.device)
    main = rank == 0
    progress = progress and main
    run = common.prepare_run(cfg, progress=progress)  # checks meta_batch vs ranks
    model, table = run.model, run.table
    pairs = caption_pairs(run.train_tasks)
    order = np.random.default_rng(t.seed).permutation(len(pairs))
    params = list(model.mapper.parameters())
    opt, sched = common.make_optimizer(params, cfg)
    start, state = 0, dict[str, Any]()
    if resume and (run_dir / "checkpoints").exists():
        start, state = common.resume(run_dir, model, opt, sched, None, cfg)
    if main:
        common.write_run_config(run_dir, cfg)

    def validate() -> EvalResult:
        return evaluate(model, run.val_tasks[: t.val_tasks], run.val_table, method=method,
                        progress=False, distributed=True)

    with common.update_loop(run_dir, cfg, model, opt, sched, None, start=start, state=state, resume=resume,
                            main=main, progress=progress, desc="train (standard)") as (bar, books):
        for step in bar:
            t0 = time.time()
            idx = [int(order[(step * t.meta_batch + i) % len(pairs)]) for i in range(t.meta_batch)]
            idx = distributed.shard(idx, rank, world)  # this rank's share of the mini-batch
            feats = table([pairs[i][0] for i in idx])  # (batch, n_tokens, dim)
            rows: list[list[Item]] = [[i, Text(" " + sentence(pairs[j][1]), target=True)]
                                      for i, j in enumerate(idx)]
            loss = model.loss(feats, model.pack(rows))
            gnorm = common.outer_step(loss, params, opt, sched, t.clip)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if books.after_update(step + 1, loss, gnorm, t0=t0, validate=validate):
                break
    return run_dir
