"""Probe (issue #19): matching in feature space, copying in the LM. (in context, N-way 1-shot)

`experiments/diagnose.py` found that the features tell held-out classes apart (1-NN) far better
than the LM's answers do: the frozen LM's matching of a query to its support is where accuracy is
lost. Here the mapper matches instead: in every in-context row, each query's prefix becomes a
mixture of the row's support prefixes, weighted by ``softmax(cos / tau)`` of the standardised
visual features (the mapper's own statistics) of the query and each support. At a small ``tau``
the LM sees a near-exact repeat of one support prefix and only has to copy the word that followed
it. Rows without a query (captions, MAML's support rows) are unchanged.

``eval`` scores a run with this head (``--tau 0``: the run's own prefixes, as the library answers)
and prints the 1-NN accuracy of the same features beside it; ``train`` trains the default recipe
with the head from the start, so that the mapper learns prefixes the LM copies. Not a library
option: it stays here unless it wins on validation tasks over several seeds. It plugs in as a
method (``probe_method``: the default method with its own ``prefixes`` hook), as the other
row-patching probes (iso_prefix, spread_prefix, contrast_prefix, hash_prefix) do.

    python experiments/copy_prefix.py train RUN_DIR [--seed S] [--tau 0.05] [overrides ...]
    python experiments/copy_prefix.py eval RUN_DIR [--dataset fashion-open-ended] [--split val]
                                      [--tasks 300] [--ways 2] [--tau 0.05 0]   # a JSON line per tau
                                      [--stats mapper|tasks]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from metamapper.eval.fewshot import answer_episodes
from metamapper.meta.maml import task_prefixes
from metamapper.methods import get_method
from metamapper.models.metamapper import MetaMapper, PackedBatch
from metamapper.registry import METHODS, Method

ORIGINAL = task_prefixes
PrefixFn = Callable[..., torch.Tensor]


def slots_by_row(batch: PackedBatch) -> list[list[int]]:
    """The image slots of each row that has any, in slot order (slots are in row order)."""
    rows: dict[int, list[int]] = {}
    for slot, r in enumerate(batch.slot_rows):
        rows.setdefault(r, []).append(slot)
    return list(rows.values())


def probe_method(name: str, prefixes: PrefixFn) -> Method:
    """The default method (the support in context) with ``prefixes`` as its prefixes hook: used
    in training's query loss and in answering. Pass it to ``answer_episodes`` / ``evaluate_run``
    as it is; ``register`` it to train a run of ``train.method=NAME``."""
    return replace(get_method("in_context"), name=name, prefixes=prefixes)


def register(method: Method) -> Method:
    """Register ``method`` (once per process) so that a config can name it."""
    if method.name not in METHODS:
        METHODS.register(method.name)(method)
    return METHODS.get(method.name)


def per_row(n_support: int, change: Callable[[MetaMapper, torch.Tensor, torch.Tensor], torch.Tensor]):  # noqa: ANN201
    """``task_prefixes`` in which every in-context row's prefixes ``(k, l, D)`` (its ``n_support``
    supports, then its queries) become ``change(model, prefixes, features)``, the features
    ``(k, tokens, dim)`` of the same slots; rows without a query are unchanged."""

    def task_prefixes(model: MetaMapper, features: torch.Tensor, batch: PackedBatch,
                      row_task: Sequence[int] | torch.Tensor, params: Sequence[Mapping[str, torch.Tensor]]
                      ) -> torch.Tensor:
        out = ORIGINAL(model, features, batch, row_task, params)
        feats = features[batch.image_index]  # (S, tokens, dim) in slot order
        new = list(out.unbind(0))
        for slots in slots_by_row(batch):
            if len(slots) <= n_support:
                continue
            q = change(model, out[slots].float(), feats[slots])
            for i, s in enumerate(slots):
                new[s] = q[i].to(out.dtype)
        return torch.stack(new)

    return task_prefixes


def matching_prefixes(n_support: int, tau: float, stats: tuple[torch.Tensor, torch.Tensor] | None = None):  # noqa: ANN201
    """``task_prefixes`` in which every row's slots after its first ``n_support`` (its queries)
    get the softmax(cos / tau)-weighted mixture of the row's first ``n_support`` prefixes; the
    features standardised with the mapper's statistics or with ``stats`` (flat mean, std)."""
    if tau <= 0:
        return ORIGINAL

    def matched(model: MetaMapper, p: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        z = _unit(model, features, stats)
        w = (z[n_support:] @ z[:n_support].T / tau).softmax(-1)  # (queries, supports)
        return torch.cat([p[:n_support], torch.einsum("qs,sld->qld", w.to(p.dtype), p[:n_support])])

    return per_row(n_support, matched)


def _unit(model: MetaMapper, features: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Unit vectors of the standardised, flattened features (what the matching compares)."""
    if stats is None:
        flat = model.mapper.standardized(features.float()).reshape(len(features), -1)
    else:
        flat = (features.float().reshape(len(features), -1) - stats[0]) / stats[1]
    return F.normalize(flat, dim=-1)


def answered(model: MetaMapper, tasks: Sequence[object], table: object,
             prefixes: PrefixFn = ORIGINAL) -> Iterator[tuple[Any, Any, list[str]]]:
    """Each task, its episode and the LM's in-context answers to its queries (32 tasks a batch),
    the prefixes made by ``prefixes``."""
    from metamapper.meta.episode import episode_from_task
    from metamapper.meta.maml import InnerLoop

    method = probe_method("probe", prefixes)
    for i in range(0, len(tasks), 32):
        chunk = tasks[i:i + 32]
        eps = [episode_from_task(t, table) for t in chunk]
        with torch.no_grad():
            answers, _ = answer_episodes(model, eps, method=method, loop=InnerLoop(steps=0))
        yield from zip(chunk, eps, answers, strict=True)


def probe_parser(doc: str, commands: Sequence[str] = ("train", "eval"),
                 dataset: str = "fashion-open-ended") -> argparse.ArgumentParser:
    """The arguments of a probe that trains under a patch and evaluates: ``COMMAND RUN_DIR
    [OVERRIDES...] [--seed] [--dataset] [--split] [--tasks] [--ways]``."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("command", choices=list(commands))
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="train: config overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default=dataset)
    p.add_argument("--split", default="val")
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--ways", type=int, default=2)
    return p


def train_probe(a: argparse.Namespace, name: str, prefixes_for: Callable[[Any], PrefixFn]) -> None:
    """Train (or resume) ``a.run_dir`` on the default config with ``a.overrides`` and ``a.seed``
    by the method ``name``: the default's, with ``prefixes_for(config)`` as its prefixes hook
    (the run's config records ``train.method=NAME``)."""
    from metamapper.config import config_from_dict
    from metamapper.runs import has_run

    cfg = config_from_dict({}, [*a.overrides, f"train.seed={a.seed}", f"train.method={name}"])
    register(probe_method(name, prefixes_for(cfg))).train(cfg, a.run_dir, resume=has_run(a.run_dir))


def row_probe(doc: str, name: str, prefixes_for: Callable[[int, float], PrefixFn],
              support: Callable[[MetaMapper, torch.Tensor, float], torch.Tensor]) -> None:
    """The command line of a probe that changes every in-context row's prefixes by one number
    ``--NAME`` (0: unchanged): ``spread RUN DATASET...`` (the median spread of 100 validation
    tasks' support prefixes, ``support(model, features, value)``), ``train RUN [OVERRIDES]`` (the
    prefixes made by ``prefixes_for(n_support, value)``, as method ``NAME-probe``), ``eval RUN``
    (a JSON line of accuracy per value)."""
    p = probe_parser(doc, ("spread", "train", "eval"), dataset="fashion-all-open-ended")
    p.add_argument(f"--{name}", type=float, nargs="+", default=[0.0, 0.12])
    a = p.parse_args()  # spread: the datasets are its OVERRIDES
    values = getattr(a, name)
    if a.command == "train":
        train_probe(a, f"{name}-probe", lambda cfg: prefixes_for(cfg.data.ways * cfg.data.shots, values[-1]))
        return
    from metamapper.data.feature_table import FeatureTable
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.metrics import exact_match
    from metamapper.meta.episode import episode_from_task
    from metamapper.pretrained import load_run

    model = load_run(a.run_dir, with_vision=True).model.eval()
    for ds in a.overrides if a.command == "spread" else [a.dataset]:
        n_tasks, ways = (100, 2) if a.command == "spread" else (a.tasks, a.ways)
        ts = evaluation_tasks(ds, data=None, ways=ways, shots=1, n_tasks=n_tasks, split=a.split)
        table = FeatureTable.from_cache(model.vision, ts.images, [k for t in ts.tasks for k in t.image_keys()],
                                        progress=False)
        line = {"run": a.run_dir, "dataset": ds, "split": a.split, "ways": ways, "tasks": len(ts.tasks)}
        if a.command == "spread":
            ratios = []
            with torch.no_grad():
                for t in ts.tasks:
                    ep = episode_from_task(t, table)
                    sup = support(model, ep.features[:ep.n_support], values[-1]).float()  # (2, l, D)
                    dev = sup - sup.mean(0, keepdim=True)
                    ratios.append((dev.pow(2).sum(-1).mean() / sup.pow(2).sum(-1).mean()).sqrt().item())
            print(json.dumps({**line, name: values[-1], "spread_median": round(float(torch.tensor(ratios).median()), 3)}),
                  flush=True)
            continue
        for value in values:
            hits = n = 0
            for _, ep, preds in answered(model, ts.tasks, table, prefixes_for(ways, value)):
                for pred, answer in zip(preds, ep.answers, strict=True):
                    n += 1
                    hits += exact_match(pred, answer)
            print(json.dumps({**line, name: value, "queries": n, "accuracy": round(hits / n, 4)}), flush=True)


def main() -> None:
    p = probe_parser(__doc__)
    p.add_argument("--tau", type=float, nargs="+", default=[0.05])
    p.add_argument("--stats", choices=["mapper", "tasks"], default="mapper",
                   help="eval: standardise with the mapper's statistics or, as diagnose.py, with the "
                        "evaluated tasks' own features")
    a = p.parse_args()
    if a.command == "train":
        train_probe(a, "copy-probe", lambda cfg: matching_prefixes(cfg.data.ways * cfg.data.shots, a.tau[0]))
        return
    from metamapper.data.feature_table import FeatureTable
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.metrics import exact_match
    from metamapper.pretrained import load_run

    run = load_run(a.run_dir, with_vision=True)
    model = run.model.eval()
    ts = evaluation_tasks(a.dataset, data=None, ways=a.ways, shots=1, n_tasks=a.tasks, split=a.split)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, ts.images, keys, progress=False)
    stats = None
    if a.stats == "tasks":
        flat = table.features.float().reshape(len(table.features), -1)
        stats = flat.mean(0), flat.std(0) + 1e-6
    for tau in a.tau:
        hits = n = nn_hits = 0
        for t, ep, preds in answered(model, ts.tasks, table, matching_prefixes(a.ways, tau, stats)):
            words = [s.caption[len(t.queries[0].question):] for s in t.support]
            z = _unit(model, ep.features, stats)
            for qi, (pred, answer) in enumerate(zip(preds, ep.answers, strict=True)):
                n += 1
                hits += exact_match(pred, answer)
                nn_hits += exact_match(words[int((z[:len(words)] @ z[len(words) + qi]).argmax())], answer)
        print(json.dumps({"run": a.run_dir, "dataset": a.dataset, "split": a.split, "ways": a.ways,
                          "tasks": len(ts.tasks), "tau": tau, "queries": n, "accuracy": round(hits / n, 4),
                          "nn_features": round(nn_hits / n, 4)}), flush=True)


if __name__ == "__main__":
    main()
