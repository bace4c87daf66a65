"""Loading a trained run: its checkpoint, its config, the backbones it was trained with and its
mapper (what evaluation, prediction, the web page and the Python API start from).

Example::

    run = load_run("runs/demo")          # a run folder, an exported folder or a Hub id
    run.model, run.config, run.method    # the model, its resolved config, "in_context"
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metamapper import hub
from metamapper.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    checkpoint_config,
    read_checkpoint,
)
from metamapper.config import Config, ConfigError, config_from_dict
from metamapper.device import resolve_device, setup_device
from metamapper.meta.maml import InnerLearningRates, adapted_names
from metamapper.models import metamapper as modeling
from metamapper.models.backbones import BackboneError
from metamapper.models.factory import build_model


@dataclass
class LoadedRun:
    """A trained model with the config and checkpoint record it came from."""

    model: modeling.MetaMapper
    config: Config
    meta: dict[str, Any]
    lrs: InnerLearningRates | None = None
    path: Path = field(default_factory=Path)

    @property
    def method(self) -> str:
        """The method the run was trained with (``train.method``): how it answers by default."""
        return self.config.train.method


def run_config(ckpt: Checkpoint, *, backbones: dict[str, Any] | None = None, where: str | None = None) -> Config:
    """The config a checkpoint recorded (``backbones``: keys replacing the recorded ones), read
    without building anything: what a command checks before it loads the backbones.

    Raises:
        CheckpointError: the checkpoint holds no valid config.
    """
    raw = copy.deepcopy(checkpoint_config(ckpt))
    if backbones:
        raw["backbones"] = {**(raw.get("backbones") or {}), **backbones}
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        what = hub.CONFIG_NAME if ckpt.meta.get("format") == hub.PRETRAINED_FORMAT else "meta.json"
        raise CheckpointError(f"checkpoint {where or ckpt.path}: {what} holds no valid config ({e})") from None


def load_run(source: str | os.PathLike[str], *, checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
             with_vision: bool = True, step: str | int | None = None, revision: str | None = None,
             allow_fallback: bool = False, device: str | torch.device | None = None,
             backbones: dict[str, Any] | None = None,
             model_class: type[modeling.MetaMapper] = modeling.MetaMapper) -> LoadedRun:
    """Rebuild the backbones named in a checkpoint and load its mapper.

    Args:
        source: a run folder written by ``metamapper train`` (or a checkpoint folder inside it),
            an exported folder (``save_pretrained``) or a Hub id ``owner/name``
            (``hub.resolve_checkpoint``).
        checkpoint: a specific ``checkpoints/step-*`` folder, or a checkpoint already resolved
            (``hub.resolve_checkpoint``: a command that checked it first does not read it twice);
            default: the one ``step`` picks.
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
        model_class: the model's class (``pretrained.MetaMapper`` for the Python API).

    Raises:
        CheckpointError: missing run, folder, Hub model or step, a corrupt checkpoint, other
            backbones, or weights that do not fit the mapper config.
    """
    if isinstance(checkpoint, Checkpoint):
        ckpt = checkpoint
    elif checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
    else:
        ckpt = hub.resolve_checkpoint(source, step=step, revision=revision, allow_fallback=allow_fallback)
    exported = ckpt.meta.get("format") == hub.PRETRAINED_FORMAT
    from_hub = exported and not Path(source).exists()
    where = f"{source} (revision {ckpt.path.name[:12]})" if from_hub else str(ckpt.path)
    cfg = run_config(ckpt, backbones=backbones, where=where)
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
    model = model_class(vision=base.vision, lm=base.lm, mapper=base.mapper)
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
    return LoadedRun(model=model, config=cfg, meta=ckpt.meta, lrs=lrs, path=ckpt.path)
