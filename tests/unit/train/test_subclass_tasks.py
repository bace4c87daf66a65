"""Sub-class tasks: meta-training tasks between groups of one class split along its main axis."""

from __future__ import annotations

import pytest
import torch

from metamapper.config import ConfigError, config_from_dict
from metamapper.data.tasks import sample_task
from metamapper.train.sources import split_class, with_subclass_tasks


def _class(n: int = 30, seed: int = 0) -> tuple[list[str], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1, 1, n)  # the class varies most along dimension 0
    feats = torch.randn(n, 2, 4, generator=g) * 0.05
    feats[:, 0, 0] += axis[torch.randperm(n, generator=g)]
    keys = [f"k{seed}-{i:02d}" for i in range(n)]
    return keys, dict(zip(keys, feats, strict=True))


def test_split_class_groups_the_ends_of_the_main_axis_with_a_gap():
    keys, feats = _class()
    lo, hi = split_class(keys, torch.stack([feats[k] for k in keys]), 2)
    assert len(lo) == len(hi) == 10 and not set(lo) & set(hi)
    a = sorted(float(feats[k][0, 0]) for k in lo)
    b = sorted(float(feats[k][0, 0]) for k in hi)
    assert a[-1] < b[0] or b[-1] < a[0]  # one group per end, the middle third left out
    assert min(abs(x - y) for x in a for y in b) > 0.3


def test_a_share_of_tasks_become_subclass_tasks_of_one_class():
    ka, fa = _class(seed=0)
    kb, fb = _class(seed=1)
    feats = {**fa, **fb}
    classes = {"A": ka, "B": kb}
    rng = __import__("numpy").random.default_rng(0)
    tasks = [sample_task(classes, ways=2, shots=1, queries_per_class=2, rng=rng, task_id=f"t{i}")
             for i in range(200)]
    def lookup(keys):
        return torch.stack([feats[k] for k in keys])
    out = with_subclass_tasks(tasks, classes, lookup, share=0.5, ways=2, shots=1,
                              queries_per_class=2, seed=0)
    sub = [t for t in out if t.task_id.endswith("-subclass")]
    assert 60 < len(sub) < 140 and len(out) == len(tasks)
    for t in sub:  # every image of a sub-class task comes from one class
        owners = {"A" if k in fa else "B" for k in t.image_keys()}
        assert len(owners) == 1 and t.ways == 2 and len(t.queries) == 4
    again = with_subclass_tasks(tasks, classes, lookup, share=0.5, ways=2, shots=1,
                                queries_per_class=2, seed=0)
    assert [t.task_id for t in again] == [t.task_id for t in out]  # seeded
    assert with_subclass_tasks(tasks, classes, lookup, share=0.0, ways=2, shots=1,
                               queries_per_class=2, seed=0) == tasks


def test_classes_too_small_to_split_are_an_error():
    keys, feats = _class(n=6)
    with pytest.raises(ValueError, match="sub-groups"):
        with_subclass_tasks([], {"A": keys}, lambda ks: torch.stack([feats[k] for k in ks]),
                            share=0.5, ways=2, shots=1, queries_per_class=2, seed=0)


@pytest.mark.parametrize("bad", [["data.subclass_share=1.5"],
                                 ["data.subclass_share=0.3", "data.source=synthetic"]])
def test_bad_subclass_share_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="subclass_share"):
        config_from_dict({}, bad)
