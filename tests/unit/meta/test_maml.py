"""Functional MAML: meta-gradients against finite differences, 0 steps, batched == per task,
prefix-only adaptation, Meta-SGD rates, step weights.

The finite-difference checks run the whole model in float64 on a tiny GPT-2 LM (its LayerNorms
keep float64; the tiny Llama's RMSNorm computes in float32, too coarse for eps = 1e-6).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from metamapper.meta.episode import Episode, caption_rows, in_context_rows, query_rows
from metamapper.meta.maml import (
    InnerLearningRates,
    InnerLoop,
    adapt,
    adapted_names,
    meta_loss,
    task_losses,
)
from metamapper.models.backbones import build_language_model
from metamapper.models.mapper import build_mapper, suggested_output_scale
from metamapper.models.metamapper import MetaMapper

SMOKE = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"
EPS = 1e-6


def episodes(n: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[Episode]:
    """``n`` tasks of different sizes (so the batched path pads rows)."""
    g = torch.Generator().manual_seed(seed)
    words = ["dax", "blicket", "perpo", "shously"]
    out = []
    for t in range(n):
        s, q = 2 + t % 2, 1 + (t + 1) % 2
        out.append(Episode(
            features=torch.randn(s + q, 1, 16, generator=g, dtype=dtype),
            captions=[f"This is a {words[(t + i) % 4]}" + (" in the park" if i == 1 else "") for i in range(s)],
            questions=["This is a"] * q,
            answers=[words[(t + j) % 4] for j in range(q)],
        ))
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(smoke_model: MetaMapper) -> MetaMapper:
    """The smoke config's tiny model (tiny-lm Llama, random mapper), float32, eval mode."""
    return smoke_model.eval()


@pytest.fixture(scope="module")
def model64() -> MetaMapper:
    """A tiny GPT-2 model in float64 with an attention mapper, eval mode (no dropout)."""
    lm = build_language_model("tiny-lm", arch="gpt2", seed=0)
    torch.manual_seed(0)
    mapper = build_mapper("attention", visual_dim=16, embed_dim=lm.embed_dim, prefix_len=2, num_heads=4,
                          output_scale=suggested_output_scale(lm.model.get_input_embeddings().weight))
    return MetaMapper(vision=None, lm=lm, mapper=mapper).eval().double()


@pytest.fixture
def float64() -> Iterator[None]:
    """float64 end to end (inputs created in tests default to float64 too)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def outer_loss(model: MetaMapper, eps: list[Episode], loop: InnerLoop) -> torch.Tensor:
    return meta_loss(model, eps, adapt(model, eps, loop=loop), query_rows)


def meta_grads(model: MetaMapper, eps: list[Episode], loop: InnerLoop) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    outer_loss(model, eps, loop).backward()
    grads = {k: p.grad.detach().clone() for k, p in model.mapper.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def central_difference(model: MetaMapper, eps: list[Episode], loop: InnerLoop, name: str,
                       index: tuple[int, ...]) -> float:
    p = dict(model.mapper.named_parameters())[name]
    orig = p[index].item()
    values = []
    try:
        for delta in (EPS, -EPS):
            with torch.no_grad():
                p[index] = orig + delta
                values.append(outer_loss(model, eps, loop).item())
    finally:
        with torch.no_grad():
            p[index] = orig
    return (values[0] - values[1]) / (2 * EPS)


@pytest.mark.usefixtures("float64")
def test_second_order_matches_finite_differences_and_first_order_does_not(model64: MetaMapper) -> None:
    eps = episodes(2, dtype=torch.float64)
    second = InnerLoop(steps=2, lr=0.5, first_order=False)
    first = InnerLoop(steps=2, lr=0.5, first_order=True)
    # second-order autograd through the LM's attention needs the math SDPA kernel (see the
    # next test); the maths are checked here
    with sdpa_kernel(SDPBackend.MATH):
        g2, g1 = meta_grads(model64, eps, second), meta_grads(model64, eps, first)
        # the entries where the second-order terms matter most (chosen deterministically)
        checks = []
        for name, n in (("visual_proj.weight", 3), ("prefix", 2)):
            diff = (g2[name] - g1[name]).abs().flatten()
            for i in diff.topk(n).indices.tolist():
                checks.append((name, tuple(torch.unravel_index(torch.tensor(i), g2[name].shape))))
        for name, idx in checks:
            idx = tuple(int(i) for i in idx)
            fd = central_difference(model64, eps, second, name, idx)
            so, fo = g2[name][idx].item(), g1[name][idx].item()
            tol = 1e-7 + 1e-4 * abs(fd)
            assert abs(so - fd) < tol, (name, idx, so, fd)
            assert abs(fo - fd) > 20 * tol, (name, idx, fo, fd)  # first order is an approximation


@pytest.mark.usefixtures("float64")
def test_first_order_gradient_is_the_query_gradient_at_the_adapted_parameters(model64: MetaMapper) -> None:
    eps = episodes(2, dtype=torch.float64)
    loop = InnerLoop(steps=2, lr=0.5, first_order=True)
    traj = adapt(model64, eps, loop=loop)
    adapted = [p for task in traj[-1] for p in task.values()]
    names = list(traj[-1][0])
    loss = meta_loss(model64, eps, traj, query_rows)
    at_adapted = torch.autograd.grad(loss, adapted, retain_graph=True)
    model64.zero_grad(set_to_none=True)
    loss.backward()
    params = dict(model64.mapper.named_parameters())
    n = len(names)
    for j, k in enumerate(names):  # the meta-gradient sums the tasks' gradients
        expected = at_adapted[j] + at_adapted[n + j]
        torch.testing.assert_close(params[k].grad, expected, rtol=1e-10, atol=1e-14)
    # and it is not the gradient at the initialisation (adaptation moved the parameters)
    model64.zero_grad(set_to_none=True)
    meta_loss(model64, eps, [[{}, {}]], query_rows).backward()
    assert not torch.allclose(params["prefix"].grad, at_adapted[names.index("prefix")] +
                              at_adapted[n + names.index("prefix")], rtol=1e-3)
    model64.zero_grad(set_to_none=True)


def test_second_order_backward_with_the_default_attention_kernel(model: MetaMapper) -> None:
    """``first_order=False`` is a config option (train.inner.first_order=false): it must run."""
    eps = episodes(1)
    loss = outer_loss(model, eps, InnerLoop(steps=1, lr=0.1, first_order=False))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.mapper.parameters())
    model.zero_grad(set_to_none=True)


def test_zero_steps_is_the_base_model(model: MetaMapper) -> None:
    eps = episodes(3)
    traj = adapt(model, eps, loop=InnerLoop(steps=0))
    assert len(traj) == 1 and len(traj[0]) == 3
    own = model.mapper_params()
    for task in traj[0]:
        assert set(task) == set(own)
        for k, v in task.items():
            assert torch.equal(v, own[k]) and v is not own[k]
    with torch.no_grad():
        losses = task_losses(model, eps, traj[0], query_rows)
        for ep, got in zip(eps, losses, strict=True):
            batch = model.pack(query_rows(ep))
            assert torch.allclose(got, model.loss(ep.features, batch, per_row=True).mean(), atol=1e-6)
        one = eps[1]  # a single query row: the task loss is model.loss itself
        assert one.n_query == 1
        assert torch.allclose(task_losses(model, [one], [{}], query_rows)[0],
                              model.loss(one.features, model.pack(query_rows(one))), atol=1e-6)


def test_adaptation_is_functional_and_lowers_the_support_loss(model: MetaMapper) -> None:
    eps = episodes(2)
    before = {k: v.detach().clone() for k, v in model.mapper_params().items()}
    traj = adapt(model, eps, loop=InnerLoop(steps=3, lr=0.5))
    assert len(traj) == 4
    for k, v in model.mapper_params().items():
        assert torch.equal(v, before[k])  # the module is never changed
    with torch.no_grad():
        first = task_losses(model, eps, traj[0], caption_rows)
        last = task_losses(model, eps, traj[-1], caption_rows)
    assert (last < first).all(), (first, last)


@pytest.mark.parametrize("rows", [caption_rows, query_rows, in_context_rows])
def test_batched_equals_per_task_loop(model: MetaMapper, rows) -> None:
    eps = episodes(3, seed=1)
    loop = InnerLoop(steps=2, lr=0.3)
    a = adapt(model, eps, loop=loop, batched=True)
    b = adapt(model, eps, loop=loop, batched=False)
    assert len(a) == len(b) == 3
    for step_a, step_b in zip(a, b, strict=True):
        for ta, tb in zip(step_a, step_b, strict=True):
            assert ta.keys() == tb.keys()
            for k in ta:
                torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-5)
    # the tasks really adapted differently
    assert not torch.allclose(a[-1][0]["prefix"], a[-1][1]["prefix"])
    with torch.no_grad():
        la = task_losses(model, eps, a[-1], rows, batched=True)
        lb = task_losses(model, eps, a[-1], rows, batched=False)
    assert la.shape == (3,)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)


def test_prefix_adaptation_changes_only_the_prefix(model: MetaMapper) -> None:
    eps = episodes(2)
    loop = InnerLoop(steps=2, lr=0.5, adapt="prefix")
    assert adapted_names(model, loop) == ["prefix"]
    traj = adapt(model, eps, loop=loop)
    for task in traj[-1]:
        assert set(task) == {"prefix"}
        assert not torch.allclose(task["prefix"], model.mapper.prefix)
    with torch.no_grad():  # the missing names come from the module
        full = [{**model.mapper_params(), **t} for t in traj[-1]]
        torch.testing.assert_close(task_losses(model, eps, traj[-1], query_rows),
                                   task_losses(model, eps, full, query_rows))
    # a comma list of prefixes selects whole sub-modules
    two = InnerLoop(adapt="prefix,ff")
    assert set(adapted_names(model, two)) == {"prefix", "ff.0.weight", "ff.0.bias", "ff.3.weight", "ff.3.bias"}


def test_adapt_selecting_no_parameter_is_an_error(model: MetaMapper) -> None:
    with pytest.raises(ValueError, match="selects no mapper parameter"):
        adapt(model, episodes(1), loop=InnerLoop(steps=1, adapt="nothing"))


@pytest.mark.parametrize("per_step", [False, True])
def test_meta_sgd_rates_get_gradients_and_are_used(model: MetaMapper, per_step: bool) -> None:
    eps = episodes(2)
    loop = InnerLoop(steps=2, lr=0.2, meta_sgd=True, per_step_lr=per_step)
    names = adapted_names(model, loop)
    lrs = InnerLearningRates({k: model.mapper_params()[k] for k in names}, init=0.2, steps=2,
                             per_step=per_step)
    assert lrs.get("visual_proj.weight", 1).shape == model.mapper.visual_proj.weight.shape
    traj = adapt(model, eps, loop=loop, lrs=lrs)
    ref = adapt(model, eps, loop=loop)  # init equals the fixed rate: same trajectory
    torch.testing.assert_close(traj[-1][0]["prefix"], ref[-1][0]["prefix"])
    model.zero_grad(set_to_none=True)
    meta_loss(model, eps, traj, query_rows).backward()
    for name, p in lrs.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        for s in range(p.shape[0]):
            assert p.grad[s].abs().sum() > 0, (name, s)
    with torch.no_grad():  # changing a rate changes the adapted parameters
        lrs.lrs["prefix"].mul_(2)
    assert not torch.allclose(adapt(model, eps, loop=loop, lrs=lrs)[-1][0]["prefix"], traj[-1][0]["prefix"])
    model.zero_grad(set_to_none=True)


def test_inner_loop_validation() -> None:
    with pytest.raises(ValueError, match="steps"):
        InnerLoop(steps=-1)
    with pytest.raises(ValueError, match="learning rate"):
        InnerLoop(lr=-0.1)
    loop = InnerLoop(adapt="prefix,out")
    assert loop.selects("prefix") and loop.selects("out.weight")
    assert not loop.selects("prefixes") and not loop.selects("outer.weight")


def test_without_trajectory_only_the_last_step_is_kept(model: MetaMapper) -> None:
    eps = episodes(3)
    loop = InnerLoop(steps=3, lr=0.05)
    full = adapt(model, eps, loop=loop)
    last = adapt(model, eps, loop=loop, trajectory=False)
    assert len(full) == 4 and len(last) == 1
    for a, b in zip(full[-1], last[0], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # the meta-gradient through the last step is the same
    grads = []
    for traj in (full, last):
        model.mapper.zero_grad(set_to_none=True)
        meta_loss(model, eps, traj, query_rows).backward()
        grads.append([p.grad.clone() for p in model.mapper.parameters()])
    model.mapper.zero_grad(set_to_none=True)
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
