"""Functional MAML over the mapper's parameters (``torch.func.functional_call``).

Adaptation is a pure function: a dict of parameters in, a list of adapted dicts out; the mapper
module and the frozen backbones are never copied or modified. Vocabulary follows learn2learn:
``steps``, ``lr``, ``first_order``.

Many tasks are adapted together: every task gets its own copy of the parameters (a differentiable
``clone`` of the initialisation), all tasks' rows go through the LM in ONE batched forward, and
one ``torch.autograd.grad`` of the summed task losses returns every task's own gradient (tasks do
not interact). ``batched=False`` runs the same maths task by task (the reference in tests).

Example::

    loop = InnerLoop(steps=5, lr=0.01, first_order=True)
    traj = adapt(model, episodes, loop=loop)              # traj[s][t]: params after s steps
    q = task_losses(model, episodes, traj[-1], query_rows)  # (n_tasks,)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from metamapper.config import InnerLoop
from metamapper.meta.episode import Episode, batch_rows, caption_rows
from metamapper.models.metamapper import Item, MetaMapper, PackedBatch

Params = dict[str, torch.Tensor]
RowFormat = Callable[..., list[list[Item]]]
PrefixFn = Callable[..., torch.Tensor]  # task_prefixes' signature (a method's prefixes hook)


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


class InnerLearningRates(nn.Module):
    """Meta-SGD's learned inner learning rates: one tensor shaped like each adapted parameter
    (with a leading step axis when ``per_step``), trained by the outer optimizer."""

    def __init__(self, params: Mapping[str, torch.Tensor], *, init: float, steps: int,
                 per_step: bool) -> None:
        super().__init__()
        n = max(steps, 1) if per_step else 1
        self.per_step = per_step
        self.lrs = nn.ParameterDict(
            {_key(k): nn.Parameter(torch.full((n, *v.shape), float(init), device=v.device, dtype=v.dtype))
             for k, v in params.items()}
        )

    def get(self, name: str, step: int) -> torch.Tensor:
        lr = self.lrs[_key(name)]
        return lr[step if self.per_step else 0]


def adapted_names(model: MetaMapper, loop: InnerLoop) -> list[str]:
    """Names of the mapper parameters that the inner loop changes."""
    names = [k for k in model.mapper_params() if loop.selects(k)]
    if not names:
        raise ValueError(f"inner loop adapt={loop.adapt!r} selects no mapper parameter")
    return names


def task_prefixes(
    model: MetaMapper,
    features: torch.Tensor,
    batch: PackedBatch,
    row_task: Sequence[int] | torch.Tensor,
    params: Sequence[Mapping[str, torch.Tensor]],
) -> torch.Tensor:
    """Prefix vectors of every image slot of ``batch``, each with its own task's parameters.

    ``row_task[r]`` is the task of row ``r`` (non-decreasing: rows are in task order).
    Returns ``(S, l, D)`` in slot order. Slots are in row order and rows in task order, so the
    slots of task ``t`` are one contiguous run and the per-task results concatenate in slot order.
    """
    row_task = row_task.tolist() if isinstance(row_task, torch.Tensor) else list(row_task)
    slot_task = [row_task[r] for r in batch.slot_rows]  # task of each image slot (host: no sync)
    if slot_task != sorted(slot_task):
        raise ValueError("rows must be grouped by task in task order")
    counts = [0] * len(params)
    for t in slot_task:
        counts[t] += 1
    feats = features[batch.image_index]  # (S, n_tokens, dim) in slot order
    return torch.cat([model.prefixes(f, p) for f, p in zip(feats.split(counts), params, strict=True)])


def task_losses(
    model: MetaMapper,
    episodes: Sequence[Episode],
    params: Sequence[Mapping[str, torch.Tensor]],
    make_rows: RowFormat,
    *,
    batched: bool = True,
    prefixes_of: PrefixFn | None = None,
) -> torch.Tensor:
    """Each episode's loss ``(n_tasks,)`` on ``make_rows`` rows with its own mapper parameters.

    The loss of a task is the mean over its rows of the mean target-token cross-entropy.
    ``prefixes_of``: how the image slots become prefixes (default ``task_prefixes``; a method's
    ``prefixes`` hook).
    """
    if not batched:
        return torch.cat([
            task_losses(model, [ep], [p], make_rows, batched=True, prefixes_of=prefixes_of)
            for ep, p in zip(episodes, params, strict=True)
        ])
    eb = batch_rows(episodes, make_rows)
    batch = model.pack(eb.rows)
    prefixes = (prefixes_of or task_prefixes)(model, eb.features, batch, eb.row_task, params)  # (S, l, D)
    per_row = model.loss(eb.features, batch, prefixes=prefixes, per_row=True)  # (rows,)
    row_task = torch.tensor(eb.row_task, device=per_row.device)
    counts = [max(1, eb.row_task.count(t)) for t in range(len(episodes))]
    sums = per_row.new_zeros(len(episodes)).index_add(0, row_task, per_row)
    return sums / torch.tensor(counts, device=per_row.device, dtype=per_row.dtype)


def adapt(
    model: MetaMapper,
    episodes: Sequence[Episode],
    *,
    loop: InnerLoop,
    params: Mapping[str, torch.Tensor] | None = None,
    lrs: InnerLearningRates | None = None,
    support_rows: RowFormat = caption_rows,
    batched: bool = True,
    trajectory: bool = True,
) -> list[list[Params]]:
    """Adapt the mapper to each episode's support set with ``loop.steps`` SGD steps.

    Args:
        model: the model (only its mapper is adapted, functionally).
        episodes: the tasks.
        loop: the inner-loop settings.
        params: the initialisation (default: the mapper's own parameters).
        lrs: learned inner learning rates (Meta-SGD); default the fixed ``loop.lr``.
        support_rows: the support loss's row format (the paper's: captioning).
        batched: all tasks in one LM forward per step (else task by task; same result).
        trajectory: keep every step's parameters. False keeps only the last step's, ``traj ==
            [last]``: each step holds a copy of the mapper per task (16 MB each at paper size,
            32 tasks x 6 steps = 3 GB at evaluation), which only a reader of every step needs
            (``pretrained.adapt_to_support``'s support loss after each step).

    Returns:
        ``traj`` with ``traj[s][t]`` = task t's parameters after s steps (``s = 0..steps``);
        only adapted parameters are in the dicts (the others come from the module).
    """
    base = dict(params) if params is not None else model.mapper_params()
    names = adapted_names(model, loop)
    create_graph = not loop.first_order and torch.is_grad_enabled()
    with torch.enable_grad():  # adaptation needs gradients even inside evaluation's no_grad
        # a distinct (differentiable) copy per task, so autograd.grad returns per-task gradients
        current = [{k: _task_copy(base[k]) for k in names} for _ in episodes]
        traj = [current] if trajectory else []
        for step in range(loop.steps):
            with _double_backward_safe(create_graph):
                losses = task_losses(model, episodes, current, support_rows, batched=batched)
            flat = [p for d in current for p in d.values()]
            grads = iter(torch.autograd.grad(losses.sum(), flat, create_graph=create_graph))
            new = []
            for d in current:
                nd = {}
                for k, p in d.items():
                    g = next(grads)  # first-order: g carries no graph (no second-order terms)
                    lr = lrs.get(k, step) if lrs is not None else loop.lr
                    nd[k] = p - lr * g
                new.append(nd)
            current = new
            if trajectory:
                traj.append(current)
    return traj if trajectory else [current]


def _double_backward_safe(create_graph: bool) -> contextlib.AbstractContextManager[None]:
    """Second-order MAML differentiates the support forward twice; fused CPU/GPU attention
    kernels have no double backward, so that forward uses the plain-math SDPA kernel."""
    if not create_graph:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _task_copy(p: torch.Tensor) -> torch.Tensor:
    return p.clone() if p.requires_grad else p.detach().clone().requires_grad_()


def meta_loss(
    model: MetaMapper,
    episodes: Sequence[Episode],
    traj: Sequence[Sequence[Mapping[str, torch.Tensor]]],
    query_format: RowFormat,
    *,
    batched: bool = True,
    prefixes_of: PrefixFn | None = None,
) -> torch.Tensor:
    """The outer (query) loss: the mean over tasks of each task's query loss with its parameters
    after the last inner step (``traj[-1]``; ``adapt(..., trajectory=False)`` keeps only those).

    (The authors' code used the mean over steps 2..5 instead, undocumented; docs/EXPERIMENTS.md.)
    """
    return task_losses(model, episodes, traj[-1], query_format, batched=batched, prefixes_of=prefixes_of).mean()
