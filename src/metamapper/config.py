"""Typed experiment configuration: dataclasses with a comment on every field, YAML loading and
dotted command-line overrides (``train.updates=300 mapper.prefix_len=8``).

Example::

    cfg = load_config("configs/fashion.yaml", overrides=["train.updates=50"])
    cfg.train.lr  # 0.001
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import math
import re
import textwrap
import tokenize
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid configuration (message names the key and the problem)."""


@dataclass
class InnerLoop:
    """Inner-loop settings (defaults: the paper's).

    Attributes:
        steps: SGD steps on the support loss (paper: 5).
        lr: inner learning rate (paper: 0.01); the initial value when learned (Meta-SGD).
        first_order: drop second-order terms (no ``create_graph``).
        adapt: which mapper parameters adapt: ``"all"`` or a comma list of name prefixes
            (e.g. ``"prefix"`` adapts only the learnable prefix vectors).
        meta_sgd: learn a per-parameter, element-wise inner learning rate (Meta-SGD).
        per_step_lr: with ``meta_sgd``, a separate learning rate for each step.
    """

    steps: int = 5
    lr: float = 0.01
    first_order: bool = True
    adapt: str = "all"
    meta_sgd: bool = False
    per_step_lr: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {self.steps}")
        if self.lr < 0:
            raise ValueError(f"inner learning rate must be >= 0, got {self.lr}")

    def selects(self, name: str) -> bool:
        """Whether parameter ``name`` is adapted in the inner loop."""
        if self.adapt == "all":
            return True
        return any(name == p or name.startswith(p + ".") for p in self.adapt.split(","))


@dataclass
class BackboneConfig:
    # defaults: the embedded offline default (EfficientNet-Lite0 + SmolLM2-135M)
    vision: str = "efficientnet-lite0"  # registered vision encoder (metamapper.list_vision_encoders())
    vision_path: str | None = None  # hub name or local directory, for encoders that load weights
    vision_mode: str = "grid2"  # pooled (1 token) | grid2 / grid3 / grid (EfficientNet: 4 / 9 / 49 tokens) | patch (CLIP)
    lm: str = "smollm2-135m"  # registered language model (metamapper.list_language_models())
    lm_path: str | None = None  # hub name or local directory (for lm: hf)
    seed: int = 0  # seed of randomly initialised backbones (tiny-*, *-random)


@dataclass
class MapperConfig:
    kind: str = "attention"  # attention (our meta-mapper, the fields below) | mlp (the paper's ablation) | paper: the authors' mapper exactly (models.mapper.PaperMapper: prefix in the visual space, Q/K/V to the LM size, one linear feed-forward, post-LN; uses prefix_len, num_heads, dropout, standardize, output_norm; ff_dim and norm_first do not apply)
    prefix_len: int = 4  # visual prefix vectors per image (paper: 4)
    num_heads: int = 8  # attention heads; must divide the LM embedding size
    ff_dim: int | None = 1152  # feed-forward hidden size (None: the LM embedding size)
    dropout: float = 0.1  # dropout inside the mapper, training only
    output_norm: bool = True  # layer-normalise each prefix vector, times a learned scale initialised to the LM's token-embedding norm
    norm_first: bool = True  # pre-LN attention block (the paper's is post-LN)
    standardize: bool = True  # standardise visual features with the training set's per-dimension mean/std


# The default's meta-training data (issue #19, chosen on validation tasks: docs/RESULTS.md):
# Fashion-MNIST's six training classes for half of the tasks, the icons and emoji corpora
# rendered from Debian packages (docs/DATA.md) for a quarter each.
DEFAULT_MIXTURE = {"fashion-mnist": 2.0, "icons": 1.0, "emoji": 1.0}


@dataclass
class DataConfig:
    source: str = "mixture"  # registered task source (metamapper.data.tasks.TASK_SOURCES): fashion-mnist | icons | emoji | glyphs | image-folders | frozen-benchmark | coco | synthetic | mixture (of several: data.mixture)
    root: str | None = None  # data folder (default: the source's own default)
    benchmark: str = "open_ended_mi"  # frozen-benchmark name (its JSON prefix)
    ways: int = 2  # classes per task (N)
    shots: int = 1  # support examples per class (k)
    queries_per_class: int = 2  # query images per class in meta-training tasks
    naming: str = "made_up"  # meta-training words: made_up (a fresh made-up word per class per task: forces binding) | real (class names)
    images_per_class: int | None = 1000  # training images per class read from the source (None: all)
    feature_cache: str | None = None  # feature cache folder (default: ~/.cache/metamapper/features)
    mixture: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIXTURE))  # source=mixture: task source -> its share of the meta-training and validation tasks (normalised), e.g. {icons: 0.5, fashion-mnist: 0.5}; empty (unless set) for any other source
    mixture_roots: dict[str, str] = field(default_factory=dict)  # source=mixture: task source -> its data folder (default: the source's own default; data.root is not used)


@dataclass
class TrainConfig:
    method: str = "in_context"  # a registered method (metamapper.methods): in_context (support in the LM context) | maml (the paper) | standard (non-episodic captioning)
    updates: int = 300  # outer (meta-)updates
    meta_batch: int = 16  # tasks per meta-update (paper: 4); mini-batch of pairs for standard
    lr: float = 1e-3  # AdamW learning rate (paper: 1e-3)
    weight_decay: float = 0.01  # AdamW weight decay
    clip: float = 1.0  # gradient-norm clip (paper: 1.0)
    warmup: int = 0  # linear warm-up updates
    cosine: bool = True  # cosine decay to 0 after warm-up (false: a constant rate, the paper's)
    inner: InnerLoop = field(default_factory=lambda: InnerLoop(steps=0))  # inner loop (maml: steps=5, lr=0.01)
    queries_per_row: int = 4  # in_context: queries (with answers) that share one copy of the support context
    spread_weight: float = 1.0  # weight of the anti-collapse hinge on the prefixes' spread over images (0: off)
    spread_target: float = 0.25  # ... the spread it asks for: per-element std over images / mean |element|
    geometry_weight: float = 1.0  # weight of the prefixes-keep-the-features'-similarities penalty (0: off)
    val_every: int = 50  # validate every this many updates (0: never)
    val_tasks: int = 100  # held-out tasks per validation
    checkpoint_every: int = 50  # write a checkpoint every this many updates
    keep_last: int = 3  # checkpoints kept
    keep_best: bool = True  # also keep the checkpoint of the best validation accuracy (and write one at every validation)
    seed: int = 0  # seed of task sampling and initialisation
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    max_bad_updates: int = 10  # stop after this many non-finite losses/gradients in a row
    report_to: list[str] = field(default_factory=list)  # where the scalars of metrics.jsonl also go: [] (nowhere else) | [tensorboard] (event files in <run>/tensorboard/; pip install 'metamapper-fewshot[tensorboard]')


@dataclass
class EvalConfig:
    # How `metamapper evaluate` (and `evaluate_run`) score this run unless told otherwise. What is
    # scored (dataset, shots, split, the fixed task seed) is chosen on the command line: the test
    # tasks are a property of the data, the same for every run.
    tasks: int = 1000  # evaluation tasks (--tasks; 0: every task of a benchmark file's part)
    max_new_tokens: int = 8  # generation length limit of each answer
    batch_tasks: int = 32  # tasks adapted and answered together (memory, not results)


# Keys older runs' configs hold that no longer exist; reading such a config drops them with a
# warning, so that older runs still load. eval.shots / eval.variants / eval.steps / eval.seed and
# data.variant were never read: `evaluate` takes them from its flags (--shots, --dataset, --steps,
# --seed). train.step_weights (a query-loss weight per inner step) was removed unmeasured
# (docs/EXPERIMENTS.md). Keys since spelled otherwise (mapper.preset=paper, train.lm_dtype) are read
# in their new spelling by `_upgrade`, with the same warning.
RETIRED_KEYS = {"eval": ("shots", "variants", "steps", "seed"), "data": ("variant",),
                "train": ("step_weights",)}


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto (cuda:LOCAL_RANK if CUDA is available, else mps, else cpu) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # the frozen backbones' dtype while training and when the run is loaded to evaluate or predict: auto (the LM in bfloat16 where the hardware computes it natively: CUDA, or a CPU with AVX512-BF16/AMX, else float32; the vision encoder in bfloat16 on CUDA, float32 elsewhere) | float32 | bfloat16 (both). The mapper, its optimiser and the loss stay float32. On a CPU without native bfloat16 (e.g. AVX2 only) a bfloat16 LM is ~40x slower (benchmarks/lm_dtype.py)


@dataclass
class Config:
    backbones: BackboneConfig = field(default_factory=BackboneConfig)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # where the run computes, and the frozen backbones' dtype

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``typ``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if isinstance(typ, type) and dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _from_dict(typ, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """An older config (a run's ``config.yaml`` or checkpoint, a user's file) in today's spelling:
    renamed keys read as their new names, ``RETIRED_KEYS`` dropped, with one warning naming them.
    Returns a new dict (``data`` is not modified)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}  # sections copied
    notes: list[str] = []
    m = data.get("mapper")
    if isinstance(m, dict) and "preset" in m:  # the authors' mapper was mapper.preset=paper
        preset = m.pop("preset")
        if preset == "paper":
            if m.get("kind", "attention") not in ("attention", "paper"):
                raise ConfigError("mapper.preset=paper (now mapper.kind=paper) is the authors' attention "
                                  f"mapper; it contradicts mapper.kind={m['kind']!r}")
            m["kind"] = "paper"
            notes.append("mapper.preset=paper is now spelled mapper.kind=paper")
        elif preset not in ("", None):
            raise ConfigError(f"mapper.preset is retired (the authors' mapper is mapper.kind=paper), "
                              f"got {preset!r}")
    t = data.get("train")
    if isinstance(t, dict) and "lm_dtype" in t:  # the LM's dtype was train.lm_dtype beside runtime.precision
        notes.append(_lm_dtype_note(t.pop("lm_dtype"), data))
    retired = []
    for section, keys in RETIRED_KEYS.items():
        d = data.get(section)
        if isinstance(d, dict):
            retired += [f"{section}.{k}" for k in d if k in keys]
            data[section] = {k: v for k, v in d.items() if k not in keys}
    if retired:
        notes.append(f"config keys {', '.join(retired)} are retired and ignored")
    if notes:
        warnings.warn("an older config: " + "; ".join(notes), UserWarning, stacklevel=3)
    return data


def _lm_dtype_note(lm_dtype: Any, data: dict[str, Any]) -> str:
    """Read an older config's ``train.lm_dtype`` into ``data``'s ``runtime.precision`` where that
    says the same (``auto`` always did; an explicit dtype beside ``precision: auto`` becomes the
    precision, both backbones'); else it is dropped. Returns the warning's note."""
    section = data.get("runtime")
    runtime: dict[str, Any] = section if isinstance(section, dict) else {}
    precision = runtime.get("precision", RuntimeConfig.precision)
    if lm_dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"train.lm_dtype is retired (runtime.precision sets the LM's dtype), got {lm_dtype!r}")
    if lm_dtype == "auto" or lm_dtype == precision:
        return f"train.lm_dtype={lm_dtype} is retired: runtime.precision={precision} sets the LM's dtype"
    if precision == "auto":
        data["runtime"] = {**runtime, "precision": lm_dtype}
        return f"train.lm_dtype={lm_dtype} is now runtime.precision={lm_dtype} (both backbones)"
    return (f"train.lm_dtype={lm_dtype} is retired and ignored: runtime.precision={precision} sets "
            "the LM's dtype")


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for k in data:
        if k not in known:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"unknown config key {where!r}; known: {', '.join(sorted(known))}")
    # an empty section in a file (`data:` with nothing under it) reads as None: the defaults
    data = {k: v for k, v in data.items() if not (v is None and dataclasses.is_dataclass(hints[k]))}
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _set_dotted(data: dict[str, Any], dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not of the form key.sub=value")
    key, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        if node.get(p) is None:  # absent, or an empty section in the file (`data:`)
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Build and validate a ``Config`` from a nested dict plus dotted overrides."""
    data = dict(data or {})
    for o in overrides or []:
        _set_dotted(data, o)
    d = data.get("data")
    if isinstance(d, dict) and d.get("source", DataConfig.source) != "mixture" and "mixture" not in d:
        data["data"] = {**d, "mixture": {}}  # the default mixture belongs to source=mixture only
    cfg = _from_dict(Config, _upgrade(data))
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (None: defaults) and apply ``key.sub=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    d, t = cfg.data, cfg.train
    if d.ways < 2:
        raise ConfigError(f"data.ways must be >= 2, got {d.ways}")
    if d.shots < 1:
        raise ConfigError(f"data.shots must be >= 1, got {d.shots}")
    if t.queries_per_row < 1:
        raise ConfigError(f"train.queries_per_row must be >= 1, got {t.queries_per_row}")
    if d.queries_per_class < 1:
        raise ConfigError(f"data.queries_per_class must be >= 1, got {d.queries_per_class}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if t.updates < 0 or t.meta_batch < 1:
        raise ConfigError("train.updates must be >= 0 and train.meta_batch >= 1")
    # train.method names a registered method (metamapper.methods); the registry refuses an unknown
    # one when the run starts (this module stays free of torch and of the methods' code)
    if not t.method.strip():
        raise ConfigError("train.method must name a method, e.g. in_context")
    if cfg.mapper.kind not in ("attention", "mlp", "paper"):
        raise ConfigError(f"mapper.kind must be attention, mlp or paper, got {cfg.mapper.kind!r}")
    e = cfg.eval
    if e.tasks < 0 or e.max_new_tokens < 1 or e.batch_tasks < 1:
        raise ConfigError("eval.tasks must be >= 0, eval.max_new_tokens and eval.batch_tasks >= 1")
    if cfg.mapper.prefix_len < 1:
        raise ConfigError(f"mapper.prefix_len must be >= 1, got {cfg.mapper.prefix_len}")
    if d.naming not in ("made_up", "real"):
        raise ConfigError(f"data.naming must be made_up or real, got {d.naming!r}")
    if d.source == "mixture" and not d.mixture:
        raise ConfigError("data.source=mixture needs data.mixture: task source -> share, e.g. "
                          "data.mixture='{icons: 0.5, fashion-mnist: 0.5}'")
    if d.source != "mixture" and (d.mixture or d.mixture_roots):
        raise ConfigError(f"data.mixture and data.mixture_roots are for data.source=mixture, not {d.source!r}")
    bad = {k: v for k, v in d.mixture.items() if not (math.isfinite(v) and v > 0) or k == "mixture"}
    if bad:
        raise ConfigError(f"data.mixture: each share must be a number > 0 of a source other than "
                          f"mixture, got {bad}")
    if set(d.mixture_roots) - set(d.mixture):
        raise ConfigError(f"data.mixture_roots names sources not in data.mixture: "
                          f"{', '.join(sorted(set(d.mixture_roots) - set(d.mixture)))}")
    m = cfg.mapper
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"mapper.dropout must be in [0, 1), got {m.dropout}")
    # the settings a long run relies on to save, resume and stop
    at_least = {"train.checkpoint_every": (t.checkpoint_every, 1), "train.keep_last": (t.keep_last, 0),
                "train.max_bad_updates": (t.max_bad_updates, 1), "train.val_every": (t.val_every, 0),
                "train.warmup": (t.warmup, 0), "train.val_tasks": (t.val_tasks, 1)}
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    positive: dict[str, float | None] = {"train.clip": t.clip, "train.max_minutes": t.max_minutes}
    for key, bound in positive.items():
        if bound is not None and not bound > 0:
            raise ConfigError(f"{key} must be > 0, got {bound}")
    if t.spread_weight < 0 or not t.spread_target > 0:
        raise ConfigError("train.spread_weight must be >= 0 and train.spread_target > 0")
    if t.geometry_weight < 0:
        raise ConfigError(f"train.geometry_weight must be >= 0, got {t.geometry_weight}")
    if not t.weight_decay >= 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    if not math.isfinite(t.lr):
        raise ConfigError(f"train.lr must be a finite number, got {t.lr}")
    # the device's syntax only: whether this machine has it is checked when a run starts
    # (metamapper.device.resolve_device), so a config written on a GPU machine loads anywhere
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.runtime.device.strip().lower()):
        raise ConfigError(f"runtime.device must be auto, cpu, cuda, cuda:N or mps, got {cfg.runtime.device!r}")
    if cfg.runtime.precision not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"runtime.precision must be auto, float32 or bfloat16, got {cfg.runtime.precision!r}")
    unknown = [r for r in t.report_to if r not in REPORT_TO]
    if unknown:
        raise ConfigError(f"train.report_to may hold {', '.join(REPORT_TO)}, got {', '.join(map(repr, unknown))}")


REPORT_TO = ("tensorboard",)  # train.report_to's choices (train.common.MetricsLog writes them)


# what may differ between a run's checkpoint and the config it is resumed with: how long it runs,
# how often it validates and saves, where it finds its files, how it is evaluated, where it computes
# (and so the frozen backbones' dtype: `auto` resolves per device, and a run trained on a GPU
# resumes on a CPU)
RESUMABLE_CHANGES = ("train.updates", "train.max_minutes", "train.val_every", "train.val_tasks",
                     "train.checkpoint_every", "train.keep_last", "train.keep_best", "train.max_bad_updates",
                     "train.report_to",
                     "data.feature_cache", "data.root", "data.mixture_roots", "backbones.vision_path", "backbones.lm_path", "eval.",
                     "runtime.device", "runtime.precision")


def config_changes(old: Config, new: Config) -> list[str]:
    """``"key: old -> new"`` for each dotted key whose value differs between two configs."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(old.to_dict()), flat(new.to_dict())
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def dump_config(cfg: Config, *, comments: bool = False) -> str:
    """The config as YAML text; with ``comments``, each setting's comment in this file (the one
    beside its field, or its line of the class docstring's ``Attributes``) above it, as YAML
    comments (``metamapper config show``). Both read back (``load_config``) as ``cfg``."""
    if not comments:
        return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    head = "# metamapper's config: each setting's meaning above it (src/metamapper/config.py)\n"
    return head + "".join(_commented(Config, cfg.to_dict(), indent=0))


def _commented(cls: type, data: dict[str, Any], indent: int) -> list[str]:
    """YAML lines of ``data`` (a ``cls`` as a dict), each key under its comment."""
    pad, notes, hints = " " * indent, _field_comments(cls), typing.get_type_hints(cls)
    out = []
    for name, value in data.items():
        sub = hints[name] if dataclasses.is_dataclass(hints[name]) else None
        note = " ".join(x for x in (notes.get(name), sub and _field_comments(sub).get("")) if x)
        lines = textwrap.wrap(note, width=max(40, 98 - indent), break_on_hyphens=False)
        out += [f"{pad}# {line}\n" for line in lines]
        if sub is not None:
            out += [f"{pad}{name}:\n", *_commented(sub, value, indent + 2)]
        else:
            out.append(textwrap.indent(yaml.safe_dump({name: value}, sort_keys=False), pad))
    return out


@functools.cache
def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of dataclass ``cls``: the ``# ...`` beside it, else its
    line of the docstring's ``Attributes:``; key ``""``: the comment lines opening the class body.
    Empty where the source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    notes = _docstring_attributes(inspect.getdoc(cls) or "")
    on_line = {tok.start[0]: tok.string.lstrip("#").strip()
               for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    body = typing.cast(ast.ClassDef, ast.parse(source).body[0]).body
    fields_at = [n for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    for node in fields_at:
        if node.end_lineno in on_line:
            notes[typing.cast(ast.Name, node.target).id] = on_line[node.end_lineno]
    first = fields_at[0].lineno if fields_at else 0
    opening = [on_line[i] for i in sorted(on_line) if i < first and source.splitlines()[i - 1].lstrip().startswith("#")]
    if opening:
        notes[""] = " ".join(opening)
    return notes


def _docstring_attributes(doc: str) -> dict[str, str]:
    """``name: text`` entries (continuation lines indented further) of a Google-style
    ``Attributes:`` section."""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    if "Attributes:" not in lines:
        return out
    name = ""
    for line in lines[lines.index("Attributes:") + 1:]:
        if line.strip() and not line.startswith(" "):
            break  # the next section
        m = re.fullmatch(r" {4}(\w+): (.*)", line)
        if m:
            name, out[m[1]] = m[1], m[2].strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return {k: v.replace("``", "`") for k, v in out.items()}
