"""Probe: does re-estimating the mapper's feature standardisation on the evaluation domain help?

The mapper standardises the encoder's features with the mean and std of its training images. On
another domain those statistics are off; this replaces them with the mean and std of the
evaluation tasks' own images (AdaBN-like, transductive over the task set) and scores the same
validation tasks both ways (2-way 1-shot, in context).

    python experiments/domain_stats.py RUN_DIR DATASET [N_TASKS]     # prints one JSON line
"""

from __future__ import annotations

import argparse
import json

from metamapper.data.feature_table import FeatureTable
from metamapper.data.sources import evaluation_tasks
from metamapper.eval.run import evaluate_run
from metamapper.pretrained import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("dataset")
    p.add_argument("tasks", type=int, nargs="?", default=200)
    a = p.parse_args()
    run = load_run(a.run_dir, with_vision=True)
    ts = evaluation_tasks(a.dataset, data=None, ways=2, shots=1, n_tasks=a.tasks, split="val")
    keys = sorted({k for t in ts.tasks for k in t.image_keys()})
    table = FeatureTable.from_cache(run.model.vision, ts.images, keys, progress=False)
    flat = table.features.float().reshape(-1, table.features.shape[-1])  # (images x tokens, dim)
    base = evaluate_run(run, ts, progress=False, with_zero_steps=False)["accuracy"]
    run.model.mapper.set_feature_stats(flat.mean(0), flat.std(0))
    domain = evaluate_run(run, ts, progress=False, with_zero_steps=False)["accuracy"]
    print(json.dumps({"run": a.run_dir, "dataset": a.dataset, "split": "val", "tasks": a.tasks,
                      "images": len(keys), "accuracy": base, "accuracy_domain_stats": domain}))


if __name__ == "__main__":
    main()
