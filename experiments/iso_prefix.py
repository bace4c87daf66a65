"""Probe (issue #19): an image-dependent part of the prefix that keeps the encoder's distances.

`spread_prefix.py` found that on a domain never meta-trained on the mapper's prefixes of different
images come out about half as distinct (within-task spread 0.055-0.064 against 0.11-0.14 where the
LM answers well), though the encoder's features still tell them apart (1-NN ~89 on Fashion-MNIST).
The trained mapper keeps the feature directions that mattered on its training domains. Here every
in-context row's prefixes get a fixed part that no training can bend: the image's standardised
features, centred on the mean of the row's support, through a fixed Gaussian random projection
(Johnson-Lindenstrauss: distances kept on any domain), scaled so that the support's part has RMS
``beta`` times the row's prefix norm on every domain (the spread where the LM answers well:
0.11-0.14). The mapper is trained (``train``) with the part in place, so that it learns to make the LM
use it; ``eval`` scores a run with a given ``beta`` (0: the run's own prefixes).

    python experiments/iso_prefix.py train RUN_DIR [OVERRIDES...] [--seed 0] [--beta 0.2]
    python experiments/iso_prefix.py eval RUN_DIR [--dataset fashion-all-open-ended] [--split val]
                                     [--tasks 300] [--beta 0 0.2]   # a JSON line each
    python experiments/iso_prefix.py spread RUN_DIR DATASET... [--beta 0.2]   # support spread, 100 tasks
"""

from __future__ import annotations

import torch
from copy_prefix import ORIGINAL, PrefixFn, per_row, row_probe

from metamapper.models.metamapper import MetaMapper

_PROJECTIONS: dict[tuple[int, int], torch.Tensor] = {}


def projection(d_in: int, d_out: int) -> torch.Tensor:
    """A fixed ``(d_in, d_out)`` Gaussian projection with entries N(0, 1/d_out): E|xR|^2 = |x|^2."""
    if (d_in, d_out) not in _PROJECTIONS:
        g = torch.Generator().manual_seed(0)
        _PROJECTIONS[d_in, d_out] = torch.randn(d_in, d_out, generator=g) / d_out ** 0.5
    return _PROJECTIONS[d_in, d_out]


def with_part(model: MetaMapper, p: torch.Tensor, features: torch.Tensor, n_support: int, beta: float
              ) -> torch.Tensor:
    """One row's prefixes ``p`` (k, l, D) plus the fixed part of the mapper-standardised features
    ``(k, tokens, dim)`` of its images, centred on its first ``n_support`` (the support)."""
    k, n_pre, d = p.shape
    z = model.mapper.standardized(features.float()).reshape(k, -1)  # (k, tokens * dim)
    dz = z - z[:n_support].mean(0, keepdim=True)
    dz = dz / dz[:n_support].pow(2).sum(-1).mean().sqrt().clamp(min=1e-6)  # the support's at RMS 1
    part = (dz @ projection(z.shape[1], n_pre * d).to(z.device)).reshape(k, n_pre, d) * n_pre ** 0.5
    norm = p.norm(dim=-1).pow(2).mean().sqrt()  # the row's RMS prefix norm
    return p + beta * norm * part  # the support's part: RMS beta * norm per vector, on any domain


def prefixes_for(n_support: int, beta: float) -> PrefixFn:
    return (per_row(n_support, lambda model, p, features: with_part(model, p, features, n_support, beta))
            if beta > 0 else ORIGINAL)


def main() -> None:
    row_probe(__doc__, "beta", prefixes_for, lambda model, features, beta: with_part(
        model, model.prefixes(features).float(), features, len(features), beta))


if __name__ == "__main__":
    main()
