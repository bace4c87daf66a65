"""Probe (issue #19): does a prefix made of the LM's own token embeddings help it match images?

`experiments/diagnose.py` found the frozen LM to be where accuracy is lost on new domains: the
prefixes tell the test concepts apart (1-NN) far better than the LM's answers do. A guess at why:
the LM matches a query to the support by token identity (induction-like copying), and continuous
prefixes far from any token give it little to match on. Here each prefix vector becomes a softmax
mixture of the LM's first ``--vocab`` token embeddings, weighted by the cosine similarity of the
mapper's output to each (centred) embedding over a learned temperature, so the prefix lives
among the tokens the LM reads.

The default recipe is trained unchanged with this head (``train``), then the run is scored on
validation tasks (``eval``), 2-way 1-shot in context. Not a library option: it stays here unless it
wins on validation over several seeds.

    python experiments/vocab_prefix.py train RUN_DIR [--seed S] [overrides ...]
    python experiments/vocab_prefix.py eval RUN_DIR DATASET [N_TASKS]     # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

import metamapper.pretrained
import metamapper.train.common
from metamapper.models import factory

VOCAB, TAU = 16384, 0.01  # at 0.01 a random direction mixes ~40 tokens (entropy 3.8 nats)


class VocabPrefix(nn.Module):
    """``base``'s prefix vectors, each replaced by ``softmax(cos(h, E) / tau) @ E`` over the token
    embeddings ``E`` (a buffer, not saved: it is the frozen LM's)."""

    def __init__(self, base: nn.Module, embeddings: torch.Tensor, tau: float = TAU) -> None:
        super().__init__()
        self.base = base
        self.visual_dim, self.embed_dim, self.prefix_len = base.visual_dim, base.embed_dim, base.prefix_len
        self.register_buffer("vocab", embeddings.float().clone(), persistent=False)  # (V, D)
        # directions from the embeddings' mean: the tokens share a large common component
        # (mean cosine 0.2), which alone would make every mixture nearly uniform
        centred = embeddings.float() - embeddings.float().mean(0)
        self.register_buffer("vocab_dir", F.normalize(centred, dim=-1), persistent=False)
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau)))

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.base.set_feature_stats(mean, std)

    def standardized(self, features: torch.Tensor) -> torch.Tensor:
        return self.base.standardized(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.base(features)  # (B, l, D)
        w = (F.normalize(h, dim=-1) @ self.vocab_dir.T / self.log_tau.exp()).softmax(-1)  # (B, l, V)
        return w @ self.vocab  # (B, l, D): mixtures of token embeddings


def patch(vocab: int = VOCAB, tau: float = TAU) -> None:
    """Every model built from here on (training and loading) gets the vocabulary head."""
    original = factory.build_model

    def build_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = original(*args, **kwargs)
        emb = model.lm.model.get_input_embeddings().weight.detach()[:vocab]
        head = VocabPrefix(model.mapper, emb, tau)
        model.mapper = head.to(next(model.mapper.parameters()).device)
        return model

    for module in (factory, metamapper.train.common, metamapper.pretrained):
        module.build_model = build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["train", "eval"])
    p.add_argument("run_dir")
    p.add_argument("rest", nargs="*", help="train: config overrides; eval: DATASET [N_TASKS]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--tau", type=float, default=TAU)
    a = p.parse_args()
    patch(a.vocab, a.tau)
    if a.command == "train":
        from metamapper.config import config_from_dict
        from metamapper.runs import has_run
        from metamapper.train import episodic

        cfg = config_from_dict({}, [*a.rest, f"train.seed={a.seed}"])
        episodic.train(cfg, a.run_dir, resume=has_run(a.run_dir))
        return
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.run import evaluate_run
    from metamapper.pretrained import load_run

    dataset, n = a.rest[0], int(a.rest[1]) if len(a.rest) > 1 else 300
    run = load_run(a.run_dir)
    ts = evaluation_tasks(dataset, data=None, ways=2, shots=1, n_tasks=n, split="val")
    res = evaluate_run(run, ts, progress=False, with_zero_steps=False)
    print(json.dumps({"run": a.run_dir, "dataset": dataset, "split": "val", "tasks": n,
                      "accuracy": res["accuracy"], "ci95": res["ci95"],
                      "tau": run.model.mapper.log_tau.exp().item()}))


if __name__ == "__main__":
    main()
