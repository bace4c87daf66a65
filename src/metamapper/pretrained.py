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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from metamapper.checkpoint import (
    CheckpointError,
    check_compatible,
    checkpoint_config,
    read_checkpoint,
    select_checkpoint,
)
from metamapper.config import Config, ConfigError, config_from_dict
from metamapper.device import resolve_device, setup_device
from metamapper.eval.fewshot import (
    adaptation_steps,
    answer_with_params,
    eval_method_for,
    get_method,
)
from metamapper.meta.episode import Episode, caption_rows
from metamapper.meta.maml import InnerLearningRates, adapt, adapted_names, task_losses
from metamapper.models import metamapper as modeling
from metamapper.models.factory import build_model


@dataclass
class LoadedRun:
    """A trained model with the config and checkpoint record it came from."""

    model: MetaMapper
    config: Config
    meta: dict[str, Any]
    lrs: InnerLearningRates | None = None
    path: Path = field(default_factory=Path)

    @property
    def method(self) -> str:
        """The evaluation method that matches how the run was trained."""
        return eval_method_for(self.config)


class MetaMapper(modeling.MetaMapper):
    """The model with its few-shot API: ``from_pretrained`` a run, ``adapt`` to a support set.

    Example::

        model = MetaMapper.from_pretrained("runs/demo")
        adapted = model.adapt(support_images, ["This is a dax.", "This is a blicket."])
        adapted.answer([query_image], question="This is a")
    """

    run: LoadedRun | None = None  # set by from_pretrained: config, learned rates, checkpoint

    @classmethod
    def from_pretrained(cls, run_dir: str | os.PathLike[str], *, step: str | int | None = None,
                        with_vision: bool = True, device: str | torch.device | None = None) -> MetaMapper:
        """Load a trained run (its backbones are rebuilt from the checkpoint's config).

        Args:
            run_dir: a run folder written by ``metamapper train``, or a checkpoint folder in it.
            step: ``"latest"`` (default), ``"best"`` (by validation accuracy) or a step number.
            with_vision: also build the image encoder (not needed with cached features).
            device: where to run (default ``auto``: a GPU if there is one).
        """
        return load_run(run_dir, step=step, with_vision=with_vision, device=device).model

    def adapt(self, support_images: Sequence[Image.Image], captions: Sequence[str],
              steps: int | None = None, *, method: str | None = None) -> AdaptedMetaMapper:
        """Adapt to a support set of (image, caption) pairs; ``.answer(images)`` then names
        new images. ``steps`` and ``method`` as in ``adapt_to_support``."""
        if self.run is None:
            raise RuntimeError("adapt() needs a model loaded with MetaMapper.from_pretrained(run_dir)")
        return adapt_to_support(self.run, support_images, captions, steps=steps, method=method)


def load_run(run_dir: str | os.PathLike[str], *, checkpoint: str | None = None,
             with_vision: bool = True, step: str | int | None = None,
             allow_fallback: bool = False, device: str | torch.device | None = None) -> LoadedRun:
    """Rebuild the backbones named in a run's checkpoint and load its mapper.

    Args:
        run_dir: a run folder written by ``metamapper train`` (or a checkpoint folder inside it).
        checkpoint: a specific ``checkpoints/step-*`` folder (default: the one ``step`` picks).
        with_vision: also build the image encoder (not needed with cached features).
        step: which of the run's checkpoints: ``"latest"`` (default), ``"best"`` (validation
            accuracy) or a step number (``checkpoint.select_checkpoint``).
        allow_fallback: a corrupt newest checkpoint falls back to the newest valid one (with a
            warning) instead of raising.
        device: where to run (``auto`` when None, whatever device the run was trained on; the
            weights are read to the CPU and moved there).

    Raises:
        CheckpointError: missing run or step, a corrupt checkpoint, other backbones, or weights
            that do not fit the mapper config.
    """
    ckpt = read_checkpoint(checkpoint) if checkpoint is not None else select_checkpoint(
        run_dir, step, allow_fallback=allow_fallback)
    try:
        cfg = config_from_dict(checkpoint_config(ckpt))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {ckpt.path}: meta.json holds no valid config ({e})") from None
    base = build_model(cfg.backbones, cfg.mapper, visual_dim=ckpt.meta["visual_dim"], with_vision=with_vision,
                       device=setup_device(resolve_device(device)), precision=cfg.runtime.precision)
    model = MetaMapper(vision=base.vision, lm=base.lm, mapper=base.mapper)
    check_compatible(ckpt.meta, vision=model.vision.identity if model.vision is not None else None,
                     lm=model.lm.identity, visual_dim=model.mapper.visual_dim,
                     embed_dim=model.lm.embed_dim, where=str(ckpt.path))
    try:
        model.mapper.load_state_dict({k[7:]: v for k, v in ckpt.weights.items() if k.startswith("mapper.")})
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit its mapper config: {e}") from None
    lrs = None
    lr_w = {k[10:]: v for k, v in ckpt.weights.items() if k.startswith("inner_lrs.")}
    if lr_w:
        names = adapted_names(model, cfg.train.inner)
        lrs = InnerLearningRates({k: model.mapper_params()[k] for k in names}, init=0.0,
                                 steps=cfg.train.inner.steps, per_step=cfg.train.inner.per_step_lr)
        lrs.load_state_dict(lr_w)
    model.eval()
    model.run = LoadedRun(model=model, config=cfg, meta=ckpt.meta, lrs=lrs, path=ckpt.path)
    return model.run


@dataclass
class AdaptedMetaMapper:
    """A model adapted to one support set; ``answer`` names new images of its concepts."""

    model: modeling.MetaMapper
    params: dict[str, torch.Tensor]
    support: torch.Tensor  # (S, n_tokens, dim) support features
    captions: list[str]
    query_format: str
    support_losses: list[float] = field(default_factory=list)

    def answer(self, images: Sequence[Image.Image], question: str | None = None,
               *, max_new_tokens: int = 8) -> list[str]:
        """Answer each image (optionally after ``question``, e.g. ``"This is a"``)."""
        feats = self.model.encode_images(list(images))
        ep = Episode(features=torch.cat([self.support, feats]), captions=self.captions,
                     questions=[question or ""] * len(images), answers=[""] * len(images))
        return answer_with_params(self.model, [ep], [self.params], query_format=self.query_format,
                                  max_new_tokens=max_new_tokens)[0]


def adapt_to_support(
    run: LoadedRun, images: Sequence[Image.Image], captions: Sequence[str], *,
    steps: int | None = None, method: str | None = None,
) -> AdaptedMetaMapper:
    """Adapt a loaded run's model to a support set of (image, caption) pairs.

    Args:
        run: from ``load_run``.
        images, captions: the support set, one caption per image.
        steps: adaptation steps (default: ``eval.fewshot.adaptation_steps``' rule).
        method: an evaluation method (default: the one the run was trained for).
    """
    if len(images) != len(captions) or not images:
        raise ValueError(f"need as many captions as support images (got {len(images)} images, "
                         f"{len(captions)} captions), at least one")
    if any(not c.strip() for c in captions):
        raise ValueError("support captions must not be empty")
    m = get_method(method or run.method)
    inner = run.config.train.inner
    loop = replace(inner, steps=adaptation_steps(m.name, steps, inner.steps))
    feats = run.model.encode_images(list(images))
    ep = Episode(features=feats, captions=list(captions), questions=[], answers=[])
    params: dict[str, torch.Tensor] = {}
    losses: list[float] = []
    if loop.steps > 0:
        traj = adapt(run.model, [ep], loop=loop, lrs=run.lrs)
        with torch.no_grad():
            losses = [float(task_losses(run.model, [ep], s, caption_rows)[0]) for s in traj]
        params = {k: v.detach() for k, v in traj[-1][0].items()}
    return AdaptedMetaMapper(model=run.model, params=params, support=feats, captions=list(captions),
                             query_format=m.query_format, support_losses=losses)
