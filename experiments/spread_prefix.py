"""Probe (issue #19): the same within-task spread of prefixes in every domain.

Measured on 100 validation tasks (2-way 1-shot, `RMS(p - mean) / RMS(p)` over a task's support
prefixes): where the LM answers well the spread is 0.11-0.14 (a run on its own training domains),
where it answers at chance 0.055-0.064 (the Fashion-only run on icons and emoji, the run without
Fashion-MNIST on Fashion-MNIST): on a new domain the mapper's prefixes of different images come out
too alike for the frozen LM to match a query to its support. Here every in-context row's prefixes
are moved around the mean of the row's support prefixes so that the support's spread is
``alpha`` times their RMS norm, each vector then rescaled to its own norm; at test time only
(``eval``) or at training and test alike (``train``, so that the mapper learns under it).

    python experiments/spread_prefix.py spread RUN_DIR DATASET...  # the measurement above, 100 tasks each
    python experiments/spread_prefix.py train RUN_DIR [OVERRIDES...] [--seed 0] [--alpha 0.12]
    python experiments/spread_prefix.py eval RUN_DIR [--dataset fashion-all-open-ended] [--split val]
                                        [--tasks 300] [--alpha 0 0.12]  # a JSON line each (0: as is)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch
from copy_prefix import ORIGINAL, probe_parser, slots_by_row, train_patched

import metamapper.eval.fewshot
import metamapper.meta.maml
from metamapper.models.metamapper import MetaMapper, PackedBatch


def spread_prefixes(n_support: int, alpha: float):  # noqa: ANN201
    """``task_prefixes`` with each row's support spread set to ``alpha`` (0: unchanged)."""

    def task_prefixes(model: MetaMapper, features: torch.Tensor, batch: PackedBatch,
                      row_task: Sequence[int] | torch.Tensor, params: Sequence[Mapping[str, torch.Tensor]]
                      ) -> torch.Tensor:
        out = ORIGINAL(model, features, batch, row_task, params)
        if alpha <= 0:
            return out
        new = list(out.unbind(0))
        for slots in slots_by_row(batch):
            if len(slots) <= n_support:
                continue
            p = out[slots].float()  # (k, l, D): the row's supports, then its queries
            sup = p[:n_support]
            mean = sup.mean(0, keepdim=True)
            spread = (sup - mean).pow(2).sum(-1).mean().sqrt().clamp(min=1e-6)
            q = mean + (p - mean) * (alpha * sup.pow(2).sum(-1).mean().sqrt() / spread)
            q = q * (p.norm(dim=-1, keepdim=True) / q.norm(dim=-1, keepdim=True).clamp(min=1e-6))
            for i, s in enumerate(slots):
                new[s] = q[i].to(out.dtype)
        return torch.stack(new)

    return task_prefixes


def patch(n_support: int, alpha: float) -> None:
    fn = spread_prefixes(n_support, alpha)
    metamapper.meta.maml.task_prefixes = fn  # training's query loss (task_losses)
    metamapper.eval.fewshot.task_prefixes = fn  # answering


def main() -> None:
    p = probe_parser(__doc__, ("spread", "train", "eval"), dataset="fashion-all-open-ended")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.0, 0.12])
    a = p.parse_args()  # spread: the datasets are its OVERRIDES
    if a.command == "train":
        train_patched(a, lambda cfg: patch(cfg.data.ways * cfg.data.shots, a.alpha[-1]))
        return
    from copy_prefix import answered

    from metamapper.data.feature_table import FeatureTable
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.metrics import exact_match
    from metamapper.meta.episode import episode_from_task
    from metamapper.pretrained import load_run

    run = load_run(a.run_dir, with_vision=True)
    model = run.model.eval()
    if a.command == "spread":
        for ds in a.overrides:
            ts = evaluation_tasks(ds, data=None, ways=2, shots=1, n_tasks=100, split=a.split)
            table = FeatureTable.from_cache(model.vision, ts.images, [k for t in ts.tasks for k in t.image_keys()],
                                            progress=False)
            ratios = []
            with torch.no_grad():
                for t in ts.tasks:
                    ep = episode_from_task(t, table)
                    sup = model.prefixes(ep.features[:ep.n_support]).float()  # (2, l, D)
                    dev = sup - sup.mean(0, keepdim=True)
                    ratios.append((dev.pow(2).sum(-1).mean() / sup.pow(2).sum(-1).mean()).sqrt().item())
            print(json.dumps({"run": a.run_dir, "dataset": ds, "split": a.split, "tasks": len(ts.tasks),
                              "spread_median": round(float(torch.tensor(ratios).median()), 3)}), flush=True)
        return
    ts = evaluation_tasks(a.dataset, data=None, ways=a.ways, shots=1, n_tasks=a.tasks, split=a.split)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, ts.images, keys, progress=False)
    for alpha in a.alpha:
        patch(a.ways, alpha)
        hits = n = 0
        for _, ep, preds in answered(model, ts.tasks, table):
            for pred, answer in zip(preds, ep.answers, strict=True):
                n += 1
                hits += exact_match(pred, answer)
        print(json.dumps({"run": a.run_dir, "dataset": a.dataset, "split": a.split, "ways": a.ways,
                          "tasks": len(ts.tasks), "alpha": alpha, "queries": n,
                          "accuracy": round(hits / n, 4)}), flush=True)


if __name__ == "__main__":
    main()
