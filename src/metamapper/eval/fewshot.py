"""Meta-test: adapt on each task's support set, answer its queries, score exact match.

How a task is adapted to and put to the LM is its method's (``registry.Method``, registered in
``metamapper.methods``): ``maml`` takes ``loop.steps`` SGD steps of the mapper on the support
captions, then answers each query from ``[p(x_q); question]``; ``in_context`` puts the support
pairs in the LM context before the query (steps optional); ``standard`` answers the query alone.

Queries of many tasks are answered in one batched, KV-cached generation; adaptation is
functional, so the backbones are never copied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from metamapper import distributed as dist_utils
from metamapper.config import InnerLoop
from metamapper.eval.metrics import (
    accuracy_interval,
    bootstrap_interval,
    exact_match,
    normalize_answer,
)
from metamapper.meta.episode import Episode, batch_rows, episode_for, query_rows
from metamapper.meta.maml import InnerLearningRates, RowFormat, adapt, task_prefixes
from metamapper.models.metamapper import MetaMapper
from metamapper.registry import Method


@dataclass
class EvalResult:
    """Accuracy of one method on one set of tasks.

    Attributes:
        accuracy: the mean of per-task exact-match accuracies (with equal queries per task: the
            fraction of queries answered right).
        ci95: its 95% interval ``(low, high)``, asymmetric (``metrics.accuracy_interval``).
        ci_method: how ``ci95`` was computed: ``"wilson"`` (one query per task: Wilson score
            interval over the queries) or ``"wilson-tasks"`` (several queries per task: Wilson
            with the tasks as trials, conservative).
        ci95_bootstrap: with several queries per task, also the seeded percentile bootstrap over
            tasks (None otherwise).
        samples: with ``evaluate(..., samples=True)``, one record per query in task order
            (``query_record``); not part of ``to_dict`` (``eval.run.write_samples`` writes them).
    """

    method: str
    accuracy: float
    ci95: tuple[float, float]
    n_tasks: int
    n_queries: int
    steps: int
    ci_method: str = "wilson"
    ci95_bootstrap: tuple[float, float] | None = None
    support_fit: float | None = None
    examples: list[dict[str, str]] = field(default_factory=list)
    samples: list[dict[str, Any]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        del out["samples"]  # per-query records go to their own JSONL file, not the results
        return out


def query_record(task_id: str, task_index: int, query_index: int, ep: Episode, prediction: str,
                 correct: bool) -> dict[str, Any]:
    """One line of ``--log-samples``: what the model saw for a query, what it said, the target.

    ``support_captions`` and ``question`` are as shown to the model (after repeats);
    ``instruction`` is the task-induction text that opened the row (``""``: none);
    ``prediction`` is the generated answer as scored (cut at the first newline or period).
    """
    return {"task_id": task_id, "task_index": task_index, "query_index": query_index,
            "instruction": ep.instruction,
            "support_captions": ep.captions, "question": ep.questions[query_index],
            "prediction": prediction, "target": ep.answers[query_index], "correct": correct}


def _answer(model: MetaMapper, episodes: Sequence[Episode], params: Sequence[dict[str, torch.Tensor]],
            rows: RowFormat, prefixes_of: Callable[..., torch.Tensor], max_new_tokens: int) -> list[list[str]]:
    eb = batch_rows(episodes, rows, with_answer=False)
    with torch.no_grad():
        batch = model.pack(eb.rows)
        prefixes = prefixes_of(model, eb.features, batch, eb.row_task, params)
        texts = model.generate(eb.features, eb.rows, prefixes=prefixes, max_new_tokens=max_new_tokens,
                               groups=eb.row_task)
    out: list[list[str]] = [[] for _ in episodes]
    for t, text in zip(eb.row_task, texts, strict=True):
        out[t].append(text)
    return out


def answer_episodes(
    model: MetaMapper,
    episodes: Sequence[Episode],
    *,
    method: Method,
    loop: InnerLoop,
    lrs: InnerLearningRates | None = None,
    max_new_tokens: int = 8,
) -> tuple[list[list[str]], list[dict[str, torch.Tensor]]]:
    """Adapt (if ``loop.steps``) and answer every query of every episode in one generation, as
    ``method`` puts a query to the LM.

    Returns:
        per-episode lists of generated answers, and the adapted parameters per episode.
    """
    if loop.steps > 0:
        params = [{k: v.detach() for k, v in p.items()} for p in adapt(model, episodes, loop=loop, lrs=lrs, trajectory=False)[-1]]
    else:
        params = [{} for _ in episodes]
    return answer_with_params(model, episodes, params, method=method, max_new_tokens=max_new_tokens), params


def answer_with_params(
    model: MetaMapper,
    episodes: Sequence[Episode],
    params: Sequence[dict[str, torch.Tensor]],
    *,
    method: Method,
    max_new_tokens: int = 8,
) -> list[list[str]]:
    """Answer every query of every episode as ``method`` puts it, episode ``t`` with mapper
    parameters ``params[t]`` (``{}``: the model's own)."""
    return _answer(model, episodes, params, method.query_rows, method.prefixes or task_prefixes,
                   max_new_tokens)


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
    method: Method,
    loop: InnerLoop | None = None,
    lrs: InnerLearningRates | None = None,
    batch_tasks: int = 32,
    max_new_tokens: int = 8,
    support_fit: bool = False,
    progress: bool = True,
    n_examples: int = 5,
    distributed: bool = False,
    samples: bool = False,
) -> EvalResult:
    """Meta-test ``model`` on ``tasks`` with ``method``; exact match with a 95% interval
    (``EvalResult.ci95``, ``metrics.accuracy_interval``).

    Args:
        model: the model (put in eval mode here).
        tasks: ``data.tasks.Task`` s (already with repeats / task induction applied).
        features_of: image keys -> cached features.
        method: how each task is adapted to and put to the LM (``methods.get_method``).
        loop: the inner loop at test time: ``loop.steps`` adaptation steps (``Method.steps``
            resolves them), the run's learning rate and adapted parameters; always first-order
            here. None: no adaptation.
        lrs: learned inner learning rates (Meta-SGD), if the model was trained with them.
        batch_tasks: tasks adapted and answered together.
        support_fit: also measure whether the adapted model names its own support images.
        distributed: in a ``torchrun`` job, each rank answers a disjoint share of the tasks and
            every rank gets the gathered result (identical to one process's).
        samples: also return one record per query (``EvalResult.samples``, ``query_record``);
            built from the answers already generated, so it costs no extra model call.
    """
    rank, world = dist_utils.rank_world() if distributed else (0, 1)
    tasks = dist_utils.shard(tasks, rank, world)
    loop = replace(loop or InnerLoop(steps=0), first_order=True)
    if loop.steps and not method.adapts:
        raise ValueError(f"method {method.name} takes no adaptation steps (got {loop.steps})")
    was_training = model.training
    model.eval()
    per_task: list[float] = []
    fits: list[float] = []
    examples: list[dict[str, str]] = []
    records: list[dict[str, Any]] = []
    n_queries = 0
    bar = tqdm(total=len(tasks), desc=f"eval {method.name}", disable=not progress, leave=False)
    try:
        for i in range(0, len(tasks), batch_tasks):
            episodes = [episode_for(method, model, t, features_of) for t in tasks[i : i + batch_tasks]]
            answers, params = answer_episodes(model, episodes, method=method, loop=loop, lrs=lrs,
                                              max_new_tokens=max_new_tokens)
            for ep, preds in zip(episodes, answers, strict=True):
                hits = [exact_match(p, a) for p, a in zip(preds, ep.answers, strict=True)]
                if samples:  # this rank's task j is task j * world + rank of the whole list
                    t = len(per_task)
                    records += [query_record(str(getattr(tasks[t], "task_id", t)), t * world + rank,
                                             j, ep, p, h) for j, (p, h) in enumerate(zip(preds, hits, strict=True))]
                per_task.append(sum(hits) / len(hits))
                n_queries += len(hits)
                if len(examples) < n_examples:
                    examples.append({"answer": ep.answers[0], "prediction": preds[0]})
            if support_fit:
                fit_eps = [support_fit_episode(ep) for ep in episodes]
                texts = _answer(model, fit_eps, params, query_rows, task_prefixes, max_new_tokens)
                fits += [float(exact_match(p, a)) for ep, preds in zip(fit_eps, texts, strict=True)
                         for p, a in zip(preds, ep.answers, strict=True)]
            bar.update(len(episodes))
    finally:
        bar.close()
        model.train(was_training)
    if world > 1:  # back in the original task order: rank r held tasks r, r + world, ...
        parts = dist_utils.gather((per_task, fits, n_queries, examples, records))
        ordered: list[float] = [0.0] * sum(len(p[0]) for p in parts)
        for r, p in enumerate(parts):
            for i, v in enumerate(p[0]):
                ordered[i * world + r] = v  # rank r held task r + i * world
        per_task = ordered
        fits = [f for p in parts for f in p[1]]
        n_queries = sum(p[2] for p in parts)
        # the first examples of the whole task list: rank r's i-th example is of task r + i * world
        indexed = [(i * world + r, e) for r, p in enumerate(parts) for i, e in enumerate(p[3])]
        examples = [e for _, e in sorted(indexed, key=lambda x: x[0])][:n_examples]
        records = sorted((rec for p in parts for rec in p[4]),
                         key=lambda rec: (rec["task_index"], rec["query_index"]))
    acc = sum(per_task) / len(per_task) if per_task else float("nan")
    ci, ci_method = accuracy_interval(per_task, n_queries)
    boot = bootstrap_interval(per_task, seed=0) if n_queries != len(per_task) else None
    fit = sum(fits) / len(fits) if fits else None
    return EvalResult(method=method.name, accuracy=acc, ci95=ci, n_tasks=len(per_task),
                      n_queries=n_queries, steps=loop.steps, ci_method=ci_method, ci95_bootstrap=boot,
                      support_fit=fit, examples=examples, samples=records if samples else None)
