"""Where does a trained run lose held-out accuracy? (Fashion-MNIST Open-Ended 2-way 1-shot)

Per class pair: the run's exact match (in-context) and the 1-shot nearest-neighbour accuracy of the
same tasks on (a) the standardised visual features and (b) the run's prefixes. If (b) is well below
(a), the mapper discards what separates held-out classes; if (b) ~ (a) and the run is below both,
the frozen LM's matching is the bottleneck.

    python experiments/diagnose.py RUN_DIR [N_TASKS] [--init]   (--init: the mapper re-initialised, no LM)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import torch

from metamapper.data.fashion import CLASS_NAMES, DEFAULT_ROOT, FashionMNIST
from metamapper.data.feature_table import FeatureTable
from metamapper.data.sources import evaluation_tasks
from metamapper.eval.fewshot import answer_episodes, get_method
from metamapper.eval.metrics import exact_match
from metamapper.meta.episode import episode_from_task
from metamapper.meta.maml import InnerLoop
from metamapper.pretrained import load_run


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--init"]
    init = "--init" in sys.argv
    run_dir, n = args[0], int(args[1]) if len(args) > 1 else 1000
    run = load_run(run_dir, with_vision=True)
    model = run.model.eval()
    if init:
        torch.manual_seed(0)
        model.mapper.reset_parameters()
    ts = evaluation_tasks("fashion-open-ended", data=None, ways=2, shots=1, n_tasks=n)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, ts.images, keys, progress=False)
    labels = FashionMNIST(str(DEFAULT_ROOT), "test").labels
    lab = lambda k: CLASS_NAMES[int(labels[int(k.partition('/')[2])])]  # noqa: E731
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0])  # n, lm, nn_feat, nn_prefix
    m = get_method(run.method)

    def flat(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).float()
        return torch.nn.functional.normalize(x - x.mean(0, keepdim=True) * 0, dim=-1)

    mu = table.features.float().reshape(len(table.features), -1).mean(0)
    sd = table.features.float().reshape(len(table.features), -1).std(0) + 1e-6
    for i in range(0, len(ts.tasks), 32):
        chunk = ts.tasks[i:i + 32]
        eps = [episode_from_task(t, table) for t in chunk]
        if init:
            answers = [["-"] * len(ep.answers) for ep in eps]
        else:
            with torch.no_grad():
                answers, _ = answer_episodes(model, eps, query_format=m.query_format, loop=InnerLoop(steps=0))
        for t, ep, preds in zip(chunk, eps, answers, strict=True):
            s_keys = [p.image for p in t.support]
            q_keys = [q.image for q in t.queries]
            pair = " / ".join(sorted({lab(k) for k in s_keys}))
            feats = ep.features.float()
            std = (feats.reshape(len(feats), -1) - mu) / sd
            with torch.no_grad():
                pre = model.prefixes(ep.features).float()
            ns = len(s_keys)
            for qi, (p, a) in enumerate(zip(preds, ep.answers, strict=True)):
                st = stats[pair]
                st[0] += 1
                st[1] += exact_match(p, a)
                truth = lab(q_keys[qi])
                for col, rep in ((2, flat(std)), (3, flat(pre))):
                    sims = rep[:ns] @ rep[ns + qi]
                    st[col] += lab(s_keys[int(sims.argmax())]) == truth
    out = {}
    tot = [0, 0, 0, 0]
    for pair, (cnt, lm, nf, npf) in sorted(stats.items()):
        out[pair] = {"queries": cnt, "lm": round(lm / cnt, 3), "nn_features": round(nf / cnt, 3),
                     "nn_prefixes": round(npf / cnt, 3)}
        tot = [a + b for a, b in zip(tot, (cnt, lm, nf, npf), strict=True)]
    out["all"] = {"queries": tot[0], "lm": round(tot[1] / tot[0], 3),
                  "nn_features": round(tot[2] / tot[0], 3), "nn_prefixes": round(tot[3] / tot[0], 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
