"""Plain functions shared by the training recipes (no inheritance between recipes)."""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from metamapper import distributed
from metamapper.checkpoint import (
    append_line,
    check_compatible,
    checkpoint_config,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
    write_atomic,
)
from metamapper.config import (
    RESUMABLE_CHANGES,
    Config,
    ConfigError,
    config_changes,
    config_from_dict,
    dump_config,
)
from metamapper.data.feature_table import FeatureTable
from metamapper.data.sources import training_tasks
from metamapper.data.tasks import Task, filter_tasks
from metamapper.device import resolve_device, setup_device
from metamapper.eval.fewshot import EvalResult
from metamapper.models.factory import build_model, build_vision
from metamapper.models.metamapper import MetaMapper
from metamapper.runs import TENSORBOARD_DIR


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
        "arithmetic": arithmetic(model.device),
    }


def arithmetic(device: torch.device) -> dict[str, Any]:
    """What besides the config and seed decides a training's floats: the torch build, the device
    type and, on a CPU, the number of intra-op threads (it sets the order of the reductions).
    Measured: the same config and seed at 1 and at 2 threads give other weights after 6 updates,
    the same at 1 and 1 (docs/EXPERIMENTS.md, "Which run a seed is")."""
    out: dict[str, Any] = {"torch": torch.__version__, "device": device.type}
    if device.type == "cpu":
        out["cpu_threads"] = torch.get_num_threads()
    return out


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
         sched: Any, lrs: nn.Module | None, extra: dict[str, Any] | None = None,
         val_accuracy: float | None = None) -> Path:
    """Write a resumable checkpoint of the current training state (``val_accuracy``: of this
    update's validation, if any; ``train.keep_best`` keeps the best)."""
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(),
             **(extra or {})}
    return save_checkpoint(run_dir, step=step, weights=trainable_state(model, lrs),
                           meta=checkpoint_meta(model, cfg), trainer_state=state,
                           keep_last=cfg.train.keep_last, keep_best=cfg.train.keep_best,
                           val_accuracy=val_accuracy)


def resume(run_dir: Path, model: MetaMapper, opt: torch.optim.Optimizer, sched: Any,
           lrs: nn.Module | None, cfg: Config) -> tuple[int, dict[str, Any]]:
    """Restore the newest valid checkpoint; returns (step, trainer state).

    A checkpoint trained with a config other than ``cfg`` (the one the run goes on with) is
    refused (``ConfigError`` naming the keys) unless only ``config.RESUMABLE_CHANGES`` differ.

    Weights, optimizer, scheduler and the Python/NumPy/torch RNG states (dropout) are restored;
    the tasks are a function of the seed and the step, so the run continues exactly as if it
    had not stopped when it goes on with the checkpoint's ``arithmetic`` (else it warns and goes
    on). Corrupt newer checkpoints are skipped with a warning.
    """
    ckpt = latest_checkpoint(run_dir, trainer=True)
    check_compatible(ckpt.meta, vision=None, lm=model.lm.identity, visual_dim=model.mapper.visual_dim,
                     embed_dim=model.lm.embed_dim, where=str(ckpt.path))
    changed = [c for c in config_changes(config_from_dict(checkpoint_config(ckpt)), cfg)
               if not c.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: its checkpoint {ckpt.path.name} was trained with another config ("
            + "; ".join(changed) + f"); resume with the run's own {run_dir / 'config.yaml'} (only the updates, "
            "time limit, validation, checkpointing, paths and evaluation may change) or train into a new folder")
    was, now = ckpt.meta.get("arithmetic"), arithmetic(model.device)
    if isinstance(was, dict) and was != now:
        warnings.warn(f"resuming {run_dir} with {now} where its checkpoint {ckpt.path.name} was trained "
                      f"with {was}: the run goes on, but its weights will not be bitwise those of an "
                      "uninterrupted run", stacklevel=2)
    load_trainable_state(model, lrs, ckpt.weights)
    state = load_trainer_state(ckpt)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return ckpt.step, state


def write_run_config(run_dir: Path, cfg: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", dump_config(cfg))


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line ``ValueError`` saying how to
    install TensorBoard (``train.report_to=[tensorboard]`` without the package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises it when the tensorboard package is missing
        raise ValueError("train.report_to=[tensorboard] needs the tensorboard package: "
                         f"pip install 'metamapper-fewshot[tensorboard]' ({e})") from None
    return SummaryWriter


def check_report_to(report_to: Sequence[str]) -> None:
    """Fail now, not after minutes of feature caching, when a ``train.report_to`` target's
    package is missing."""
    if "tensorboard" in report_to:
        summary_writer_class()


class MetricsLog:
    """Append-only JSONL metrics (``metrics.jsonl`` in the run folder), and the same scalars as
    TensorBoard events in ``<run>/tensorboard/`` with ``report_to=["tensorboard"]``.

    ``resume_step``: the step a resumed run restarts from; records of later steps (written
    after that checkpoint by the run that stopped) and a line cut by a kill are dropped, so the
    log reads as one uninterrupted run (TensorBoard events after it are purged likewise).
    Use it as a context manager, or call ``close``, so the events reach the disk.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True, resume_step: int | None = None,
                 report_to: Sequence[str] = ()) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.start = time.time()
        self.enabled = enabled  # only rank 0 logs in distributed runs
        if enabled and resume_step is not None and self.path.is_file():
            self._truncate(resume_step)
        self.tensorboard = None
        if enabled and "tensorboard" in report_to:
            writer = summary_writer_class()
            self.tensorboard = writer(log_dir=str(run_dir / TENSORBOARD_DIR),
                                      purge_step=None if resume_step is None else resume_step + 1)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def _truncate(self, step: int) -> None:
        keep = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a half-written last line
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                keep.append(line)
        write_atomic(self.path, "".join(f"{line}\n" for line in keep))

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time_s", round(time.time() - self.start, 2))
        append_line(self.path, json.dumps(record))
        if self.tensorboard is not None and isinstance(record.get("step"), int):
            for tag, value in _scalars(record):
                self.tensorboard.add_scalar(tag, value, global_step=record["step"])
            self.tensorboard.flush()  # a killed run keeps its curves up to its last update


def _scalars(record: dict[str, Any]) -> list[tuple[str, float]]:
    """A metrics record's numbers under their ``metrics.jsonl`` names; an interval ``[low, high]``
    (``val_ci95``) as ``<name>_low`` / ``<name>_high``; text and missing values left out."""
    out: list[tuple[str, float]] = []
    for k, v in record.items():
        if k == "step" or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out.append((k, float(v)))
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out += [(f"{k}_low", float(v[0])), (f"{k}_high", float(v[1]))]
    return out


@dataclass
class PreparedRun:
    """What a recipe trains with: the model and the run's tasks with their cached features."""

    model: MetaMapper
    train_tasks: list[Task]
    val_tasks: list[Task]  # the validation tasks the run uses (none without validation)
    table: FeatureTable  # features of the training tasks' images
    val_table: FeatureTable  # ... of the validation tasks' images


def prepare_run(cfg: Config, *, progress: bool = True) -> PreparedRun:
    """Sample the run's tasks, fill/load the feature caches, build the model."""
    t = cfg.train
    check_report_to(t.report_to)
    rank, world = distributed.rank_world()
    if t.meta_batch % world:
        raise ValueError(f"train.meta_batch={t.meta_batch} must be a multiple of the {world} processes")
    seed_everything(t.seed)
    train_set, val_set = training_tasks(cfg.data, max(1, t.updates * t.meta_batch), t.seed)
    # only the validation tasks the run will use get their images encoded (none without validation)
    val_set = replace(val_set, tasks=val_set.tasks[: t.val_tasks] if t.val_every and t.updates else [])
    device = setup_device(resolve_device(cfg.runtime.device))  # cuda:LOCAL_RANK under auto
    vision = build_vision(cfg.backbones, device=device, precision=cfg.runtime.precision)
    tables = []
    for ts in (train_set, val_set):
        keys = list(dict.fromkeys(k for task in ts.tasks for k in task.image_keys()))
        if world > 1:  # ranks encode disjoint shares of the images in parallel, then all load all
            FeatureTable.from_cache(vision, ts.images, distributed.shard(keys, rank, world),
                                    root=cfg.data.feature_cache, progress=progress)
            distributed.barrier()
        tables.append(FeatureTable.from_cache(vision, ts.images, keys, root=cfg.data.feature_cache,
                                              progress=progress, device=device))
    train_tasks = filter_tasks(train_set.tasks, [k for k, _ in tables[0].skipped])
    val_tasks = filter_tasks(val_set.tasks, [k for k, _ in tables[1].skipped])
    seed_everything(t.seed)  # the mapper's initialisation depends only on the seed
    # the LM's dtype: load_run evaluates the run in the dtype this resolves to on its machine
    model = build_model(cfg.backbones, cfg.mapper, vision=vision, device=device,
                        precision=cfg.runtime.precision)
    if cfg.mapper.standardize:  # fixed statistics of the training features, saved with the mapper
        flat = tables[0].features.reshape(-1, tables[0].dim)
        model.mapper.set_feature_stats(flat.mean(0), flat.std(0))
    return PreparedRun(model=model, train_tasks=train_tasks, val_tasks=val_tasks,
                       table=tables[0], val_table=tables[1])


def outer_step(loss: torch.Tensor, params: list[nn.Parameter], opt: torch.optim.Optimizer,
               sched: Any, clip: float) -> float | None:
    """The optimizer step every recipe takes: backward, average the gradients across ranks,
    clip, step, advance the schedule.

    A non-finite loss or gradient (on any rank) skips the step, so the weights and the optimizer
    state stay finite; the schedule advances either way (a resumed run stays in step).

    Returns:
        the gradient norm before clipping, or None when the update was skipped.
    """
    opt.zero_grad(set_to_none=True)
    gnorm: float | None = None
    if distributed.all_true(bool(torch.isfinite(loss))):
        loss.backward()
        distributed.average_gradients(params)  # identical gradients on every rank
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if math.isfinite(gnorm):
            opt.step()
        else:
            gnorm = None
    sched.step()
    return gnorm


@dataclass
class Bookkeeping:
    """What every recipe does after an update: the metrics line, the stop on divergence,
    validation, checkpoints, and a clean stop on a signal or at ``train.max_minutes``.

    ``after_update`` returns True when the run must stop (its checkpoint is then on disk).
    """

    run_dir: Path
    cfg: Config
    model: MetaMapper
    opt: torch.optim.Optimizer
    sched: Any
    lrs: nn.Module | None
    log: MetricsLog
    stop: StopSignal
    say: Callable[[str], object]  # rank 0 speaks for the job
    main: bool
    skipped: int = 0  # non-finite updates so far
    bad_in_row: int = 0  # ... of them, the latest in a row
    deadline: float = math.inf

    def after_update(self, done: int, loss: torch.Tensor, gnorm: float | None, *, t0: float,
                     validate: Callable[[], EvalResult] | None = None, **extra: float) -> bool:
        t = self.cfg.train
        if gnorm is None:
            self.skipped, self.bad_in_row = self.skipped + 1, self.bad_in_row + 1
        else:
            self.bad_in_row = 0
        distributed.fault_hook(distributed.rank_world()[0], done)
        self.log.write(step=done, loss=distributed.mean_across(loss.item()),
                       grad_norm=float("nan") if gnorm is None else gnorm, skipped=self.skipped,
                       **{k: round(v, 4) for k, v in extra.items()},
                       tasks_per_s=round(t.meta_batch / (time.time() - t0), 2),
                       lr=self.sched.get_last_lr()[0])
        if self.bad_in_row >= t.max_bad_updates:
            raise diverged(self.run_dir, self.bad_in_row, done, " (lower train.lr or train.inner.lr?)")
        val_accuracy = None  # this update's validation accuracy, if it validates
        if validate is not None and t.val_every and (done % t.val_every == 0 or done == t.updates):
            res = validate()
            val_accuracy = res.accuracy
            self.log.write(step=done, val_accuracy=res.accuracy, val_ci95=res.ci95,
                           val_support_fit=res.support_fit, val_method=res.method)
            self.say(f"update {done}: validation accuracy {res.accuracy:.3f} "
                     f"(95% CI {res.ci95[0]:.3f}-{res.ci95[1]:.3f})"
                     + (f", support fit {res.support_fit:.3f}" if res.support_fit is not None else ""))
            self.model.train()
        out_of_time = distributed.any_flag(time.time() > self.deadline)
        stopping = distributed.any_flag(self.stop.stop)
        keep = t.keep_best and val_accuracy is not None  # a validated update may be the best
        if (done % t.checkpoint_every == 0 or done == t.updates or out_of_time or stopping or keep) and self.main:
            save(self.run_dir, done, self.model, self.cfg, self.opt, self.sched, self.lrs,
                 extra={"skipped": self.skipped, "bad_in_row": self.bad_in_row}, val_accuracy=val_accuracy)
        if out_of_time or stopping:
            why = "a stop signal" if stopping else f"train.max_minutes={t.max_minutes}"
            self.say(f"stopped after {done} updates ({why}); checkpoint saved, resume with --resume")
        return out_of_time or stopping


@contextlib.contextmanager
def update_loop(run_dir: Path, cfg: Config, model: MetaMapper, opt: torch.optim.Optimizer, sched: Any,
                lrs: nn.Module | None, *, start: int, state: dict[str, Any], resume: bool, main: bool,
                progress: bool, desc: str) -> Iterator[tuple[Any, Bookkeeping]]:
    """What every recipe's updates run inside: a progress bar over the updates left (iterate it
    for the step numbers), the metrics log, the stop signal, and the ``Bookkeeping`` to call
    after each update (its ``skipped`` / ``bad_in_row`` from a resumed ``state``). On leaving,
    every rank waits until the last checkpoint is on disk.

    Example::

        with common.update_loop(run_dir, cfg, model, opt, sched, None, start=0, state={},
                                resume=False, main=True, progress=True, desc="train") as (bar, books):
            for step in bar:
                ...  # one update
                if books.after_update(step + 1, loss, gnorm, t0=t0):
                    break
    """
    t = cfg.train
    bar = tqdm(range(start, t.updates), initial=start, total=t.updates, desc=desc, disable=not progress)
    model.train()
    with StopSignal() as stop, MetricsLog(run_dir, enabled=main, resume_step=start if resume else None,
                                          report_to=t.report_to) as log:
        yield bar, Bookkeeping(
            run_dir=run_dir, cfg=cfg, model=model, opt=opt, sched=sched, lrs=lrs, stop=stop,
            say=bar.write if main else (lambda *_a, **_k: None), main=main, log=log,
            skipped=state.get("skipped", 0), bad_in_row=state.get("bad_in_row", 0),
            deadline=time.time() + 60 * t.max_minutes if t.max_minutes else math.inf)
    bar.close()
    distributed.barrier()


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
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.stop:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
