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

import torch
from copy_prefix import ORIGINAL, PrefixFn, per_row, row_probe


def spread(p: torch.Tensor, n_support: int, alpha: float) -> torch.Tensor:
    """One row's prefixes ``p`` (k, l, D: its supports, then its queries) moved around the
    supports' mean so that the supports' spread is ``alpha``, each vector back to its own norm."""
    sup = p[:n_support]
    mean = sup.mean(0, keepdim=True)
    now = (sup - mean).pow(2).sum(-1).mean().sqrt().clamp(min=1e-6)  # the supports' spread now
    q = mean + (p - mean) * (alpha * sup.pow(2).sum(-1).mean().sqrt() / now)
    return q * (p.norm(dim=-1, keepdim=True) / q.norm(dim=-1, keepdim=True).clamp(min=1e-6))


def prefixes_for(n_support: int, alpha: float) -> PrefixFn:
    return per_row(n_support, lambda model, p, features: spread(p, n_support, alpha)) if alpha > 0 else ORIGINAL


def main() -> None:
    row_probe(__doc__, "alpha", prefixes_for, lambda model, features, alpha: model.prefixes(features))


if __name__ == "__main__":
    main()
