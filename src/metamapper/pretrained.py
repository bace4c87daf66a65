"""Loading a trained run for inference, and the few-shot Python API.

Example::

    from metamapper import MetaMapper
    model = MetaMapper.from_pretrained("runs/demo")
    adapted = model.adapt([img_a, img_b], ["This is a dax.", "This is a blicket."])
    adapted.answer([query_img], question="This is a")   # ['blicket']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from metamapper.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    latest_checkpoint,
    read_checkpoint,
)
from metamapper.config import Config, config_from_dict
from metamapper.meta.episode import Episode
from metamapper.meta.maml import InnerLearningRates, InnerLoop, adapt
from metamapper.models.metamapper import MetaMapper


@dataclass
class LoadedRun:
    """A trained model with the config and checkpoint record it came from."""

    model: MetaMapper
    config: Config
    meta: dict[str, Any]
    lrs: InnerLearningRates | None = None
    path: Path = field(default_factory=Path)
    members: list[dict[str, torch.Tensor]] = field(default_factory=list)  # see load_members

    @property
    def method(self) -> str:
        from metamapper.train.common import eval_method_for

        return eval_method_for(self.config)


def _read(run_dir: str | os.PathLike[str], checkpoint: str | None = None) -> Checkpoint:
    """A run's newest valid checkpoint, ``checkpoint`` if given, or the checkpoint folder itself."""
    path = Path(run_dir)
    if (path / "meta.json").is_file() and checkpoint is None:  # a checkpoint folder itself
        return read_checkpoint(path)
    if checkpoint is not None:
        return read_checkpoint(checkpoint)
    return latest_checkpoint(path)


def _load_mapper(ckpt: Checkpoint, model: MetaMapper, mapper: torch.nn.Module) -> None:
    """Load ``ckpt``'s mapper weights into ``mapper`` (``model``'s or a copy of it), refusing a
    checkpoint of other backbones or one that does not fit the mapper."""
    check_compatible(ckpt.meta, vision=model.vision.identity if model.vision is not None else None,
                     lm=model.lm.identity, visual_dim=model.mapper.visual_dim,
                     embed_dim=model.lm.embed_dim, where=str(ckpt.path))
    try:
        mapper.load_state_dict({k[7:]: v for k, v in ckpt.weights.items() if k.startswith("mapper.")})
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit its mapper config: {e}") from None


def load_members(run: LoadedRun, run_dirs: Sequence[str | os.PathLike[str]]) -> list[dict[str, torch.Tensor]]:
    """The mapper weights of further runs, to answer beside ``run``'s own as an ensemble.

    Each run (or checkpoint folder) must have the same backbones and the same mapper config as
    ``run`` (e.g. the same config trained with other ``train.seed`` s); ``load_run(...,
    ensemble=)`` puts the result in ``run.members``; ``eval.fewshot.evaluate`` takes it as ``members``.

    Raises:
        CheckpointError: a missing run, other backbones, or another mapper config (names the path).
    """
    import copy

    out = []
    for d in run_dirs:
        ckpt = _read(d)
        other = config_from_dict(ckpt.meta["config"]).mapper
        if other != run.config.mapper:
            raise CheckpointError(f"checkpoint {ckpt.path} has another mapper config than {run.path} "
                                  f"({other} != {run.config.mapper}); an ensemble needs the same mapper")
        member = copy.deepcopy(run.model.mapper)
        _load_mapper(ckpt, run.model, member)
        out.append(member.state_dict())
    return out


def load_run(run_dir: str | os.PathLike[str], *, checkpoint: str | None = None,
             with_vision: bool = True, ensemble: Sequence[str | os.PathLike[str]] = (),
             device: str | torch.device | None = None) -> LoadedRun:
    """Rebuild the backbones named in a run's checkpoint and load its mapper.

    Args:
        run_dir: a run folder written by ``metamapper train`` (or a checkpoint folder inside it).
        checkpoint: a specific ``checkpoints/step-*`` folder (default: the newest valid one).
        with_vision: also build the image encoder (not needed with cached features).
        ensemble: further runs of the same mapper config whose mappers answer beside this one
            (``load_members``; in context, without adaptation steps).
        device: where to run (``auto`` when None, whatever device the run was trained on; the
            weights are read to the CPU and moved there).

    Raises:
        CheckpointError: missing run, no valid checkpoint, other backbones, or (``ensemble``)
            another mapper config.
    """
    from metamapper.device import resolve_device, setup_device
    from metamapper.models.factory import build_model

    ckpt = _read(run_dir, checkpoint)
    cfg = config_from_dict(ckpt.meta["config"])
    model = build_model(cfg.backbones, cfg.mapper, visual_dim=ckpt.meta["visual_dim"],
                        with_vision=with_vision, device=setup_device(resolve_device(device)),
                        precision=cfg.runtime.precision)
    _load_mapper(ckpt, model, model.mapper)
    lrs = None
    lr_w = {k[10:]: v for k, v in ckpt.weights.items() if k.startswith("inner_lrs.")}
    if lr_w:
        from metamapper.meta.maml import adapted_names

        names = adapted_names(model, cfg.train.inner)
        lrs = InnerLearningRates({k: model.mapper_params()[k] for k in names}, init=0.0,
                                 steps=cfg.train.inner.steps, per_step=cfg.train.inner.per_step_lr)
        lrs.load_state_dict(lr_w)
    model.eval()
    run = LoadedRun(model=model, config=cfg, meta=ckpt.meta, lrs=lrs, path=ckpt.path)
    run.members = load_members(run, ensemble)
    return run


@dataclass
class AdaptedMetaMapper:
    """A model adapted to one support set; ``answer`` names new images of its concepts."""

    model: MetaMapper
    params: dict[str, torch.Tensor]
    support: torch.Tensor  # (S, n_tokens, dim) support features
    captions: list[str]
    query_format: str
    support_losses: list[float] = field(default_factory=list)
    orderings: int = 1  # in context: support orders each answer is chosen over (see eval.fewshot)
    members: list[dict[str, torch.Tensor]] = field(default_factory=list)  # further runs' mappers

    def answer(self, images: Sequence[Image.Image], question: str | None = None,
               *, max_new_tokens: int = 8) -> list[str]:
        """Answer each image (optionally after ``question``, e.g. ``"This is a"``)."""
        from metamapper.eval.fewshot import answer_with_params

        feats = self.model.encode_images(list(images))
        ep = Episode(features=torch.cat([self.support, feats]), captions=self.captions,
                     questions=[question or ""] * len(images), answers=[""] * len(images))
        return answer_with_params(self.model, [ep], [self.params], query_format=self.query_format,
                                  max_new_tokens=max_new_tokens, orderings=self.orderings,
                                  members=self.members)[0]


def adapt_to_support(
    run: LoadedRun, images: Sequence[Image.Image], captions: Sequence[str], *,
    steps: int | None = None, method: str | None = None,
) -> AdaptedMetaMapper:
    """Adapt a loaded run's model to a support set of (image, caption) pairs."""
    from metamapper.eval.fewshot import get_method

    if len(images) != len(captions) or not images:
        raise ValueError(f"need as many captions as support images (got {len(images)} images, "
                         f"{len(captions)} captions), at least one")
    if any(not c.strip() for c in captions):
        raise ValueError("support captions must not be empty")
    m = get_method(method or run.method)
    if steps is not None:
        n_steps = steps
    elif m.default_steps is not None:
        n_steps = m.default_steps
    else:
        n_steps = run.config.train.inner.steps or 5
    inner = run.config.train.inner
    loop = InnerLoop(steps=n_steps, lr=inner.lr, adapt=inner.adapt, meta_sgd=inner.meta_sgd,
                     per_step_lr=inner.per_step_lr)
    if run.members and (n_steps > 0 or m.query_format != "in_context"):
        raise ValueError("an ensemble of runs answers with the support in context and no adaptation "
                         "steps (method in-context, steps 0)")
    feats = run.model.encode_images(list(images))
    ep = Episode(features=feats, captions=list(captions), questions=[], answers=[])
    params: dict[str, torch.Tensor] = {}
    losses: list[float] = []
    if n_steps > 0:
        from metamapper.meta.episode import caption_rows
        from metamapper.meta.maml import task_losses

        traj = adapt(run.model, [ep], loop=loop, lrs=run.lrs)
        with torch.no_grad():
            losses = [float(task_losses(run.model, [ep], s, caption_rows)[0]) for s in traj]
        params = {k: v.detach() for k, v in traj[-1][0].items()}
    return AdaptedMetaMapper(model=run.model, params=params, support=feats, captions=list(captions),
                             query_format=m.query_format, support_losses=losses,
                             orderings=run.config.eval.orderings, members=run.members)
