"""Regularisers of the in-context default, added to the meta-loss (``train.spread_weight``,
``train.geometry_weight``).

Both act on the prefixes of every image of the meta-batch; ``docs/EXPERIMENTS.md`` records what
each measured. Example::

    loss = meta + cfg.train.spread_weight * spread_penalty(model, episodes, target=0.25)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metamapper.meta.episode import Episode
from metamapper.models.metamapper import MetaMapper


def spread_penalty(model: MetaMapper, episodes: Sequence[Episode], target: float) -> torch.Tensor:
    """Hinge on the spread of the prefix vectors over the meta-batch's images (anti-collapse).

    ``mean_d relu(g - std_d) / g`` where ``std_d`` is the standard deviation of prefix element
    ``d`` over all images of the meta-batch and ``g = target * typical |element|``. In-context
    runs can collapse to one prefix for every image (the answer is then a coin flip between the
    support words, and no gradient brings the images back); the penalty is zero while the
    image-dependent part of the prefixes keeps at least this spread (VICReg's variance term).
    """
    feats = torch.cat([ep.features for ep in episodes])
    p = model.prefixes(feats, {}).flatten(1)  # (images, l * D)
    g = target * p.detach().abs().mean()
    return torch.relu(g - p.std(0)).mean() / g


def geometry_penalty(model: MetaMapper, episodes: Sequence[Episode]) -> torch.Tensor:
    """How far the prefixes' similarity structure is from the visual features' (information keeping).

    ``mean_{i != j} (cos(p_i, p_j) - cos(f_i, f_j))^2`` over the meta-batch's images, with ``p`` the
    flattened prefixes and ``f`` the flattened (standardised) features, each centred over the
    images. Episodic training on a few classes teaches the mapper to keep only what separates
    *those* classes (on Fashion-MNIST, the one training shoe class lets sneakers and ankle boots
    merge); asking the prefixes to keep the features' neighbourhoods keeps what new classes need.
    """
    feats = torch.cat([ep.features for ep in episodes])
    p = model.prefixes(feats, {}).flatten(1).float()  # (images, l * D)
    f = model.mapper.standardized(feats.to(p.dtype)).flatten(1)  # (images, tokens * dim)

    def gram(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x - x.mean(0, keepdim=True), dim=1)
        return x @ x.T

    n = len(feats)
    off = ~torch.eye(n, dtype=torch.bool, device=p.device)
    return (gram(p) - gram(f).detach())[off].pow(2).mean()
