"""Where does a trained run lose held-out accuracy? (Open-Ended 2-way 1-shot)

Per task: the run's exact match (in context) and the 1-shot nearest-neighbour accuracy of the same
tasks on (a) the standardised visual features and (b) the run's prefixes. If (b) is well below
(a), the mapper discards what separates the held-out classes; if (b) ~ (a) and the run is below
both, the frozen LM's matching is the bottleneck. On Fashion-MNIST the figures are also given per
pair of classes.

    python experiments/diagnose.py RUN_DIR [N_TASKS] [--dataset fashion-open-ended] [--split test]
                                   [--init] [--no-lm]
    (--init: the mapper re-initialised, no LM; --no-lm: the nearest neighbours only)
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from metamapper.data.fashion import CLASS_NAMES, FashionMNIST, fashion_root
from metamapper.data.feature_table import FeatureTable
from metamapper.data.sources import evaluation_tasks
from metamapper.eval.fewshot import answer_episodes, get_method
from metamapper.eval.metrics import exact_match
from metamapper.meta.episode import episode_from_task
from metamapper.meta.maml import InnerLoop
from metamapper.pretrained import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("tasks", type=int, nargs="?", default=1000)
    p.add_argument("--dataset", default="fashion-open-ended")
    p.add_argument("--split", default="test")
    p.add_argument("--init", action="store_true", help="the mapper re-initialised (no LM answers)")
    p.add_argument("--no-lm", action="store_true", help="nearest neighbours only")
    a = p.parse_args()
    run = load_run(a.run_dir, with_vision=True)
    model = run.model.eval()
    if a.init:
        torch.manual_seed(0)
        model.mapper.reset_parameters()
    ts = evaluation_tasks(a.dataset, data=None, ways=2, shots=1, n_tasks=a.tasks, split=a.split)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, ts.images, keys, progress=False)
    if a.dataset.startswith("fashion-"):
        labels = FashionMNIST(str(fashion_root()), "test").labels
        pair_of = lambda t: " / ".join(sorted(CLASS_NAMES[int(labels[int(s.image.partition("/")[2])])]  # noqa: E731
                                              for s in t.support))
    else:
        pair_of = lambda t: "all"  # noqa: E731
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0])  # n, lm, nn_feat, nn_prefix
    m = get_method(run.method)

    def flat(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.reshape(x.shape[0], -1).float(), dim=-1)

    mu = table.features.float().reshape(len(table.features), -1).mean(0)
    sd = table.features.float().reshape(len(table.features), -1).std(0) + 1e-6
    for i in range(0, len(ts.tasks), 32):
        chunk = ts.tasks[i:i + 32]
        eps = [episode_from_task(t, table) for t in chunk]
        if a.init or a.no_lm:
            answers = [["-"] * len(ep.answers) for ep in eps]
        else:
            with torch.no_grad():
                answers, _ = answer_episodes(model, eps, query_format=m.query_format, loop=InnerLoop(steps=0))
        for t, ep, preds in zip(chunk, eps, answers, strict=True):
            # each support's word: its caption after the query's question ("This is a" + " dax.")
            words = [s.caption[len(t.queries[0].question):] for s in t.support]
            feats = ep.features.float()
            std = (feats.reshape(len(feats), -1) - mu) / sd
            with torch.no_grad():
                pre = model.prefixes(ep.features).float()
            ns = len(words)
            st = stats[pair_of(t)]
            for qi, (pred, answer) in enumerate(zip(preds, ep.answers, strict=True)):
                st[0] += 1
                st[1] += exact_match(pred, answer)
                for col, rep in ((2, flat(std)), (3, flat(pre))):
                    sims = rep[:ns] @ rep[ns + qi]
                    st[col] += exact_match(words[int(sims.argmax())], answer)
    out = {}
    tot = [0.0, 0.0, 0.0, 0.0]
    for pair, (cnt, lm, nf, npf) in sorted(stats.items()):
        out[pair] = {"queries": cnt, "lm": None if a.no_lm else round(lm / cnt, 3),
                     "nn_features": round(nf / cnt, 3), "nn_prefixes": round(npf / cnt, 3)}
        tot = [x + y for x, y in zip(tot, (cnt, lm, nf, npf), strict=True)]
    out["all"] = {"queries": tot[0], "lm": None if a.no_lm else round(tot[1] / tot[0], 3),
                  "nn_features": round(tot[2] / tot[0], 3), "nn_prefixes": round(tot[3] / tot[0], 3)}
    print(json.dumps({"run": a.run_dir, "dataset": a.dataset, "split": a.split, "tasks": a.tasks,
                      "init": a.init, **out}))


if __name__ == "__main__":
    main()
