"""Probe (issue #18): can MAML's inner loop write the support words at all, at some rate?

For a MAML run, score validation tasks and the support fit (the adapted model naming its own
support images) at several (steps, inner rate) pairs; prints one JSON line per pair with the
first few predictions.

    python experiments/maml_fit.py RUN_DIR [--tasks 16] [--pairs 5:0.01 10:0.01 5:0.1 5:1.0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--dataset", default="fashion-open-ended")
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--pairs", nargs="+", default=["5:0.01", "10:0.01", "5:0.1", "5:1.0"], metavar="STEPS:LR")
    a = p.parse_args()
    from metamapper.data.feature_table import FeatureTable
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.fewshot import evaluate
    from metamapper.pretrained import load_run

    run = load_run(a.run_dir)
    ts = evaluation_tasks(a.dataset, data=None, ways=2, shots=1, n_tasks=a.tasks, split="val")
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(run.model.vision, ts.images, keys, progress=False)
    for pair in a.pairs:
        steps, lr = int(pair.split(":")[0]), float(pair.split(":")[1])
        loop = replace(run.config.train.inner, steps=steps, lr=lr)
        res = evaluate(run.model, ts.tasks, table, method="maml", steps=steps, loop=loop, lrs=run.lrs,
                       support_fit=True, progress=False)
        print(json.dumps({"run": a.run_dir, "tasks": len(ts.tasks), "steps": steps, "lr": lr,
                          "accuracy": res.accuracy, "support_fit": res.support_fit,
                          "predictions": [e["prediction"] for e in res.examples[:4]]}), flush=True)


if __name__ == "__main__":
    main()
