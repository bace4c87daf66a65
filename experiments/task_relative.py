"""Probe (issue #19): features relative to the task's support, so that a new domain looks like the
training domains to the mapper.

A mapper meta-trained without Fashion-MNIST answers its tasks at chance, though the encoder's
features separate them at ~90% (1-NN) and the AdaBN-like probe (`experiments/domain_stats.py`)
gained a few points by re-estimating the features' statistics on the new domain. Here every
episode's features (support and queries, each visual token) are, in the per-dimension
standardised space, centred on the mean of its support and divided by the support's RMS, at
training and at test alike:

    z = f / std;   r = (z - mean(z[support])) / rms(z[support] - mean(z[support]))

so the mapper only ever sees where an image lies relative to the task's other images, at a scale
that does not depend on the domain. The absolute content is gone: Real-Name answers (which name
a class) are not expected to survive; Open-Ended ones (which made-up word of the support) are
what this probes.

    python experiments/task_relative.py train RUN_DIR [OVERRIDES...] [--seed 0]
    python experiments/task_relative.py eval RUN_DIR [--dataset fashion-all-open-ended]
                                        [--split val] [--tasks 300] [--ways 2] [--plain]  # one JSON line
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import torch
from copy_prefix import probe_parser, register

from metamapper.meta.episode import Episode, episode_from_task
from metamapper.methods import get_method
from metamapper.models.metamapper import MetaMapper


def relative(ep: Episode, model: MetaMapper) -> Episode:
    """``ep`` with its features relative to its support, in the mapper's standardised space, then
    mapped back through the mapper's mean and std (which the mapper removes again): the mapper
    sees ``r`` of the module docstring."""
    mean = model.mapper.feat_mean.to(ep.features.device, ep.features.dtype)
    std = model.mapper.feat_std.to(ep.features.device, ep.features.dtype)
    z = ep.features / std
    s = ep.n_support
    r = z - z[:s].mean(0, keepdim=True)  # per visual token and dimension
    rms = r[:s].pow(2).mean(dim=(0, 2), keepdim=True).sqrt().clamp(min=1e-6)  # per visual token
    ep.features = (r / rms) * std + mean
    return ep


def relative_episode(model: MetaMapper, task: object, features_of: Callable[[list[str]], torch.Tensor]) -> Episode:
    """The method's ``episode`` hook: every episode of training, validation and evaluation."""
    return relative(episode_from_task(task, features_of), model)


METHOD = replace(get_method("in_context"), name="task-relative", episode=relative_episode)


def main() -> None:
    p = probe_parser(__doc__, dataset="fashion-all-open-ended")
    p.add_argument("--plain", action="store_true", help="eval: the features as the library gives them "
                   "(a run trained without the probe)")
    a = p.parse_args()
    if a.command == "train":  # the run's config records train.method=task-relative
        from metamapper.config import config_from_dict
        from metamapper.runs import has_run

        cfg = config_from_dict({}, [*a.overrides, f"train.seed={a.seed}", f"train.method={METHOD.name}"])
        register(METHOD).train(cfg, a.run_dir, resume=has_run(a.run_dir))
        return
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.run import evaluate_run
    from metamapper.loading import load_run

    run = load_run(a.run_dir, with_vision=True)
    ts = evaluation_tasks(a.dataset, data=None, ways=a.ways, shots=1, n_tasks=a.tasks, split=a.split)
    res = evaluate_run(run, ts, method=get_method("in_context") if a.plain else METHOD, progress=False,
                       with_zero_steps=False)
    print(json.dumps({"run": a.run_dir, "plain": a.plain, "dataset": a.dataset, "split": a.split, "ways": a.ways,
                      "tasks": res["n_tasks"], "queries": res["n_queries"], "accuracy": round(res["accuracy"], 4)}),
          flush=True)


if __name__ == "__main__":
    main()
