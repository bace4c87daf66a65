"""Loading a trained run for inference, and the few-shot Python API.

Example::

    from metamapper import MetaMapper
    model = MetaMapper.from_pretrained("runs/demo")     # or an exported folder, or "owner/name"
    adapted = model.adapt([img_a, img_b], ["This is a dax.", "This is a blicket."])
    adapted.answer([query_img], question="This is a")   # ['blicket']
    model.save_pretrained("export/demo")                # config.json, model.safetensors, README.md
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from metamapper import hub
from metamapper.checkpoint import (
    CheckpointError,
    check_compatible,
    checkpoint_config,
    read_checkpoint,
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
from metamapper.models.backbones import BackboneError
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
    def from_pretrained(cls, source: str | os.PathLike[str], revision: str | None = None, *,
                        step: str | int | None = None, with_vision: bool = True,
                        device: str | torch.device | None = None,
                        backbones: dict[str, Any] | None = None) -> MetaMapper:
        """Load a trained mapper and rebuild the frozen backbones it was trained with.

        Args:
            source: a run folder written by ``metamapper train`` (or a checkpoint folder in it),
                a folder written by ``save_pretrained``, or a Hub id ``owner/name`` (fetched with
                ``huggingface_hub``; ``HF_HUB_OFFLINE=1`` reads the local cache only).
            revision: with a Hub id, a branch, tag or commit (default ``main``).
            step: with a run folder, ``"latest"`` (default), ``"best"`` (by validation
                accuracy) or a step number.
            with_vision: also build the image encoder (not needed with cached features).
            device: where to run (default ``auto``: a GPU if there is one).
            backbones: ``backbones`` config keys to use instead of the recorded ones (e.g.
                ``{"lm_path": "/models/gpt2"}``: a local copy of a Hub model); the backbones
                built must still be the ones the mapper was trained with.

        Raises:
            CheckpointError: no such run, folder or Hub model; invalid files; other backbones.
        """
        return load_run(source, step=step, revision=revision, with_vision=with_vision, device=device,
                        backbones=backbones).model

    def save_pretrained(self, out_dir: str | os.PathLike[str], *, repo_id: str | None = None) -> Path:
        """Write the mapper as a Hub-style folder: ``config.json`` (the backbones' identities and
        the run's config), ``model.safetensors`` (the mapper only, never the backbones) and a
        model card ``README.md`` (with the run's results of these weights, if it recorded any).

        Args:
            out_dir: the folder (an earlier export there is replaced; anything else refused).
            repo_id: the Hub id the card's usage snippet names (default ``OWNER/NAME``).

        Returns:
            ``out_dir``; ``MetaMapper.from_pretrained(out_dir)`` loads it back.
        """
        run = self._loaded("save_pretrained()")
        weights = {f"mapper.{k}": v for k, v in self.mapper.state_dict().items()}
        if run.lrs is not None:
            weights.update({f"inner_lrs.{k}": v for k, v in run.lrs.state_dict().items()})
        meta = dict(run.meta, lm_identity=self.lm.identity, visual_dim=self.mapper.visual_dim,
                    embed_dim=self.lm.embed_dim, prefix_len=self.prefix_len, config=run.config.to_dict())
        if self.vision is not None:
            meta["vision_identity"] = self.vision.identity
        return hub.write_pretrained(weights, meta, out_dir, results=hub.results_for(run.path, run.meta),
                                    repo_id=repo_id)

    def push_to_hub(self, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                    token: str | None = None, commit_message: str | None = None) -> str:
        """``save_pretrained`` into a temporary folder and upload it to the Hub model ``repo_id``
        (created if missing) with ``huggingface_hub``; ``revision``: a branch (created if missing).
        Returns the commit's URL.

        Raises:
            metamapper.hub.HubError: offline, no token, no permission (one line, the library's reason).
        """
        with tempfile.TemporaryDirectory(prefix="metamapper-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "export", repo_id=repo_id)
            return hub.push_folder(folder, repo_id, revision=revision, private=private, token=token,
                                   commit_message=commit_message)

    def _loaded(self, what: str) -> LoadedRun:
        if self.run is None:
            raise RuntimeError(f"{what} needs a model loaded with MetaMapper.from_pretrained(...)")
        return self.run

    def adapt(self, support_images: Sequence[Image.Image], captions: Sequence[str],
              steps: int | None = None, *, method: str | None = None) -> AdaptedMetaMapper:
        """Adapt to a support set of (image, caption) pairs; ``.answer(images)`` then names
        new images. ``steps`` and ``method`` as in ``adapt_to_support``."""
        return adapt_to_support(self._loaded("adapt()"), support_images, captions, steps=steps, method=method)


def load_run(source: str | os.PathLike[str], *, checkpoint: str | None = None,
             with_vision: bool = True, step: str | int | None = None, revision: str | None = None,
             allow_fallback: bool = False, device: str | torch.device | None = None,
             backbones: dict[str, Any] | None = None) -> LoadedRun:
    """Rebuild the backbones named in a checkpoint and load its mapper.

    Args:
        source: a run folder written by ``metamapper train`` (or a checkpoint folder inside it),
            an exported folder (``save_pretrained``) or a Hub id ``owner/name``
            (``hub.resolve_checkpoint``).
        checkpoint: a specific ``checkpoints/step-*`` folder (default: the one ``step`` picks).
        with_vision: also build the image encoder (not needed with cached features).
        step: which of a run's checkpoints: ``"latest"`` (default), ``"best"`` (validation
            accuracy) or a step number (``checkpoint.select_checkpoint``).
        revision: with a Hub id, a branch, tag or commit.
        allow_fallback: a corrupt newest checkpoint falls back to the newest valid one (with a
            warning) instead of raising.
        device: where to run (``auto`` when None, whatever device the run was trained on; the
            weights are read to the CPU and moved there).
        backbones: ``backbones`` config keys replacing the recorded ones (say, a local folder
            for a Hub model); the identities built must still match the recorded ones.

    Raises:
        CheckpointError: missing run, folder, Hub model or step, a corrupt checkpoint, other
            backbones, or weights that do not fit the mapper config.
    """
    ckpt = read_checkpoint(checkpoint) if checkpoint is not None else hub.resolve_checkpoint(
        source, step=step, revision=revision, allow_fallback=allow_fallback)
    exported = ckpt.meta.get("format") == hub.PRETRAINED_FORMAT
    from_hub = exported and checkpoint is None and not Path(source).exists()
    where = f"{source} (revision {ckpt.path.name[:12]})" if from_hub else str(ckpt.path)
    raw = copy.deepcopy(checkpoint_config(ckpt))
    if backbones:
        raw["backbones"] = {**(raw.get("backbones") or {}), **backbones}
    try:
        cfg = config_from_dict(raw)
    except ConfigError as e:
        what = hub.CONFIG_NAME if exported else "meta.json"
        raise CheckpointError(f"checkpoint {where}: {what} holds no valid config ({e})") from None
    where_to = setup_device(resolve_device(device))
    try:
        base = build_model(cfg.backbones, cfg.mapper, visual_dim=ckpt.meta["visual_dim"], with_vision=with_vision,
                           # the LM in the dtype the run trains with here (bfloat16 where native)
                           device=where_to, precision=cfg.runtime.precision)
    except BackboneError as e:
        if not exported:
            raise
        raise CheckpointError(f"{where}: cannot build the backbones it was trained with ({e}); pass "
                              "backbones={...} (e.g. a local folder of the same model)") from None
    model = MetaMapper(vision=base.vision, lm=base.lm, mapper=base.mapper)
    check_compatible(ckpt.meta, vision=model.vision.identity if model.vision is not None else None,
                     lm=model.lm.identity, visual_dim=model.mapper.visual_dim,
                     embed_dim=model.lm.embed_dim, where=where)
    try:
        model.mapper.load_state_dict({k[7:]: v for k, v in ckpt.weights.items() if k.startswith("mapper.")})
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {where} does not fit its mapper config: {e}") from None
    lrs = None
    lr_w = {k[10:]: v for k, v in ckpt.weights.items() if k.startswith("inner_lrs.")}
    if lr_w:
        names = adapted_names(model, cfg.train.inner)
        lrs = InnerLearningRates({k: model.mapper_params()[k] for k in names}, init=0.0,
                                 steps=cfg.train.inner.steps, per_step=cfg.train.inner.per_step_lr)
        try:
            lrs.load_state_dict(lr_w)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {where}: its learned inner rates do not fit its "
                                  f"config: {e}") from None
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
