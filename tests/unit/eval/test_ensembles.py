"""Ensembles in context: the support orders, the reordered episodes, and that the chosen answer is
the generated candidate of highest log-likelihood summed over the orders and the member mappers."""

from __future__ import annotations

import pytest
import torch

from metamapper.data.synthetic import build_synthetic_tasks
from metamapper.eval.fewshot import (
    answer_episodes,
    evaluate,
    reorder_support,
    support_orders,
)
from metamapper.eval.metrics import normalize_answer
from metamapper.meta.episode import Episode, batch_rows, episode_from_task, in_context_rows
from metamapper.meta.maml import InnerLoop, task_prefixes
from metamapper.models.metamapper import MetaMapper

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(keys: list[str]) -> torch.Tensor:
    return torch.stack([torch.randn(1, 16, generator=torch.Generator().manual_seed(sum(map(ord, k))))
                        for k in keys])


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    tasks = build_synthetic_tasks(split="test", ways=2, shots=2, n_tasks=4, seed=5).tasks
    return [episode_from_task(t, _features) for t in tasks]


def test_support_orders():
    assert support_orders(3, 1) == [[0, 1, 2]]
    assert support_orders(3, 2) == [[0, 1, 2], [2, 1, 0]]
    six = support_orders(3, 10)  # only 3! = 6 orders exist
    assert len(six) == 6 and sorted(map(tuple, six)) == sorted(
        {(a, b, c) for a in range(3) for b in range(3) for c in range(3) if len({a, b, c}) == 3})
    assert support_orders(1, 4) == [[0]]
    assert support_orders(10, 4) == support_orders(10, 4)  # deterministic
    assert len({tuple(o) for o in support_orders(10, 4)}) == 4


def test_reorder_support_moves_images_with_their_captions(episodes):
    ep = episodes[0]
    order = [3, 1, 0, 2]
    r = reorder_support(ep, order)
    assert r.captions == [ep.captions[i] for i in order]
    assert torch.equal(r.features[:4], ep.features[order])
    assert torch.equal(r.features[4:], ep.features[4:])  # queries unchanged
    assert r.answers == ep.answers and r.questions == ep.questions


def test_one_ordering_is_the_plain_answer(smoke_model: MetaMapper, episodes):
    loop = InnerLoop(steps=0)
    plain, _ = answer_episodes(smoke_model.eval(), episodes, query_format="in_context", loop=loop,
                               max_new_tokens=3)
    one, _ = answer_episodes(smoke_model, episodes, query_format="in_context", loop=loop,
                             max_new_tokens=3, orderings=1)
    assert plain == one


def test_the_ensemble_picks_the_most_likely_generated_answer(smoke_model: MetaMapper, monkeypatch):
    import metamapper.eval.fewshot as fewshot

    model = smoke_model.eval()
    tasks = build_synthetic_tasks(split="test", ways=2, shots=1, n_tasks=4, seed=5).tasks
    episodes = [episode_from_task(t, _features) for t in tasks]
    # the tiny random LM answers the same under both orders; make each order give its own answer
    # (the word of the first support caption), so the choice between two candidates is tested
    first_word = lambda ep: normalize_answer(ep.captions[0]).split()[-1]  # noqa: E731
    monkeypatch.setattr(fewshot, "_answer", lambda m, eps, params, fmt, n: [
        [first_word(ep)] * ep.n_query for ep in eps])
    chosen, _ = answer_episodes(model, episodes, query_format="in_context", loop=InnerLoop(steps=0),
                                max_new_tokens=3, orderings=2)
    picked_second = 0
    for ep, answers in zip(episodes, chosen, strict=True):
        variants = [reorder_support(ep, o) for o in support_orders(ep.n_support, 2)]
        cands = [first_word(v) for v in variants]
        assert len(set(cands)) == 2
        for q, answer in enumerate(answers):

            def total(cand: str, q: int = q, variants: list[Episode] = variants) -> float:
                out = 0.0
                for v in variants:
                    s = v.n_support
                    one = Episode(features=torch.cat([v.features[:s], v.features[s + q : s + q + 1]]),
                                  captions=v.captions, questions=[v.questions[q]], answers=[cand])
                    eb = batch_rows([one], in_context_rows, with_answer=True)
                    out += float(model.target_logprobs(eb.features, model.pack(eb.rows))[0])
                return out

            scores = [total(c) for c in cands]
            assert answer == cands[max(range(2), key=scores.__getitem__)]
            picked_second += answer == cands[1]
    assert picked_second > 0  # not always the first order's answer


def _perturbed(model: MetaMapper, seed: int) -> dict[str, torch.Tensor]:
    """The model's mapper weights (parameters and buffers) with noise: another ensemble member."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in model.mapper.state_dict().items()}


def test_a_member_with_the_models_own_weights_changes_nothing(smoke_model: MetaMapper, episodes):
    loop = InnerLoop(steps=0)
    plain, _ = answer_episodes(smoke_model.eval(), episodes, query_format="in_context", loop=loop,
                               max_new_tokens=3)
    same, _ = answer_episodes(smoke_model, episodes, query_format="in_context", loop=loop,
                              max_new_tokens=3, members=[smoke_model.mapper.state_dict()])
    assert same == plain


def test_the_member_ensemble_picks_the_most_likely_generated_answer(smoke_model: MetaMapper, monkeypatch):
    import metamapper.eval.fewshot as fewshot

    model = smoke_model.eval()
    tasks = build_synthetic_tasks(split="test", ways=2, shots=1, n_tasks=6, seed=7).tasks
    episodes = [episode_from_task(t, _features) for t in tasks]
    member = _perturbed(model, 1)
    # the model's own mapper ({}) answers with the first support caption's word, the member with
    # the second's, so every query has two candidates to choose between
    word = lambda ep, i: normalize_answer(ep.captions[i]).split()[-1]  # noqa: E731
    monkeypatch.setattr(fewshot, "_answer", lambda m, eps, params, fmt, n: [
        [word(ep, 0 if p == {} else 1)] * ep.n_query for ep, p in zip(eps, params, strict=True)])
    chosen, _ = answer_episodes(model, episodes, query_format="in_context", loop=InnerLoop(steps=0),
                                max_new_tokens=3, members=[member])
    picked = {0: 0, 1: 0}
    for ep, answers in zip(episodes, chosen, strict=True):
        cands = [word(ep, 0), word(ep, 1)]
        assert len(set(cands)) == 2
        s = ep.n_support
        for q, answer in enumerate(answers):
            scores = []
            for cand in cands:
                one = Episode(features=torch.cat([ep.features[:s], ep.features[s + q : s + q + 1]]),
                              captions=ep.captions, questions=[ep.questions[q]], answers=[cand])
                eb = batch_rows([one], in_context_rows, with_answer=True)
                batch = model.pack(eb.rows)
                scores.append(sum(
                    float(model.target_logprobs(eb.features, batch, prefixes=task_prefixes(
                        model, eb.features, batch, torch.zeros(len(eb.rows), dtype=torch.long), [p]))[0])
                    for p in ({}, member)))
            best = max(range(2), key=scores.__getitem__)
            assert answer == cands[best]
            picked[best] += 1
    assert picked[0] and picked[1]  # each member's answer wins somewhere


def test_an_ensemble_answers_only_in_context_without_adaptation(smoke_model: MetaMapper, episodes):
    member = [_perturbed(smoke_model, 2)]
    with pytest.raises(ValueError, match="without adaptation steps"):
        answer_episodes(smoke_model, episodes, query_format="in_context", loop=InnerLoop(steps=1),
                        members=member)
    with pytest.raises(ValueError, match="in context"):
        answer_episodes(smoke_model, episodes, query_format="prefix", loop=InnerLoop(steps=0), members=member)


def test_evaluate_records_the_orderings(smoke_model: MetaMapper):
    tasks = build_synthetic_tasks(split="test", ways=2, shots=1, n_tasks=3, seed=3).tasks
    ic = evaluate(smoke_model, tasks, _features, method="in-context", progress=False,
                  max_new_tokens=3, orderings=2)
    assert ic.orderings == 2 and ic.n_queries == 6
    maml = evaluate(smoke_model, tasks, _features, method="maml", steps=1, progress=False,
                    max_new_tokens=3, orderings=2)
    assert maml.orderings == 1  # a query alone after its prefix: the support order plays no part
    assert ic.members == maml.members == 1
    two = evaluate(smoke_model, tasks, _features, method="in-context", progress=False,
                   max_new_tokens=3, members=[_perturbed(smoke_model, 3)])
    assert two.members == 2 and two.orderings == 1 and two.n_queries == 6


def test_orderings_below_one_is_a_config_error():
    from metamapper.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="eval.orderings"):
        config_from_dict({}, ["eval.orderings=0"])
    assert config_from_dict({}, ["eval.orderings=3"]).eval.orderings == 3
