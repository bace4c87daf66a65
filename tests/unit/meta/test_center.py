"""``mapper.center``: each image seen relative to its task's support set, the same way in
training, evaluation and the Python API."""

from __future__ import annotations

import pytest
import torch

from metamapper.config import load_config
from metamapper.data.synthetic import build_synthetic_tasks
from metamapper.eval.fewshot import evaluate
from metamapper.meta.episode import Episode, episode_from_task, model_view
from metamapper.models.factory import build_model
from metamapper.models.metamapper import MetaMapper
from tests.conftest import SMOKE_CONFIG

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(keys: list[str]) -> torch.Tensor:
    return torch.stack([torch.randn(1, 16, generator=torch.Generator().manual_seed(sum(map(ord, k)))) + 3.0
                        for k in keys])


@pytest.fixture(scope="module")
def centered() -> MetaMapper:
    cfg = load_config(SMOKE_CONFIG, ["mapper.center=true", "mapper.standardize=true"])
    torch.manual_seed(0)
    model = build_model(cfg.backbones, cfg.mapper, with_vision=False, visual_dim=16)
    model.mapper.set_feature_stats(torch.full((16,), 2.0), torch.full((16,), 0.5))
    return model.eval()


def test_center_features_subtracts_the_support_mean(centered: MetaMapper):
    feats = torch.randn(5, 1, 16)
    out = centered.center_features(feats, 2)
    std = centered.mapper.standardized(out)
    assert torch.allclose(std[:2].mean(0), torch.zeros(1, 16), atol=1e-5)  # support mean -> 0
    assert torch.allclose(std, (feats - feats[:2].mean(0)) / 0.5, atol=1e-5)


def test_model_view_only_for_a_centering_model(centered: MetaMapper, smoke_model: MetaMapper):
    ep = Episode(features=torch.randn(3, 1, 16), captions=["a.", "b."], questions=[""], answers=["a"])
    assert model_view(smoke_model, ep) is ep
    view = model_view(centered, ep)
    assert torch.equal(view.features, centered.center_features(ep.features, 2))
    assert view.captions == ep.captions and view.answers == ep.answers


def test_evaluation_centers_each_task(centered: MetaMapper, monkeypatch):
    """What evaluate() hands the model: each task's features relative to its support mean."""
    import metamapper.eval.fewshot as fewshot

    seen: list[torch.Tensor] = []

    def record(model, eps, params, fmt, n):
        seen.extend(ep.features for ep in eps)
        return [[""] * ep.n_query for ep in eps]

    monkeypatch.setattr(fewshot, "_answer", record)
    tasks = build_synthetic_tasks(split="test", ways=2, shots=1, n_tasks=4, seed=3).tasks
    evaluate(centered, tasks, _features, method="in-context", progress=False)
    raw = [episode_from_task(t, _features) for t in tasks]
    assert len(seen) == len(raw)
    for got, ep in zip(seen, raw, strict=True):
        assert torch.equal(got, centered.center_features(ep.features, ep.n_support))
        assert not torch.equal(got, ep.features)


def test_a_centering_run_trains_and_predicts(tmp_path, monkeypatch):
    from metamapper.data.synthetic import draw
    from metamapper.pretrained import adapt_to_support, load_run
    from metamapper.train.episodic import train

    cfg = load_config(SMOKE_CONFIG, ["mapper.center=true", "train.updates=2", "train.val_every=0",
                                     f"data.feature_cache={tmp_path / 'f'}"])
    run = load_run(train(cfg, tmp_path / "run", progress=False))
    assert run.model.center_support
    imgs = [draw(0, 0, seed=1), draw(1, 1, seed=2), draw(0, 0, seed=3)]
    adapted = adapt_to_support(run, imgs[:2], ["This is a dax.", "This is a blicket."])
    assert len(adapted.answer([imgs[2]], question="This is a")) == 1
    # the Python API hands the model the same view as evaluation
    import metamapper.eval.fewshot as fewshot

    seen: list[torch.Tensor] = []
    monkeypatch.setattr(fewshot, "_answer", lambda m, eps, p, f, n: seen.extend(e.features for e in eps)
                        or [[""] * e.n_query for e in eps])
    adapted.answer([imgs[2]], question="This is a")
    raw = torch.cat([adapted.support, run.model.encode_images([imgs[2]])])
    assert torch.equal(seen[0], run.model.center_features(raw, 2))
