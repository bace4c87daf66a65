"""The default's regularisers: the anti-collapse spread penalty and the feature-geometry penalty."""

from __future__ import annotations

import pytest
import torch

from metamapper.config import ConfigError, config_from_dict
from metamapper.meta.episode import Episode
from metamapper.train.penalties import geometry_penalty, spread_penalty


def test_spread_penalty_is_one_for_collapsed_prefixes_and_zero_for_spread_ones(smoke_model):
    same = torch.randn(1, 1, 16).expand(6, 1, 16).clone()
    eps = [Episode(features=same, captions=["a"], questions=[""] * 5, answers=["b"] * 5)]
    smoke_model.eval()
    collapsed = spread_penalty(smoke_model, eps, 0.25)
    assert collapsed.item() == pytest.approx(1.0, abs=1e-4)
    spread = [Episode(features=torch.randn(6, 1, 16) * 100, captions=["a"], questions=[""] * 5,
                      answers=["b"] * 5)]
    assert spread_penalty(smoke_model, spread, 1e-3).item() == 0.0
    # its gradient reaches the mapper (pushing the images' prefixes apart)
    smoke_model.mapper.zero_grad()
    spread_penalty(smoke_model, eps + spread, 0.9).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in smoke_model.mapper.parameters())
    smoke_model.mapper.zero_grad()


class _Linear:
    """Stands in for a model whose prefixes are a fixed linear map of the features."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.mapper = type("M", (), {"standardized": staticmethod(lambda f: f)})()

    def prefixes(self, feats: torch.Tensor, params: dict) -> torch.Tensor:
        return (feats.flatten(1) @ self.weight).view(len(feats), 2, -1)


def _eps(n: int = 12, dim: int = 8) -> list[Episode]:
    feats = torch.randn(n, 1, dim, generator=torch.Generator().manual_seed(0))
    return [Episode(features=feats, captions=["a"], questions=[""] * (n - 1), answers=["b"] * (n - 1))]


def test_geometry_penalty_is_zero_for_an_isometry_and_positive_for_a_collapsing_map():
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    assert geometry_penalty(_Linear(q * 3.0), _eps()).item() == pytest.approx(0.0, abs=1e-6)
    # a map that keeps one direction only: every pair of images is (anti-)parallel
    rank1 = torch.zeros(8, 8)
    rank1[0, 0] = 1.0
    assert geometry_penalty(_Linear(rank1), _eps()).item() > 0.1


def test_geometry_penalty_trains_the_mapper(smoke_model):
    feats = torch.randn(8, 1, 16)
    eps = [Episode(features=feats, captions=["a"], questions=[""] * 7, answers=["b"] * 7)]
    smoke_model.mapper.zero_grad()
    geometry_penalty(smoke_model, eps).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in smoke_model.mapper.parameters())
    smoke_model.mapper.zero_grad()


def test_negative_geometry_weight_is_a_config_error():
    with pytest.raises(ConfigError, match="geometry_weight"):
        config_from_dict({}, ["train.geometry_weight=-1"])
