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

import torch
from copy_prefix import probe_parser, train_patched

import metamapper.eval.fewshot
import metamapper.train.episodic
from metamapper.meta.episode import Episode, episode_from_task

STD: list[torch.Tensor] = []  # the mapper's per-dimension std (set once the mapper has it)


def relative(ep: Episode) -> Episode:
    """``ep`` with its features relative to its support, in the standardised space (then mapped
    back through the std, which the mapper divides by again)."""
    std = STD[0].to(ep.features.device, ep.features.dtype)
    z = ep.features / std
    s = ep.n_support
    r = z - z[:s].mean(0, keepdim=True)  # per visual token and dimension
    rms = r[:s].pow(2).mean(dim=(0, 2), keepdim=True).sqrt().clamp(min=1e-6)  # per visual token
    ep.features = (r / rms) * std
    return ep


def relative_episodes(task: object, features_of: Callable[[list[str]], torch.Tensor]) -> Episode:
    return relative(episode_from_task(task, features_of))


def patch() -> None:
    """Relative features everywhere an episode is built (training, validation, evaluation); the
    mapper standardises by the std only (its mean set to 0)."""
    metamapper.train.episodic.episode_from_task = relative_episodes
    metamapper.eval.fewshot.episode_from_task = relative_episodes
    from metamapper.models.mapper import _FeatureStats

    original = _FeatureStats.set_feature_stats

    def set_feature_stats(self: _FeatureStats, mean: torch.Tensor, std: torch.Tensor) -> None:
        original(self, torch.zeros_like(mean), std)
        STD[:] = [self.feat_std.detach().clone()]

    _FeatureStats.set_feature_stats = set_feature_stats  # type: ignore[method-assign]


def main() -> None:
    p = probe_parser(__doc__, dataset="fashion-all-open-ended")
    p.add_argument("--plain", action="store_true", help="eval: the features as the library gives them "
                   "(a run trained without the probe)")
    a = p.parse_args()
    if not a.plain:
        patch()
    if a.command == "train":
        train_patched(a, lambda cfg: None)
        return
    from metamapper.data.feature_table import FeatureTable
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.metrics import exact_match
    from metamapper.meta.maml import InnerLoop
    from metamapper.pretrained import load_run

    run = load_run(a.run_dir, with_vision=True)
    model = run.model.eval()
    STD[:] = [model.mapper.feat_std.detach().clone()]
    ts = evaluation_tasks(a.dataset, data=None, ways=a.ways, shots=1, n_tasks=a.tasks, split=a.split)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, ts.images, keys, progress=False)
    hits = n = 0
    for i in range(0, len(ts.tasks), 32):
        eps = [(episode_from_task if a.plain else relative_episodes)(t, table) for t in ts.tasks[i:i + 32]]
        with torch.no_grad():
            answers, _ = metamapper.eval.fewshot.answer_episodes(model, eps, query_format="in_context",
                                                                  loop=InnerLoop(steps=0))
        for ep, preds in zip(eps, answers, strict=True):
            for pred, answer in zip(preds, ep.answers, strict=True):
                n += 1
                hits += exact_match(pred, answer)
    print(json.dumps({"run": a.run_dir, "plain": a.plain, "dataset": a.dataset, "split": a.split, "ways": a.ways,
                      "tasks": len(ts.tasks), "queries": n, "accuracy": round(hits / n, 4)}), flush=True)


if __name__ == "__main__":
    main()
