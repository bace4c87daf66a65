"""Episodic meta-training: sample tasks -> adapt on support -> query loss -> outer step.

The recipe of the episodic methods (``metamapper.methods``): the method decides how a query is
put to the LM in the query loss (``maml``, the paper's: ``[p(x_q); question]`` after inner SGD on
the support captions; ``in_context``, the default: the support pairs in the LM context before
the query, optionally with inner steps too) and how a task's images become prefixes.

Example::

    cfg = load_config("configs/smoke.yaml")
    run_dir = get_method(cfg.train.method).train(cfg, "runs/smoke")   # or methods.train(cfg, ...)
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch

from metamapper import distributed, runs
from metamapper.config import Config
from metamapper.eval.fewshot import EvalResult, evaluate
from metamapper.meta.episode import episode_for
from metamapper.meta.maml import InnerLearningRates, RowFormat, adapt, adapted_names, meta_loss
from metamapper.registry import Method
from metamapper.train import common
from metamapper.train.penalties import geometry_penalty, spread_penalty


@runs.exclusive_run  # one writer per run folder; resume/overwrite checked (metamapper.runs)
def train(cfg: Config, run_dir: str | Path, *, method: Method, resume: bool = False,
          overwrite: bool = False, progress: bool = True) -> Path:
    """Meta-train a mapper with ``cfg`` and ``method`` into ``run_dir`` (resuming from its last
    checkpoint); called as ``method.train(cfg, run_dir)``.

    ``resume``: continue the run in ``run_dir`` (it must hold one); ``overwrite``: move a run
    already there aside (see ``metamapper.runs.claim_run``); neither: ``run_dir`` must not hold one.

    Returns:
        ``run_dir``; it holds ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/``.
    """
    run_dir = Path(run_dir)
    t = cfg.train
    rank, world = distributed.init_from_env(cfg.runtime.device)
    main = rank == 0
    progress = progress and main
    run = common.prepare_run(cfg, progress=progress)  # checks meta_batch vs ranks
    model, table, tasks = run.model, run.table, run.train_tasks
    lrs = None
    if t.inner.meta_sgd:
        names = adapted_names(model, t.inner)
        lrs = InnerLearningRates({k: model.mapper_params()[k] for k in names}, init=t.inner.lr,
                                 steps=t.inner.steps, per_step=t.inner.per_step_lr)
    params = list(model.mapper.parameters()) + (list(lrs.parameters()) if lrs is not None else [])
    opt, sched = common.make_optimizer(params, cfg)
    start, state = 0, dict[str, Any]()
    if resume and (run_dir / "checkpoints").exists():
        start, state = common.resume(run_dir, model, opt, sched, lrs, cfg)
    if main:
        common.write_run_config(run_dir, cfg)
    query_format: RowFormat = method.query_rows
    if method.queries_per_row:  # several answers trained per copy of the support context
        query_format = functools.partial(query_format, queries_per_row=t.queries_per_row)

    def validate() -> EvalResult:
        return evaluate(model, run.val_tasks[: t.val_tasks], run.val_table, method=method, loop=t.inner,
                        lrs=lrs, support_fit=method.support_fit, progress=False, distributed=True)

    if t.updates == 0 and main:  # an untrained (initialised) mapper, e.g. as a baseline
        common.save(run_dir, 0, model, cfg, opt, sched, lrs)
    with common.update_loop(run_dir, cfg, model, opt, sched, lrs, start=start, state=state, resume=resume,
                            main=main, progress=progress, desc=f"meta-train ({t.method})") as (bar, books):
        for step in bar:
            t0 = time.time()
            # sample: this rank's share of the meta-batch's tasks, as episodes over cached features
            batch = [tasks[(step * t.meta_batch + i) % len(tasks)] for i in range(t.meta_batch)]
            episodes = [episode_for(method, model, task, table) for task in distributed.shard(batch, rank, world)]
            # adapt: traj[s][task] = the task's mapper parameters after s inner steps
            traj: list[list[dict[str, torch.Tensor]]] = [[{} for _ in episodes]]  # the mapper's own
            if t.inner.steps:  # (only the last step's parameters: the query loss reads no other)
                traj = adapt(model, episodes, loop=t.inner, lrs=lrs, trajectory=False)
            # query loss (+ the default's regularisers), then the outer step
            loss = meta_loss(model, episodes, traj, query_format, prefixes_of=method.prefixes)
            extra = {}
            if t.spread_weight:
                extra["spread_penalty"] = spread_penalty(model, episodes, t.spread_target)
                loss = loss + t.spread_weight * extra["spread_penalty"]
            if t.geometry_weight:
                extra["geometry_penalty"] = geometry_penalty(model, episodes)
                loss = loss + t.geometry_weight * extra["geometry_penalty"]
            gnorm = common.outer_step(loss, params, opt, sched, t.clip)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if books.after_update(step + 1, loss, gnorm, t0=t0, validate=validate,
                                  **{k: v.item() for k, v in extra.items()}):
                break
    return run_dir
