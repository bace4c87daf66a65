"""In-context training aids: the copy-query warm-up, the anti-collapse spread penalty and the
feature-geometry penalty."""

from __future__ import annotations

import pytest
import torch

from metamapper.config import ConfigError, config_from_dict
from metamapper.meta.episode import Episode
from metamapper.train.episodic import copy_queries


def _episode() -> Episode:
    return Episode(features=torch.arange(6.0).view(6, 1, 1),
                   captions=["This is a dax.", "This is a blicket."],
                   questions=["This is a"] * 4, answers=["blicket", "dax", "Blicket", "dax"])


def test_every_query_repeats_the_support_image_of_its_answer():
    ep = _episode()
    out = copy_queries(ep, 1.0, torch.Generator().manual_seed(0))
    assert out.features.flatten().tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert ep.features.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # input untouched
    assert out.answers == ep.answers and out.captions == ep.captions


def test_share_zero_keeps_the_queries_and_a_half_share_replaces_some():
    ep = _episode()
    assert torch.equal(copy_queries(ep, 0.0, torch.Generator()).features, ep.features)
    gen = torch.Generator().manual_seed(0)
    changed = sum(int(not torch.equal(copy_queries(ep, 0.5, gen).features[2:], ep.features[2:]))
                  for _ in range(50))
    assert 0 < changed < 50


def test_an_answer_without_a_support_caption_is_left_alone():
    ep = Episode(features=torch.arange(3.0).view(3, 1, 1), captions=["This is a dax.", "A wug."],
                 questions=["This is a"], answers=["zorp"])
    assert torch.equal(copy_queries(ep, 1.0, torch.Generator()).features, ep.features)


@pytest.mark.parametrize("bad", ["train.copy_queries=1.5", "train.copy_updates=-1"])
def test_out_of_range_warm_up_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="copy"):
        config_from_dict({}, [bad])


def test_spread_penalty_is_one_for_collapsed_prefixes_and_zero_for_spread_ones(smoke_model):
    from metamapper.train.episodic import spread_penalty

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
    from metamapper.train.episodic import geometry_penalty

    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    assert geometry_penalty(_Linear(q * 3.0), _eps()).item() == pytest.approx(0.0, abs=1e-6)
    # a map that keeps one direction only: every pair of images is (anti-)parallel
    rank1 = torch.zeros(8, 8)
    rank1[0, 0] = 1.0
    assert geometry_penalty(_Linear(rank1), _eps()).item() > 0.1


def test_geometry_penalty_trains_the_mapper(smoke_model):
    from metamapper.train.episodic import geometry_penalty

    feats = torch.randn(8, 1, 16)
    eps = [Episode(features=feats, captions=["a"], questions=[""] * 7, answers=["b"] * 7)]
    smoke_model.mapper.zero_grad()
    geometry_penalty(smoke_model, eps).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in smoke_model.mapper.parameters())
    smoke_model.mapper.zero_grad()


def test_negative_geometry_weight_is_a_config_error():
    with pytest.raises(ConfigError, match="geometry_weight"):
        config_from_dict({}, ["train.geometry_weight=-1"])


def test_class_mix_blends_each_class_with_the_same_class_of_a_partner_task():
    from metamapper.train.episodic import mix_classes

    a = Episode(features=torch.tensor([0.0, 10.0, 10.0, 0.0]).view(4, 1, 1),
                captions=["This is a dax.", "This is a blicket."],
                questions=["This is a"] * 2, answers=["blicket", "dax"])
    b = Episode(features=torch.tensor([200.0, 100.0, 100.0, 100.0, 200.0]).view(5, 1, 1),
                captions=["This is a wug.", "This is a zorp."],  # way 0: 200, way 1: 100
                questions=["This is a"] * 3, answers=["zorp", "zorp", "wug"])
    out = mix_classes([a, b], 1.0, torch.Generator().manual_seed(0))
    assert out[0].captions == a.captions and out[0].answers == a.answers
    lam = float(1 - out[0].features[0, 0, 0] / 200)  # support 0 (way 0) blended with b's way 0
    assert 0.25 <= lam <= 0.75
    expected = lam * a.features + (1 - lam) * torch.tensor([200.0, 100.0, 100.0, 200.0]).view(4, 1, 1)
    assert torch.allclose(out[0].features, expected)
    # images of one class stay together: a's query of way 1 equals its support of way 1
    assert torch.equal(out[0].features[2], out[0].features[1])
    assert torch.equal(a.features.flatten(), torch.tensor([0.0, 10.0, 10.0, 0.0]))  # input untouched


def test_class_mix_share_zero_and_unmatched_ways():
    from metamapper.train.episodic import mix_classes

    ep = _episode()
    assert mix_classes([ep, ep], 0.0, torch.Generator()) == [ep, ep]
    odd = Episode(features=torch.arange(3.0).view(3, 1, 1), captions=["This is a dax.", "A wug."],
                  questions=["This is a"], answers=["zorp"])  # an answer no caption holds
    out = mix_classes([odd, ep], 1.0, torch.Generator().manual_seed(0))
    assert out[0] is odd and out[1] is not ep


def test_class_mix_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="class_mix"):
        config_from_dict({}, ["train.class_mix=2"])


def test_feature_noise_adds_gaussian_noise_of_the_given_std_and_keeps_the_text():
    from metamapper.train.episodic import _noisy

    ep = Episode(features=torch.full((6, 4, 256), 3.0), captions=["This is a dax.", "This is a wug."],
                 questions=["This is a"] * 4, answers=["dax", "wug", "wug", "dax"])
    out = _noisy(ep, 0.5, torch.Generator().manual_seed(0))
    noise = out.features - 3.0
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 0.5) < 0.02
    assert torch.equal(ep.features, torch.full((6, 4, 256), 3.0))  # input untouched
    assert (out.captions, out.questions, out.answers) == (ep.captions, ep.questions, ep.answers)


def test_negative_feature_noise_is_a_config_error():
    with pytest.raises(ConfigError, match="feature_noise"):
        config_from_dict({}, ["train.feature_noise=-0.1"])
