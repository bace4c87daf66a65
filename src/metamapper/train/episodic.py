"""Episodic meta-training: sample tasks -> adapt on support -> query loss -> outer step.

``method: maml`` is the paper's recipe (inner SGD on the support captions, query answered from
``[p(x_q); question]``); ``method: in_context`` meta-trains the mapper on the support pairs placed
in the LM context before the query (optionally with inner steps too).

Example::

    cfg = load_config("configs/smoke.yaml")
    run_dir = train(cfg, "runs/smoke")
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from metamapper.config import Config
from metamapper.eval.fewshot import evaluate
from metamapper.eval.metrics import normalize_answer
from metamapper.meta.episode import Episode, episode_from_task, in_context_rows, query_rows
from metamapper.meta.maml import InnerLearningRates, adapt, meta_loss
from metamapper.models.metamapper import MetaMapper
from metamapper.train import common, distributed


def _noisy(ep: Episode, std: float, gen: torch.Generator) -> Episode:
    noise = torch.randn(ep.features.shape, generator=gen) * std
    return dataclasses.replace(ep, features=ep.features + noise)


def _ways(ep: Episode) -> tuple[list[int], list[int]]:
    """The class (way) index of each support and each query image of ``ep``, in order of first
    appearance among the support captions; a query's class is the support caption holding its
    answer (-1 when none does)."""
    names: dict[str, int] = {}
    support = [names.setdefault(normalize_answer(c), len(names)) for c in ep.captions]
    queries = []
    for ans in ep.answers:
        word = f" {normalize_answer(ans)} "
        hit = [w for c, w in names.items() if word in f" {c} "]
        queries.append(hit[0] if hit else -1)
    return support, queries


def copy_queries(ep: Episode, share: float, gen: torch.Generator) -> Episode:
    """Replace about ``share`` of the query images with the support image of their own class.

    A warm-up for in-context binding: a query that repeats a support image is matched by the
    frozen LM's copying as soon as equal images give equal prefixes, which gives the mapper a
    gradient towards image-specific prefixes from the first update on. The class of a query is
    the support caption that contains its answer (the first such support image is used).
    """
    feats = ep.features.clone()
    s = ep.n_support
    support_ways, query_ways = _ways(ep)
    for j, w in enumerate(query_ways):
        if float(torch.rand((), generator=gen)) >= share:
            continue
        if w >= 0:
            feats[s + j] = ep.features[support_ways.index(w)]
    return dataclasses.replace(ep, features=feats)


def mix_classes(episodes: list[Episode], share: float, gen: torch.Generator) -> list[Episode]:
    """Task interpolation: about ``share`` of the episodes get new classes, blends of their own.

    Episode ``a`` is paired with another episode ``b`` of the batch, and class ``w`` of ``a`` becomes
    ``lam * (class w of a) + (1 - lam) * (class w of b)``: every image of ``a`` of that class is
    blended with an image of ``b``'s class ``w`` (one ``lam ~ U(0.25, 0.75)`` per episode). The
    captions and answers stay ``a``'s. Meta-training on a handful of classes otherwise lets the
    mapper keep only what separates *those* classes; blends are classes it has not seen (MLTI,
    Yao et al., NeurIPS 2021). Episodes whose ways do not match up are left as they are.
    """
    if share <= 0 or len(episodes) < 2:
        return episodes
    ways = [_ways(ep) for ep in episodes]
    out = []
    for a, ep in enumerate(episodes):
        if float(torch.rand((), generator=gen)) >= share:
            out.append(ep)
            continue
        b = (a + 1 + int(torch.randint(len(episodes) - 1, (), generator=gen))) % len(episodes)
        wa, wb = ways[a][0] + ways[a][1], ways[b][0] + ways[b][1]
        pool: dict[int, list[int]] = {}
        for i, w in enumerate(wb):
            if w >= 0:
                pool.setdefault(w, []).append(i)
        if -1 in wa or any(w not in pool for w in wa):
            out.append(ep)
            continue
        partner = torch.stack([episodes[b].features[pool[w][i % len(pool[w])]] for i, w in enumerate(wa)])
        lam = 0.25 + 0.5 * float(torch.rand((), generator=gen))
        out.append(dataclasses.replace(ep, features=lam * ep.features + (1 - lam) * partner))
    return out


def spread_penalty(model: MetaMapper, episodes: list[Episode], target: float) -> torch.Tensor:
    """Hinge on the spread of the prefix vectors over the meta-batch's images (anti-collapse).

    ``mean_d relu(g - std_d) / g`` where ``std_d`` is the standard deviation of prefix element
    ``d`` over all images of the meta-batch and ``g = target * typical |element|``. In-context
    runs can collapse to one prefix for every image (the answer is then a coin flip between the
    support words, and no gradient brings the images back); the penalty is zero while the
    image-dependent part of the prefixes keeps at least this spread (VICReg's variance term).
    """
    feats = torch.cat([ep.features for ep in episodes])
    p = model.prefixes(feats, {}).flatten(1)  # (images, l * D)
    g = target * p.detach().abs().mean()
    return torch.relu(g - p.std(0)).mean() / g


def geometry_penalty(model: MetaMapper, episodes: list[Episode]) -> torch.Tensor:
    """How far the prefixes' similarity structure is from the visual features' (information keeping).

    ``mean_{i != j} (cos(p_i, p_j) - cos(f_i, f_j))^2`` over the meta-batch's images, with ``p`` the
    flattened prefixes and ``f`` the flattened (standardised) features, each centred over the
    images. Episodic training on a few classes teaches the mapper to keep only what separates
    *those* classes (on Fashion-MNIST, the one training shoe class lets sneakers and ankle boots
    merge); asking the prefixes to keep the features' neighbourhoods keeps what new classes need.
    """
    feats = torch.cat([ep.features for ep in episodes])
    p = model.prefixes(feats, {}).flatten(1).float()
    f = model.mapper.standardized(feats.to(p.dtype)).flatten(1)

    def gram(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x - x.mean(0, keepdim=True), dim=1)
        return x @ x.T

    n = len(feats)
    off = ~torch.eye(n, dtype=torch.bool, device=p.device)
    return (gram(p) - gram(f).detach())[off].pow(2).mean()


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Meta-train a mapper with ``cfg`` into ``run_dir`` (resuming from its last checkpoint).

    Returns:
        ``run_dir``; it holds ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/``.
    """
    run_dir = Path(run_dir)
    t = cfg.train
    rank, world = distributed.init_from_env(cfg.runtime.device)
    main = rank == 0
    run = common.prepare_run(cfg, progress=progress and main)  # checks meta_batch vs ranks
    progress = progress and main
    model, table, tasks = run["model"], run["table"], run["train_tasks"]
    lrs = None
    if t.inner.meta_sgd:
        from metamapper.meta.maml import adapted_names

        names = adapted_names(model, t.inner)
        lrs = InnerLearningRates({k: model.mapper_params()[k] for k in names}, init=t.inner.lr,
                                 steps=t.inner.steps, per_step=t.inner.per_step_lr)
    params = list(model.mapper.parameters()) + (list(lrs.parameters()) if lrs is not None else [])
    opt, sched = common.make_optimizer(params, cfg)
    start, state = 0, {}
    if resume and (run_dir / "checkpoints").exists():
        start, state = common.resume(run_dir, model, opt, sched, lrs, cfg)
    if main:
        common.write_run_config(run_dir, cfg)
    log = common.MetricsLog(run_dir, enabled=main, resume_step=start if resume else None)
    if t.method == "in_context":
        query_format = functools.partial(in_context_rows, queries_per_row=t.queries_per_row)
    else:
        query_format = query_rows
    noise_std = t.feature_noise * float(table.features.std()) if t.feature_noise else 0.0
    eval_method = common.eval_method_for(cfg)
    deadline = time.time() + 60 * t.max_minutes if t.max_minutes else math.inf
    # skipped: non-finite updates so far (logged); bad_in_row: of them, the latest in a row
    skipped, bad_in_row = state.get("skipped", 0), state.get("bad_in_row", 0)
    model.train()
    bar = tqdm(range(start, t.updates), initial=start, total=t.updates, desc=f"meta-train ({t.method})",
               disable=not progress)
    if t.updates == 0 and main:  # an untrained (initialised) mapper, e.g. as a baseline
        common.save(run_dir, 0, model, cfg, opt, sched, lrs)
    # NaN/inf anywhere (features, inner loop, query loss) reaches the query loss or the gradient;
    # such an update is skipped, so the weights and the optimizer state stay finite.
    say = bar.write if main else (lambda *_a, **_k: None)  # rank 0 speaks for the job
    with common.StopSignal() as stop:
        for step in bar:
            t0 = time.time()
            # sample -> adapt -> query loss -> outer step
            batch_tasks = [tasks[(step * t.meta_batch + i) % len(tasks)] for i in range(t.meta_batch)]
            batch_tasks = distributed.shard(batch_tasks, rank, world)  # this rank's share
            episodes = [episode_from_task(task, table) for task in batch_tasks]
            copy_share = t.copy_queries * max(0.0, 1.0 - step / t.copy_updates) if t.copy_updates else 0.0
            if copy_share > 0:
                gen = torch.Generator().manual_seed(t.seed * 1_000_033 + step)
                episodes = [copy_queries(ep, copy_share, gen) for ep in episodes]
            if t.class_mix:
                gen = torch.Generator().manual_seed(t.seed * 1_000_037 + step)
                episodes = mix_classes(episodes, t.class_mix, gen)
            if noise_std:
                gen = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
                episodes = [_noisy(ep, noise_std, gen) for ep in episodes]
            if t.inner.steps > 0:
                traj = adapt(model, episodes, loop=t.inner, lrs=lrs,  # traj[s][task] = params
                             trajectory=t.step_weights is not None)  # else only the last step
            else:
                traj = [[{} for _ in episodes]]  # no inner loop: the mapper's own parameters
            loss = meta_loss(model, episodes, traj, query_format, step_weights=t.step_weights)
            extra = {}  # the regularisers, logged beside the loss; under torchrun, each rank's share
            if t.spread_weight:
                spread = spread_penalty(model, episodes, t.spread_target)
                loss = loss + t.spread_weight * spread
                extra["spread_penalty"] = spread
            if t.geometry_weight:
                geometry = geometry_penalty(model, episodes)
                loss = loss + t.geometry_weight * geometry
                extra["geometry_penalty"] = geometry
            opt.zero_grad(set_to_none=True)
            ok = distributed.all_true(bool(torch.isfinite(loss)))
            gnorm = float("nan")
            if ok:
                loss.backward()
                distributed.average_gradients(params)  # identical gradients on every rank
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, t.clip))
                ok = math.isfinite(gnorm)
            if ok:
                opt.step()
                bad_in_row = 0
            else:  # a non-finite loss or gradient: skip the update, keep the weights
                skipped += 1
                bad_in_row += 1
            sched.step()
            done = step + 1
            distributed.fault_hook(rank, done)
            log.write(step=done, loss=distributed.mean_across(loss.item()), grad_norm=gnorm, skipped=skipped,
                      **{k: round(v.item(), 4) for k, v in extra.items()},
                      tasks_per_s=round(t.meta_batch / (time.time() - t0), 2), lr=sched.get_last_lr()[0])
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if bad_in_row >= t.max_bad_updates:
                raise common.diverged(run_dir, bad_in_row, done, " (lower train.lr or train.inner.lr?)")
            if t.val_every and (done % t.val_every == 0 or done == t.updates):
                res = evaluate(model, run["val_tasks"][: t.val_tasks], run["val_table"],
                               method=eval_method, steps=t.inner.steps, loop=t.inner, lrs=lrs,
                               support_fit=t.method == "maml", progress=False, distributed=True)
                log.write(step=done, val_accuracy=res.accuracy, val_ci95=res.ci95,
                          val_support_fit=res.support_fit, val_method=eval_method)
                say(f"update {done}: validation accuracy {res.accuracy:.3f} +/- {res.ci95:.3f}"
                          + (f", support fit {res.support_fit:.3f}" if res.support_fit is not None else ""))
                model.train()
            out_of_time = distributed.any_flag(time.time() > deadline)
            stopping = distributed.any_flag(stop.stop)
            if (done % t.checkpoint_every == 0 or done == t.updates or out_of_time or stopping) and main:
                common.save(run_dir, done, model, cfg, opt, sched, lrs,
                             extra={"skipped": skipped, "bad_in_row": bad_in_row})
            if out_of_time or stopping:
                why = "a stop signal" if stopping else f"train.max_minutes={t.max_minutes}"
                say(f"stopped after {done} updates ({why}); checkpoint saved, resume with --resume")
                break
    bar.close()
    distributed.barrier()  # the last checkpoint is on disk before any rank returns
    return run_dir
