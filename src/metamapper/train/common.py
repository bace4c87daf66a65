"""Plain functions shared by the training recipes (no inheritance between recipes)."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metamapper.checkpoint import (
    check_compatible,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
)
from metamapper.config import (
    RESUMABLE_CHANGES,
    Config,
    ConfigError,
    config_changes,
    config_from_dict,
    dump_config,
)
from metamapper.models.metamapper import MetaMapper


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(params: list[nn.Parameter], cfg: Config) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with optional linear warm-up and cosine decay (a LambdaLR schedule)."""
    t = cfg.train
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def factor(step: int) -> float:
        if t.warmup and step < t.warmup:
            return (step + 1) / t.warmup
        if t.cosine:
            span = max(1, t.updates - t.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - t.warmup) / span)))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def checkpoint_meta(model: MetaMapper, cfg: Config) -> dict[str, Any]:
    """What a checkpoint records besides its weights (enough to rebuild and to refuse misuse)."""
    return {
        "format": "metamapper-checkpoint-1",
        "method": cfg.train.method,
        "vision_identity": model.vision.identity if model.vision is not None else None,
        "lm_identity": model.lm.identity,
        "visual_dim": model.mapper.visual_dim,
        "embed_dim": model.lm.embed_dim,
        "prefix_len": model.prefix_len,
        "mapper": cfg.mapper.kind,
        "config": cfg.to_dict(),
    }


def trainable_state(model: MetaMapper, lrs: nn.Module | None) -> dict[str, torch.Tensor]:
    """The weights a checkpoint stores: the mapper's, plus Meta-SGD's learned rates."""
    state = {f"mapper.{k}": v for k, v in model.mapper.state_dict().items()}
    if lrs is not None:
        state.update({f"inner_lrs.{k}": v for k, v in lrs.state_dict().items()})
    return state


def load_trainable_state(model: MetaMapper, lrs: nn.Module | None, weights: dict[str, torch.Tensor]) -> None:
    model.mapper.load_state_dict({k[7:]: v for k, v in weights.items() if k.startswith("mapper.")})
    if lrs is not None:
        lrs.load_state_dict({k[10:]: v for k, v in weights.items() if k.startswith("inner_lrs.")})


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws there
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a GPU run resumed on a GPU
        torch.cuda.set_rng_state(state["cuda"].cpu())


def save(run_dir: Path, step: int, model: MetaMapper, cfg: Config, opt: torch.optim.Optimizer,
         sched: Any, lrs: nn.Module | None, extra: dict[str, Any] | None = None) -> Path:
    """Write a resumable checkpoint of the current training state."""
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(),
             **(extra or {})}
    return save_checkpoint(run_dir, step=step, weights=trainable_state(model, lrs),
                           meta=checkpoint_meta(model, cfg), trainer_state=state,
                           keep_last=cfg.train.keep_last)


def resume(run_dir: Path, model: MetaMapper, opt: torch.optim.Optimizer, sched: Any,
           lrs: nn.Module | None, cfg: Config) -> tuple[int, dict[str, Any]]:
    """Restore the newest valid checkpoint; returns (step, trainer state).

    A checkpoint trained with a config other than ``cfg`` (the one the run goes on with) is
    refused (``ConfigError`` naming the keys) unless only ``config.RESUMABLE_CHANGES`` differ.

    Weights, optimizer, scheduler and the Python/NumPy/torch RNG states (dropout) are restored;
    the tasks are a function of the seed and the step, so the run continues exactly as if it
    had not stopped. Corrupt newer checkpoints are skipped with a warning.
    """
    ckpt = latest_checkpoint(run_dir, trainer=True)
    check_compatible(ckpt.meta, vision=None, lm=model.lm.identity, visual_dim=model.mapper.visual_dim,
                     embed_dim=model.lm.embed_dim, where=str(ckpt.path))
    changed = [c for c in config_changes(config_from_dict(ckpt.meta["config"]), cfg)
               if not c.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: its checkpoint {ckpt.path.name} was trained with another config ("
            + "; ".join(changed) + f"); resume with the run's own {run_dir / 'config.yaml'} (only the updates, "
            "time limit, validation, checkpointing, paths and evaluation may change) or train into a new folder")
    load_trainable_state(model, lrs, ckpt.weights)
    state = load_trainer_state(ckpt)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return ckpt.step, state


def write_run_config(run_dir: Path, cfg: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))


class MetricsLog:
    """Append-only JSONL metrics (``metrics.jsonl`` in the run folder).

    ``resume_step``: the step a resumed run restarts from; records of later steps (written
    after that checkpoint by the run that stopped) and a line cut by a kill are dropped, so the
    log reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.start = time.time()
        self.enabled = enabled  # only rank 0 logs in distributed runs
        if enabled and resume_step is not None and self.path.is_file():
            self._truncate(resume_step)

    def _truncate(self, step: int) -> None:
        keep = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a half-written last line
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                keep.append(line)
        tmp = self.path.with_name(f".tmp-{self.path.name}")
        tmp.write_text("".join(f"{line}\n" for line in keep))
        tmp.replace(self.path)

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time_s", round(time.time() - self.start, 2))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def grads_finite(params: list[nn.Parameter]) -> bool:
    return all(p.grad is None or torch.isfinite(p.grad).all() for p in params)


def prepare_run(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Sample the run's tasks, fill/load the feature caches, build the model.

    Returns a dict with ``model``, ``train_tasks``, ``val_tasks``, ``table``, ``val_table``.
    """
    from metamapper.data.feature_table import FeatureTable
    from metamapper.data.tasks import filter_tasks
    from metamapper.device import resolve_device, setup_device
    from metamapper.models.factory import build_model, build_vision, set_lm_dtype
    from metamapper.train import distributed
    from metamapper.train.sources import training_class_keys, training_tasks, with_subclass_tasks

    t = cfg.train
    rank, world = distributed.rank_world()
    if t.meta_batch % world:
        raise ValueError(f"train.meta_batch={t.meta_batch} must be a multiple of the {world} processes")
    seed_everything(t.seed)
    train_set, val_set = training_tasks(cfg.data, max(1, t.updates * t.meta_batch), t.seed)
    # only the validation tasks the run will use get their images encoded (none without validation)
    val_set = replace(val_set, tasks=val_set.tasks[: t.val_tasks] if t.val_every and t.updates else [])
    d = cfg.data
    class_keys = training_class_keys(d, t.seed) if d.subclass_share else {}
    device = setup_device(resolve_device(cfg.runtime.device))  # cuda:LOCAL_RANK under auto
    vision = build_vision(cfg.backbones, device=device, precision=cfg.runtime.precision)
    tables = []
    for ts in (train_set, val_set):
        keys = list(dict.fromkeys(k for task in ts.tasks for k in task.image_keys()))
        if ts is train_set:  # sub-class tasks may use any training image
            keys = list(dict.fromkeys([*keys, *(k for ks in class_keys.values() for k in ks)]))
        if world > 1:  # ranks encode disjoint shares of the images in parallel, then all load all
            FeatureTable.from_cache(vision, ts.images, distributed.shard(keys, rank, world),
                                    root=cfg.data.feature_cache, progress=progress)
            distributed.barrier()
        tables.append(FeatureTable.from_cache(vision, ts.images, keys, root=cfg.data.feature_cache,
                                              progress=progress, device=device))
    train_tasks = train_set.tasks
    if d.subclass_share:
        class_keys = {c: [k for k in ks if k in tables[0]] for c, ks in class_keys.items()}
        train_tasks = with_subclass_tasks(train_tasks, class_keys, tables[0], share=d.subclass_share,
                                          ways=d.ways, shots=d.shots, queries_per_class=d.queries_per_class,
                                          seed=t.seed)
    train_tasks = filter_tasks(train_tasks, [k for k, _ in tables[0].skipped])
    val_tasks = filter_tasks(val_set.tasks, [k for k, _ in tables[1].skipped])
    seed_everything(t.seed)  # the mapper's initialisation depends only on the seed
    model = build_model(cfg.backbones, cfg.mapper, vision=vision, device=device,
                        precision=cfg.runtime.precision)
    if t.lm_dtype != "float32":
        set_lm_dtype(model, t.lm_dtype)
    if cfg.mapper.standardize:  # fixed statistics of the training features, saved with the mapper
        flat = tables[0].features.reshape(-1, tables[0].dim)
        model.mapper.set_feature_stats(flat.mean(0), flat.std(0))
    return {"model": model, "train_tasks": train_tasks, "val_tasks": val_tasks,
            "table": tables[0], "val_table": tables[1]}


def eval_method_for(cfg: Config) -> str:
    """The evaluation method that matches how a run was trained."""
    m, steps = cfg.train.method, cfg.train.inner.steps
    if m == "in_context":
        return "in-context-maml" if steps > 0 else "in-context"
    if m == "maml":
        return "maml"
    return "no-adapt"


class TrainingDiverged(RuntimeError):
    """Too many non-finite updates in a row; the last good checkpoint is kept."""


def diverged(run_dir: Path, bad_in_row: int, step: int, hint: str = "") -> TrainingDiverged:
    """The error that stops a run after ``train.max_bad_updates`` skipped updates in a row.

    No checkpoint is written from here on: the newest one on disk holds the last good weights
    (skipped updates never change the weights, and non-finite weights are never written).
    """
    ckpts = list_checkpoints(run_dir)
    kept = f"the last good checkpoint is {ckpts[-1]}" if ckpts else f"no checkpoint in {run_dir} yet"
    return TrainingDiverged(f"{bad_in_row} non-finite losses/gradients in a row at update {step} "
                            f"(train.max_bad_updates); {kept}{hint}")


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag checked between updates, so that training saves a
    checkpoint and exits cleanly instead of losing the work since the last one."""

    def __init__(self) -> None:
        import signal

        self.stop = False
        self._signal = signal
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (self._signal.SIGTERM, self._signal.SIGINT):
                self._old[sig] = self._signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.stop:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            self._signal.signal(sig, old)
