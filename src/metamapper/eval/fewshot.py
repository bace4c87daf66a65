"""Meta-test: adapt on each task's support set, answer its queries, score exact match.

Methods (``METHODS``):

* ``maml`` — the paper's protocol: ``steps`` SGD steps of the mapper on the support captions,
  then each query is answered from ``[p(x_q); question]``;
* ``no-adapt`` — the same prompt with the meta-learned initialisation (0 steps);
* ``in-context`` — the support pairs in the LM context before the query (Frozen-style), with
  ``steps`` optional adaptation steps first (0 by default).

Queries of many tasks are answered in one batched, KV-cached generation; adaptation is
functional, so the backbones are never copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from metamapper.eval.metrics import exact_match, mean_ci95, normalize_answer
from metamapper.meta.episode import ROW_FORMATS, Episode, batch_rows, episode_from_task
from metamapper.meta.maml import InnerLearningRates, InnerLoop, adapt, task_prefixes
from metamapper.models.metamapper import MetaMapper


@dataclass(frozen=True)
class Method:
    name: str
    query_format: str  # "prefix" | "in_context"
    default_steps: int | None  # None: the checkpoint's own inner steps


METHODS: dict[str, Method] = {
    "maml": Method("maml", "prefix", None),
    "no-adapt": Method("no-adapt", "prefix", 0),
    "in-context": Method("in-context", "in_context", 0),
    "in-context-maml": Method("in-context-maml", "in_context", None),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def effective_orderings(method: str, orderings: int) -> int:
    """The support orders ``method`` answers under: ``orderings`` with the support in context, 1
    otherwise (a query alone after its prefix does not see the support order)."""
    return orderings if get_method(method).query_format == "in_context" else 1


@dataclass
class EvalResult:
    """Accuracy of one method on one set of tasks."""

    method: str
    accuracy: float
    ci95: float
    n_tasks: int
    n_queries: int
    steps: int
    support_fit: float | None = None
    orderings: int = 1
    members: int = 1  # runs answering together (an ensemble when > 1)
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def support_orders(n_support: int, k: int) -> list[list[int]]:
    """``k`` distinct orders of ``n_support`` support examples (fewer when fewer exist): as given,
    reversed, then seeded random permutations (the same for every task of that size)."""
    orders = [list(range(n_support))]
    if k > 1 and n_support > 1:
        orders.append(orders[0][::-1])
    gen = torch.Generator().manual_seed(n_support)
    tries = 0
    while len(orders) < min(k, math.factorial(n_support)) and tries < 100 * k:
        order = torch.randperm(n_support, generator=gen).tolist()
        tries += 1
        if order not in orders:
            orders.append(order)
    return orders[:k]


def reorder_support(ep: Episode, order: Sequence[int]) -> Episode:
    """``ep`` with its support examples in ``order`` (queries unchanged)."""
    s = ep.n_support
    idx = torch.tensor([*order, *range(s, ep.features.shape[0])])
    return Episode(features=ep.features[idx], captions=[ep.captions[i] for i in order],
                   questions=ep.questions, answers=ep.answers)


def _answer(model: MetaMapper, episodes: Sequence[Episode], params: Sequence[dict[str, torch.Tensor]],
            query_format: str, max_new_tokens: int) -> list[list[str]]:
    eb = batch_rows(episodes, ROW_FORMATS[query_format], with_answer=False)
    with torch.no_grad():
        batch = model.pack(eb.rows)
        prefixes = task_prefixes(model, eb.features, batch, eb.row_task, params)
        texts = model.generate(eb.features, eb.rows, prefixes=prefixes, max_new_tokens=max_new_tokens)
    out: list[list[str]] = [[] for _ in episodes]
    for t, text in zip(eb.row_task, texts, strict=True):
        out[t].append(text)
    return out


def _ensemble(model: MetaMapper, episodes: Sequence[Episode],
              params: Sequence[Sequence[dict[str, torch.Tensor]]], orderings: int,
              max_new_tokens: int) -> list[list[str]]:
    """In context, answer each query with every mapper ``params[m]`` (``params[m][e]``: member
    ``m``'s parameters for episode ``e``) under ``orderings`` support orders; of the distinct
    answers generated, return the one with the highest log-likelihood summed over all of them."""
    # one variant per (member, episode, order): (episode, its parameters, the reordered episode)
    variants = [(e, member[e], reorder_support(ep, o)) for member in params
                for e, ep in enumerate(episodes) for o in support_orders(ep.n_support, orderings)]
    generated = _answer(model, [v for _, _, v in variants], [p for _, p, _ in variants],
                        "in_context", max_new_tokens)
    candidates: dict[tuple[int, int], list[str]] = {}  # (episode, query) -> distinct answers
    for (e, _, _), answers in zip(variants, generated, strict=True):
        for q, a in enumerate(answers):
            seen = candidates.setdefault((e, q), [])
            if a.strip() and normalize_answer(a) not in map(normalize_answer, seen):
                seen.append(a)
    # one scoring row per (variant, query, candidate): [support in that order; p(x_q); question]
    # -> candidate, for the queries whose variants disagree (the others have one candidate)
    scored: list[Episode] = []
    keys: list[tuple[int, int, int, int]] = []  # (variant, episode, query, candidate)
    for i, (e, _, v) in enumerate(variants):
        s = v.n_support
        for q in range(v.n_query):
            if len(candidates[(e, q)]) < 2:
                continue
            for c, cand in enumerate(candidates[(e, q)]):
                scored.append(Episode(features=torch.cat([v.features[:s], v.features[s + q : s + q + 1]]),
                                      captions=v.captions, questions=[v.questions[q]], answers=[cand]))
                keys.append((i, e, q, c))
    totals = {k: [0.0] * len(c) for k, c in candidates.items()}
    if scored:
        eb = batch_rows(scored, ROW_FORMATS["in_context"], with_answer=True)
        variant_of_row = torch.tensor([keys[r][0] for r in eb.row_task])
        with torch.no_grad():
            batch = model.pack(eb.rows)
            prefixes = task_prefixes(model, eb.features, batch, variant_of_row, [p for _, p, _ in variants])
            logp = model.target_logprobs(eb.features, batch, prefixes=prefixes).tolist()
        for (_, e, q, c), lp in zip(keys, logp, strict=True):
            totals[(e, q)][c] += lp
    out: list[list[str]] = []
    for e, ep in enumerate(episodes):
        row = []
        for q in range(ep.n_query):
            cands, tot = candidates[(e, q)], totals[(e, q)]
            row.append(cands[max(range(len(cands)), key=tot.__getitem__)] if cands else "")
        out.append(row)
    return out


def answer_episodes(
    model: MetaMapper,
    episodes: Sequence[Episode],
    *,
    query_format: str,
    loop: InnerLoop,
    lrs: InnerLearningRates | None = None,
    max_new_tokens: int = 8,
    orderings: int = 1,
    members: Sequence[dict[str, torch.Tensor]] = (),
) -> tuple[list[list[str]], list[dict[str, torch.Tensor]]]:
    """Adapt (if ``loop.steps``) and answer every query of every episode in one generation.

    With the support in context and ``orderings > 1``, each query is answered under that many
    orders of the support (``support_orders``) and the answer most likely over all of them wins
    (a frozen LM's answer depends on where in the context each support example sits).
    ``members``: the mapper weights of further runs (``pretrained.load_members``) that answer
    beside the model's own, an ensemble chosen the same way (in context, without adaptation).

    Returns:
        per-episode lists of generated answers, and the adapted parameters per episode.
    """
    if members and loop.steps > 0:
        raise ValueError("an ensemble of runs answers without adaptation steps (method in-context)")
    if loop.steps > 0:
        params = [{k: v.detach() for k, v in p.items()} for p in adapt(model, episodes, loop=loop, lrs=lrs, trajectory=False)[-1]]
    else:
        params = [{} for _ in episodes]
    return answer_with_params(model, episodes, params, query_format=query_format,
                              max_new_tokens=max_new_tokens, orderings=orderings, members=members), params


def answer_with_params(
    model: MetaMapper,
    episodes: Sequence[Episode],
    params: Sequence[dict[str, torch.Tensor]],
    *,
    query_format: str,
    max_new_tokens: int = 8,
    orderings: int = 1,
    members: Sequence[dict[str, torch.Tensor]] = (),
) -> list[list[str]]:
    """Answer every query of every episode, episode ``t`` with mapper parameters ``params[t]``
    (``{}``: the model's own); ``orderings`` and ``members`` as in ``answer_episodes``."""
    if members and query_format != "in_context":
        raise ValueError("an ensemble of runs answers with the support in context (method in-context)")
    if query_format == "in_context" and (orderings > 1 or members):
        per_member = [list(params)] + [[m] * len(episodes) for m in members]
        return _ensemble(model, episodes, per_member, orderings, max_new_tokens)
    return _answer(model, episodes, params, query_format, max_new_tokens)


def support_fit_episode(ep: Episode) -> Episode:
    """An episode whose queries are its own support images, asked the first query's question;
    the expected answer is the rest of each caption after that question."""
    q = ep.questions[0] if ep.questions else ""
    answers = []
    for c in ep.captions:
        nc, nq = normalize_answer(c), normalize_answer(q)
        answers.append(nc[len(nq):].strip() if nq and nc.startswith(nq) else c)
    s = ep.n_support
    return Episode(
        features=torch.cat([ep.features[:s], ep.features[:s]]),
        captions=ep.captions,
        questions=[q] * s,
        answers=answers,
    )


def evaluate(
    model: MetaMapper,
    tasks: Sequence[object],
    features_of: Callable[[list[str]], torch.Tensor],
    *,
    method: str = "maml",
    steps: int = 5,
    loop: InnerLoop | None = None,
    lrs: InnerLearningRates | None = None,
    batch_tasks: int = 32,
    max_new_tokens: int = 8,
    support_fit: bool = False,
    progress: bool = True,
    n_examples: int = 5,
    distributed: bool = False,
    orderings: int = 1,
    members: Sequence[dict[str, torch.Tensor]] = (),
) -> EvalResult:
    """Meta-test ``model`` on ``tasks`` with ``method``; exact match with a 95% CI.

    Args:
        model: the model (put in eval mode here).
        tasks: ``data.tasks.Task`` s (already with repeats / task induction applied).
        features_of: image keys -> cached features.
        method: a name from ``METHODS``.
        steps: adaptation steps (overrides the method's default when it has none).
        loop: inner-loop settings other than ``steps`` (learning rate, which parameters).
        lrs: learned inner learning rates (Meta-SGD), if the model was trained with them.
        batch_tasks: tasks adapted and answered together.
        support_fit: also measure whether the adapted model names its own support images.
        orderings: with the support in context, answer under this many support orders and keep
            the most likely answer over all of them (1: the order the task gives).
        members: mapper weights of further runs answering beside ``model`` (an ensemble; see
            ``answer_episodes``).
        distributed: in a ``torchrun`` job, each rank answers a disjoint share of the tasks and
            every rank gets the gathered result (identical to one process's).
    """
    from metamapper.train import distributed as dist_utils

    if orderings < 1:
        raise ValueError(f"orderings must be >= 1, got {orderings}")
    rank, world = dist_utils.rank_world() if distributed else (0, 1)
    tasks = dist_utils.shard(tasks, rank, world)
    m = get_method(method)
    n_steps = m.default_steps if m.default_steps is not None else steps
    base = loop or InnerLoop()
    loop = InnerLoop(steps=n_steps, lr=base.lr, first_order=True, adapt=base.adapt,
                     meta_sgd=base.meta_sgd, per_step_lr=base.per_step_lr)
    was_training = model.training
    model.eval()
    per_task: list[float] = []
    fits: list[float] = []
    examples: list[dict[str, str]] = []
    n_queries = 0
    bar = tqdm(total=len(tasks), desc=f"eval {method}", disable=not progress, leave=False)
    try:
        for i in range(0, len(tasks), batch_tasks):
            episodes = [episode_from_task(t, features_of) for t in tasks[i : i + batch_tasks]]
            answers, params = answer_episodes(
                model, episodes, query_format=m.query_format, loop=loop, lrs=lrs,
                max_new_tokens=max_new_tokens, orderings=orderings, members=members,
            )
            for ep, preds in zip(episodes, answers, strict=True):
                hits = [exact_match(p, a) for p, a in zip(preds, ep.answers, strict=True)]
                per_task.append(sum(hits) / len(hits))
                n_queries += len(hits)
                if len(examples) < n_examples:
                    examples.append({"answer": ep.answers[0], "prediction": preds[0]})
            if support_fit:
                fit_eps = [support_fit_episode(ep) for ep in episodes]
                texts = _answer(model, fit_eps, params, "prefix", max_new_tokens)
                fits += [float(exact_match(p, a)) for ep, preds in zip(fit_eps, texts, strict=True)
                         for p, a in zip(preds, ep.answers, strict=True)]
            bar.update(len(episodes))
    finally:
        bar.close()
        model.train(was_training)
    if world > 1:  # back in the original task order: rank r held tasks r, r + world, ...
        parts = dist_utils.gather((per_task, fits, n_queries, examples))
        ordered: list[float] = [0.0] * sum(len(p[0]) for p in parts)
        for r, p in enumerate(parts):
            for i, v in enumerate(p[0]):
                ordered[i * world + r] = v  # rank r held task r + i * world
        per_task = ordered
        fits = [f for p in parts for f in p[1]]
        n_queries = sum(p[2] for p in parts)
        examples = [e for p in parts for e in p[3]][:n_examples]
    acc, ci = mean_ci95(per_task)
    fit = sum(fits) / len(fits) if fits else None
    return EvalResult(method=method, accuracy=acc, ci95=ci, n_tasks=len(per_task),
                      n_queries=n_queries, steps=n_steps, support_fit=fit, examples=examples,
                      orderings=effective_orderings(method, orderings), members=1 + len(members))
