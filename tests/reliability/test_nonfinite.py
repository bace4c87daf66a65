"""Non-finite losses and gradients in the inner or outer loop: the update is skipped and
counted, the run stops after ``train.max_bad_updates`` in a row, and no NaN weight is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from reliability_helpers import smoke_config

from metamapper.checkpoint import CKPT_DIR, list_checkpoints, read_checkpoint
from metamapper.meta.episode import Episode
from metamapper.methods import train
from metamapper.train import episodic
from metamapper.train.common import TrainingDiverged

# maml with one inner step: the support features go through the inner loop only
MAML = ["train.method=maml", "train.inner.steps=1", "train.meta_batch=2", "train.updates=6",
        "train.checkpoint_every=1", "train.keep_last=0", "train.val_every=0"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights_at(run: Path, step: int) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / CKPT_DIR / f"step-{step:07d}").weights


def poison_support(monkeypatch: pytest.MonkeyPatch, meta_batch: int, bad_updates: set[int]) -> list:
    """NaN support features for the first task of each update in ``bad_updates`` (1-based); the
    query features stay finite, so the NaN reaches the query loss only through the inner loop.
    Returns a list that gets, per update, whether the inner loop produced non-finite parameters."""
    calls = {"n": 0}
    make = episodic.episode_for

    def episode(method, model, task, table) -> Episode:
        ep = make(method, model, task, table)
        update = calls["n"] // meta_batch + 1
        first = calls["n"] % meta_batch == 0
        calls["n"] += 1
        if update in bad_updates and first:
            feats = ep.features.clone()
            feats[: len(ep.captions)] = float("nan")  # (S + Q, tokens, dim): support rows only
            ep = Episode(features=feats, captions=ep.captions, questions=ep.questions,
                         answers=ep.answers)
        return ep

    adapted_finite: list[bool] = []
    adapt = episodic.adapt

    def spy(*args, **kwargs):
        traj = adapt(*args, **kwargs)
        adapted_finite.append(all(torch.isfinite(v).all() for p in traj[-1] for v in p.values()))
        return traj

    monkeypatch.setattr(episodic, "episode_for", episode)
    monkeypatch.setattr(episodic, "adapt", spy)
    return adapted_finite


def test_nan_in_the_inner_loop_skips_the_update(mm_env, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    adapted_finite = poison_support(monkeypatch, 2, {3})
    train(smoke_config(mm_env, *MAML), run, progress=False)
    assert adapted_finite == [True, True, False, True, True, True]  # NaN went through the inner loop
    recs = metrics(run)
    assert [r["skipped"] for r in recs] == [0, 0, 1, 1, 1, 1]  # counted in the log
    assert math.isnan(recs[2]["loss"]) and all(math.isfinite(r["loss"]) for i, r in
                                                enumerate(recs) if i != 2)
    w2, w3, w4 = (weights_at(run, s) for s in (2, 3, 4))
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # the skipped update changed nothing
    assert any(not torch.equal(w3[k], w4[k]) for k in w3)  # and training went on
    for path in list_checkpoints(run):
        assert all(torch.isfinite(v).all() for v in read_checkpoint(path).weights.values())


def test_non_finite_gradient_with_a_finite_loss_skips_the_update(mm_env, tmp_path, monkeypatch):
    run = tmp_path / "run"
    clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def inf_grad_at_update_2(params, max_norm, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            params[0].grad.view(-1)[0] = float("inf")
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", inf_grad_at_update_2)
    train(smoke_config(mm_env, *MAML, "train.updates=3"), run, progress=False)
    recs = metrics(run)
    assert [r["skipped"] for r in recs] == [0, 1, 1]
    assert math.isfinite(recs[1]["loss"]) and not math.isfinite(recs[1]["grad_norm"])
    w1, w2 = weights_at(run, 1), weights_at(run, 2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_too_many_bad_updates_in_a_row_stop_the_run_with_the_last_good_checkpoint(
        mm_env, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    poison_support(monkeypatch, 2, {3, 4, 5, 6})
    cfg = smoke_config(mm_env, *MAML, "train.max_bad_updates=3", "train.keep_last=3")
    with pytest.raises(TrainingDiverged) as e:
        train(cfg, run, progress=False)
    msg = str(e.value)
    assert "3 non-finite losses/gradients in a row at update 5" in msg
    assert "train.max_bad_updates" in msg and "step-0000004" in msg and "\n" not in msg
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002", "step-0000003",
                                                       "step-0000004"]
    w2, w4 = weights_at(run, 2), weights_at(run, 4)
    assert all(torch.isfinite(v).all() and torch.equal(v, w2[k]) for k, v in w4.items())
    assert [r["skipped"] for r in metrics(run)] == [0, 0, 1, 2, 3]
