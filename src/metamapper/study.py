"""``metamapper study``: the paper's comparative claims, measured on the Fashion-MNIST recipe
(``configs/fashion.yaml``), and the choice of the default's meta-training data (issue #19).

Each claim is a set of rows; a row is one training (``TRAININGS``, a recipe and its overrides,
trained once per seed) evaluated one way on the held-out Fashion-MNIST test tasks (the
fixed test seed: every row of every seed scores the same tasks, so rows compare pairwise). Rows
report the mean +- sd over the training seeds and each run's Wilson interval; each claim's
comparisons are paired by seed and called *holds* / *fails* / *not separated* at two standard
errors.

The study is resumable and runs one claim at a time: trainings live in ``OUT/TRAINING/seedS``
(a finished one is reused), every measurement is appended to ``results/measurements.jsonl``
beside the report as soon as it exists (kept with the report in the repository, so that the
trainings' folders may go), and the report (``docs/RESULTS.md`` by default, one plot per claim in
``results/``) is rewritten from all measurements so far, every claim listed, rows not yet
measured marked so.

Example::

    metamapper study --claim shots --seeds 3 --tasks 1000
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from metamapper.config import (
    RESUMABLE_CHANGES,
    Config,
    ConfigError,
    config_changes,
    config_from_dict,
    load_config,
)

# The paper's mapper block and schedule (post-LN, raw features, raw output, a constant rate, no
# regularisers, the LM in float32), as configs/fashion_maml.yaml: our attention mapper at the
# paper's settings (the authors' exact mapper, mapper.kind=paper, needs widths that the embedded
# backbones do not have).
PAPER_MAPPER = (
    "mapper.ff_dim=null", "mapper.norm_first=false", "mapper.standardize=false", "mapper.output_norm=false",
    "train.cosine=false", "train.spread_weight=0", "train.geometry_weight=0", "runtime.precision=float32",
)
STANDARD_RECIPE = ("train.method=standard", "data.naming=real", "train.spread_weight=0",
                   "train.geometry_weight=0", "train.val_every=0")


def equal_compute_standard(main: Config) -> tuple[str, ...]:
    """Overrides that give a non-episodic run ``main``'s compute: as many updates, each on as many
    (image, caption) pairs as ``main``'s tasks show (``ways x (shots + queries_per_class)`` per
    task): the same images and about as many LM tokens."""
    d = main.data
    per_task = d.ways * (d.shots + d.queries_per_class)
    return (*STANDARD_RECIPE, f"train.updates={main.train.updates}",
            f"train.meta_batch={main.train.meta_batch * per_task}",
            f"data.images_per_class={d.images_per_class}")


def _maml_recipe(main: Config) -> tuple[str, ...]:
    """The paper's first-order MAML (5 SGD steps at 0.01, 4 tasks per update) for as many tasks
    as ``main`` trains on (updates x tasks)."""
    tasks = main.train.updates * main.train.meta_batch
    return (*PAPER_MAPPER, "train.method=maml", "train.meta_batch=4", f"train.updates={tasks // 4}",
            "train.inner.steps=5", "train.inner.lr=0.01", "train.inner.first_order=true",
            "data.queries_per_class=1", "train.val_every=0")


# The recipes the trainings start from. The paper's claims are measured on the Fashion-MNIST recipe
# (configs/fashion.yaml: the embedded default until the broad mixture was chosen by the
# broad-selection claim), the baselines at its compute. Broad meta-training (issue #19):
# Fashion-MNIST's six classes beside the rendered corpora (docs/DATA.md), which is the default
# (``Config()`` as it is: its values are written in config.py only), and the same corpora without
# Fashion-MNIST, so that Fashion-MNIST is a domain the mapper never saw. More updates of fewer
# tasks: the corpora take off late (docs/EXPERIMENTS.md).
FASHION = ("data.source=fashion-mnist", "data.mixture={}", "train.updates=150", "train.meta_batch=32")
BROAD: tuple[str, ...] = ()
SOURCE_NAMES = {"fashion-mnist": "Fashion-MNIST"}  # task sources as the report names them
NO_FASHION = {k: v for k, v in Config().data.mixture.items() if k != "fashion-mnist"}
BROAD_NO_FASHION = (f"data.mixture={json.dumps(NO_FASHION)}",)


def _broad_compute(mixture: dict[str, float]) -> str:
    """``"300 updates x 16 tasks: Fashion-MNIST 1/2, icons 1/4, emoji 1/4"``: the default's
    schedule over ``mixture``'s shares."""
    t, total = Config().train, sum(mixture.values())
    shares = (f"{SOURCE_NAMES.get(k, k)} {Fraction(v / total).limit_denominator(100)}" for k, v in mixture.items())
    return f"{t.updates} updates x {t.meta_batch} tasks: {', '.join(shares)}"


@dataclass(frozen=True)
class Training:
    """A training of the study: its config is ``Config()`` with ``base`` (the recipe it starts
    from), then the study's overrides (e.g. tiny backbones in tests), then its own ``overrides``;
    ``compute`` says what its compute equals."""

    base: tuple[str, ...]
    overrides: tuple[str, ...]
    compute: str

    def config(self, study_overrides: Sequence[str] = (), *more: str) -> Config:
        return config_from_dict({}, [*self.base, *study_overrides, *self.overrides, *more])


def trainings(overrides: Sequence[str] = ()) -> dict[str, Training]:
    """The study's trainings; the baselines at the compute of the Fashion-MNIST recipe (with the
    study's ``overrides``)."""
    main = config_from_dict({}, [*FASHION, *overrides])
    t = main.train
    same = f"{t.updates} updates x {t.meta_batch} tasks"
    return {
        "fashion": Training(FASHION, (), f"{same}, Fashion-MNIST's 6 classes"),
        "non-episodic": Training(FASHION, equal_compute_standard(main),
                                 f"{t.updates} updates x the pairs of {t.meta_batch} tasks, our mapper"),
        "maml": Training(FASHION, _maml_recipe(main),
                         f"{t.updates * t.meta_batch // 4} updates x 4 tasks, paper mapper"),
        "non-episodic-paper": Training(FASHION, (*PAPER_MAPPER, *equal_compute_standard(main)),
                                       f"{t.updates} updates x the pairs of {t.meta_batch} tasks, paper mapper"),
        "mlp": Training(FASHION, ("mapper.kind=mlp",), f"{same}, MLP mapper"),
        "broad": Training(BROAD, (), _broad_compute(Config().data.mixture)),
        "broad-no-fashion": Training(BROAD_NO_FASHION, (), _broad_compute(NO_FASHION)),
    }


@dataclass(frozen=True)
class Row:
    """One measurement of a claim: a training evaluated one way (per seed)."""

    label: str
    training: str
    dataset: str = "fashion-open-ended"
    ways: int = 2
    shots: int = 1
    method: str = "in_context"  # a registered method (metamapper.methods)
    steps: int | None = None  # adaptation steps (None: Method.steps' rule)
    repeats: int = 0  # extra presentations of the support set
    induction: bool = False  # the task-induction instruction opening each task's rows
    split: str = "test"  # test (to report) | val (the validation stream of held-out-class tasks, to choose)
    slow: bool = False  # scored on the study's smaller task count (adaptation at test time)
    tasks: int | None = None  # a fixed task count for this row (None: the study's --tasks / --slow-tasks)

    def evaluation(self) -> str:
        """``"Open-Ended 2-way 1-shot, in_context"`` (+ steps, repeats, induction)."""
        kind = DATASET_NAMES.get(self.dataset, self.dataset)
        text = f"{kind} {self.ways}-way {self.shots}-shot, {self.method}"
        if self.steps is not None:
            text += f", {self.steps} steps"
        if self.repeats:
            text += f", support shown {1 + self.repeats}x"
        if self.split != "test":
            text += f", {self.split} tasks"
        return text + (", task induction" if self.induction else "")


@dataclass(frozen=True)
class Comparison:
    """``better`` should beat ``worse`` (``kind="better"``) or be no worse (``"not_worse"``)."""

    better: str
    worse: str
    kind: str = "better"


@dataclass(frozen=True)
class Claim:
    title: str
    rows: tuple[Row, ...]
    comparisons: tuple[Comparison, ...] = ()
    note: str = ""


TRAININGS = tuple(trainings())  # their names
OE, RN = "fashion-open-ended", "fashion-real-name"
STEPS = (0, 1, 5, 10)
DATASET_NAMES = {OE: "Open-Ended", RN: "Real-Name",
                 "fashion-all-open-ended": "Fashion-MNIST, all 10 classes, Open-Ended",
                 "fashion-all-real-name": "Fashion-MNIST, all 10 classes, Real-Name",
                 "icons-open-ended": "icons, Open-Ended", "emoji-open-ended": "emoji, Open-Ended",
                 "icons-real-name": "icons, Real-Name", "emoji-real-name": "emoji, Real-Name"}
GENERAL = 500  # test tasks per row of the generalisation claims (3 trainings x 3 seeds x many sets)
SLOW_GENERAL = 200  # ... per 5-way or 5-shot row
VAL_GENERAL = 300  # validation tasks per row of the broad-selection claim


def _general_rows(split: str) -> tuple[Row, ...]:
    sets = [("Fashion held-out classes, OE", OE, 2, 1), ("Fashion held-out classes, RN", RN, 2, 1),
            ("Fashion all 10 classes, OE", "fashion-all-open-ended", 2, 1),
            ("Fashion all 10 classes, RN", "fashion-all-real-name", 2, 1),
            ("Fashion all 10 classes, OE 5-way", "fashion-all-open-ended", 5, 1),
            ("icons test concepts, OE", "icons-open-ended", 2, 1), ("emoji test concepts, OE", "emoji-open-ended", 2, 1),
            # the other shapes: 5 shots (Fashion-MNIST only: most corpus concepts have 3-5
            # drawings), Real-Name and 5-way on the corpora
            ("Fashion held-out classes, OE 5-shot", OE, 2, 5),
            ("Fashion all 10 classes, OE 5-way 5-shot", "fashion-all-open-ended", 5, 5),
            ("Fashion all 10 classes, RN 5-way", "fashion-all-real-name", 5, 1),
            ("icons test concepts, RN", "icons-real-name", 2, 1), ("emoji test concepts, RN", "emoji-real-name", 2, 1),
            ("icons test concepts, OE 5-way", "icons-open-ended", 5, 1),
            ("emoji test concepts, OE 5-way", "emoji-open-ended", 5, 1)]
    if split == "val":  # choosing: the validation stream of each source's held-out classes
        sets = [("Fashion held-out classes, OE", OE, 2, 1), ("icons val concepts, OE", "icons-open-ended", 2, 1),
                ("emoji val concepts, OE", "emoji-open-ended", 2, 1)]
    return tuple(Row(f"{training}: {name}", training, dataset=ds, ways=ways, shots=shots, split=split,
                     tasks=(SLOW_GENERAL if ways > 2 or shots > 1 else GENERAL) if split == "test" else VAL_GENERAL)
                 for training in ("fashion", "broad", "broad-no-fashion") for name, ds, ways, shots in sets)


CLAIMS: dict[str, Claim] = {
    "selection": Claim(
        "0. Choosing the method on validation tasks",
        (Row("in-context, attention mapper (ours)", "fashion", split="val"),
         Row("in-context, MLP mapper", "mlp", split="val"),
         Row("non-episodic, our mapper", "non-episodic", split="val")),
        (Comparison("in-context, attention mapper (ours)", "in-context, MLP mapper"),
         Comparison("in-context, attention mapper (ours)", "non-episodic, our mapper")),
        "The validation stream: tasks of the four held-out classes drawn with their own seed, never "
        "the test tasks (`metamapper evaluate --split val`). The method (the support in context, the "
        "attention mapper) stays ours only if it scores best here (the comparisons say whether it "
        "does); the claims below score it once on the test tasks."),
    "episodic": Claim(
        "1. Episodic meta-training beats non-episodic training (equal compute)",
        (Row("in-context, episodic (ours)", "fashion"),
         Row("in-context, non-episodic", "non-episodic"),
         Row("MAML, episodic (paper)", "maml", method="maml", steps=5, slow=True),
         Row("MAML at test, non-episodic", "non-episodic-paper", method="maml", steps=5, slow=True)),
        (Comparison("in-context, episodic (ours)", "in-context, non-episodic"),
         Comparison("MAML, episodic (paper)", "MAML at test, non-episodic"))),
    "shots": Claim(
        "2. More distinct shots help more than repeating one",
        (Row("1 shot", "fashion"),
         Row("3 shots", "fashion", shots=3), Row("5 shots", "fashion", shots=5),
         Row("1 shot shown 3x", "fashion", repeats=2), Row("1 shot shown 5x", "fashion", repeats=4)),
        (Comparison("3 shots", "1 shot shown 3x"), Comparison("5 shots", "1 shot shown 5x")),
        "Repeats under MAML change nothing (the support loss is a mean over duplicated rows), so the "
        "claim is measured in context, where a repeat is a longer context."),
    "steps": Claim(
        "3. More inner steps help",
        (*(Row(f"MAML, {s} steps", "maml", method="maml", steps=s, slow=True) for s in STEPS),
         *(Row(f"in-context + {s} steps", "fashion", method="in_context", steps=s, slow=True)
           for s in STEPS)),
        (Comparison("MAML, 1 steps", "MAML, 0 steps"), Comparison("MAML, 5 steps", "MAML, 1 steps"),
         Comparison("MAML, 10 steps", "MAML, 5 steps"),
         Comparison("in-context + 1 steps", "in-context + 0 steps"),
         Comparison("in-context + 5 steps", "in-context + 1 steps"),
         Comparison("in-context + 10 steps", "in-context + 5 steps")),
        "Every row on the study's smaller task count for rows that adapt (the 0-step rows too), so "
        "that each comparison pairs the same tasks. Whether an adapting training's steps can write "
        "the support words at all: `metamapper evaluate ... --support-fit` (the support images "
        "named after adaptation; docs/EXPERIMENTS.md)."),
    "mapper": Claim(
        "4. The attention mapper beats the MLP mapper",
        (Row("attention mapper (ours)", "fashion"), Row("MLP mapper", "mlp")),
        (Comparison("attention mapper (ours)", "MLP mapper"),)),
    "induction": Claim(
        "5. Task induction is not needed",
        (Row("Open-Ended, no induction", "fashion"), Row("Open-Ended, induction", "fashion", induction=True),
         Row("Real-Name, no induction", "fashion", dataset=RN),
         Row("Real-Name, induction", "fashion", dataset=RN, induction=True)),
        (Comparison("Open-Ended, no induction", "Open-Ended, induction", "not_worse"),
         Comparison("Real-Name, no induction", "Real-Name, induction", "not_worse")),
        "The instruction opens the whole sequence, before the support, as in Frozen (`Answer with "
        "dax or blicket. [p(x_1)] This is a dax. [p(x_2)] This is a blicket. [p(x_q)] This is a`; "
        "`data.tasks.with_task_induction`); the mapper never saw such text in training."),
    "broad-selection": Claim(
        "Choosing the meta-training data on validation tasks (issue #19)",
        _general_rows("val"),
        tuple(Comparison(f"broad: {name}", f"fashion: {name}") for name in (
            "Fashion held-out classes, OE", "icons val concepts, OE", "emoji val concepts, OE")),
        "Validation streams only (never the test tasks): Fashion-MNIST's held-out classes (its own "
        f"seed), and the validation concepts of the icons and emoji corpora, {VAL_GENERAL} tasks each, "
        "2-way 1-shot Open-Ended."),
    "generalisation": Claim(
        "Generalisation: held-out classes, a domain never seen, held-out concepts (issue #19)",
        _general_rows("test"),
        (Comparison("broad: Fashion held-out classes, OE", "fashion: Fashion held-out classes, OE", "not_worse"),
         Comparison("broad: icons test concepts, OE", "fashion: icons test concepts, OE"),
         Comparison("broad: emoji test concepts, OE", "fashion: emoji test concepts, OE")),
        f"2-way 1-shot rows: {GENERAL} test tasks, 5-way or 5-shot: {SLOW_GENERAL}; in context. `fashion-all-*`: "
        "all ten classes of Fashion-MNIST's test split, a domain that `broad-no-fashion` never saw "
        "(for `fashion` and `broad`, six of the ten classes are meta-training classes)."),
    "grid": Claim(
        "The Frozen grid for the Fashion-MNIST recipe",
        tuple(Row(f"{'Open-Ended' if ds == OE else 'Real-Name'} {w}-way {k}-shot", "fashion", dataset=ds,
                  ways=w, shots=k) for ds in (OE, RN) for w in (2, 4) for k in (1, 3, 5)),
        note="Fashion-MNIST holds out 4 classes, so 4-way is its widest task (the paper's 5-way needs 5). "
             "The 4-way rows were answered with each task's support context computed once for its queries "
             "(`SharedContext`, docs/PERFORMANCE.md), the 2-way rows before that existed: the same answers "
             "in float32, about one query in 100 flipped by bfloat16 rounding at 4-way 5-shot."),
}


def _key(row: Row, seed: int, n_tasks: int, lm_dtype: str) -> str:
    fields = asdict(row)
    fields.pop("label")
    fields.pop("slow")
    fields.pop("tasks")
    if fields["split"] == "test":  # (keys written before rows had a split)
        fields.pop("split")
    return json.dumps({**fields, "seed": seed, "n_tasks": n_tasks, "lm_dtype": lm_dtype}, sort_keys=True)


def _canonical_key(key: str) -> str:
    """A stored measurement's key with its method in today's spelling (measurements written
    before the methods registry spelled them ``in-context``, ``in-context-maml``)."""
    from metamapper.methods import OLD_SPELLINGS

    try:
        fields = json.loads(key)
    except json.JSONDecodeError:
        return key
    if not isinstance(fields, dict) or fields.get("method") not in OLD_SPELLINGS:
        return key
    return json.dumps({**fields, "method": OLD_SPELLINGS[fields["method"]][0]}, sort_keys=True)


# What may differ between a study's run and its training without making it another training: what
# a resumed run may change (config.RESUMABLE_CHANGES) except its length and the frozen backbones'
# dtype (the paper's recipes pin float32), and the seed (part of a measurement's key and of the run
# folder's name)
NOT_THE_TRAINING = (*(k for k in RESUMABLE_CHANGES if k not in ("train.updates", "runtime.precision")),
                    "train.seed")


def training_changes(was: Config, now: Config) -> list[str]:
    """``"key: old -> new"`` for each setting in which run config ``was`` is another training
    than ``now`` (``config.config_changes``, less ``NOT_THE_TRAINING``). Keys added to the config
    since ``was`` was written read as their defaults there."""
    return [c for c in config_changes(was, now) if not c.startswith(NOT_THE_TRAINING)]


@dataclass
class Store:
    """The measurements so far: ``results/measurements.jsonl`` beside the report, one JSON
    object per line (a line cut by a crash is skipped). A measurement is keyed by its row, seed,
    task count and the LM's dtype in evaluation (``dtypes``: training -> dtype, as ``load_run``
    resolves it on this machine), so float32 and bfloat16 measurements are never compared with
    each other. Each records the config of the run it scored (``checkpoint.config``); with
    ``configs`` (training -> today's config), a measurement of a training whose config has
    changed since (``training_changes``; or that no longer reads as a config) is set aside
    (``stale``), so that it is measured again rather than reported for the new one. A line
    without a config counts as today's."""

    path: Path
    dtypes: dict[str, str]
    configs: dict[str, Config] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, dtypes: dict[str, str], configs: dict[str, Config] | None = None) -> Store:
        store = cls(path, dtypes, configs or {})
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    key = _canonical_key(rec["key"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
                now = store.configs.get(rec.get("training", ""))
                was = (rec.get("checkpoint") or {}).get("config")
                if now is not None and isinstance(was, dict) and _another_training(was, now):
                    store.stale.append(rec)
                else:
                    store.results[key] = rec
        return store

    def key(self, row: Row, seed: int, n_tasks: int) -> str:
        return _key(row, seed, n_tasks, self.dtypes[row.training])

    def get(self, row: Row, seed: int, n_tasks: int) -> dict[str, Any] | None:
        return self.results.get(self.key(row, seed, n_tasks))

    def add(self, key: str, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.results[key] = record


def measurements_path(results: Path) -> Path:
    """Where the measurements behind report ``results`` are kept."""
    return results.parent / "results" / "measurements.jsonl"


def eval_dtypes(overrides: Sequence[str] = (), device: str | None = None) -> dict[str, str]:
    """Each training's LM dtype when its runs are loaded to be scored here (``device.lm_dtype``:
    bfloat16 where native unless the training pins float32, as the paper's recipes do)."""
    from metamapper.device import lm_dtype, resolve_device

    where = resolve_device(device)  # where run_study's load_run(run_dir, device=device) scores
    return {name: lm_dtype(cfg.runtime.precision, where)
            for name, cfg in training_configs(overrides).items()}


def training_configs(overrides: Sequence[str] = ()) -> dict[str, Config]:
    """Each training's config (with the study's ``overrides``; seed 0, the default runtime)."""
    return {name: spec.config(overrides) for name, spec in trainings(overrides).items()}


def _another_training(was: dict[str, Any], now: Config) -> bool:
    try:
        return bool(training_changes(config_from_dict(was), now))
    except ConfigError:  # not a config of this version at all
        return True


def check_run_config(run_dir: Path, now: Config) -> None:
    """Refuse a run folder whose recorded config is not the study's training any more."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    changes = training_changes(load_config(path), now)
    if changes:
        raise ValueError(f"{path}: trained as another training than the study's now ({'; '.join(changes[:3])}"
                         f"{'; ...' if len(changes) > 3 else ''}); move the run folder away to train it again")


def tasks_for(row: Row, tasks: int, slow_tasks: int) -> int:
    return row.tasks or (slow_tasks if row.slow else tasks)


def _paired(store: Store, a: Row, b: Row, seeds: int, tasks: int, slow_tasks: int) -> list[float]:
    diffs = []
    for s in range(seeds):
        ra = store.get(a, s, tasks_for(a, tasks, slow_tasks))
        rb = store.get(b, s, tasks_for(b, tasks, slow_tasks))
        if ra and rb:
            diffs.append(ra["accuracy"] - rb["accuracy"])
    return diffs


def verdict(diffs: Sequence[float], kind: str = "better") -> str:
    """The call on paired per-seed differences (``better - worse``): at two standard errors of
    their mean, *holds*, *fails*, or *not separated*; fewer than 2 seeds: *too few seeds*.

    Example::

        >>> verdict([0.05, 0.06, 0.04]), verdict([0.01, -0.02, 0.0]), verdict([-0.01, -0.02, -0.015], "not_worse")
        ('holds', 'not separated', 'fails')
    """
    if len(diffs) < 2:
        return "too few seeds"
    mean, se = statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    if kind == "not_worse":
        return "fails" if mean < -2 * se else "holds"
    if mean > 2 * se:
        return "holds"
    return "fails" if mean < -2 * se else "not separated"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


KEPT = " †"  # marks a line kept from the report's earlier text (measured from another store)


def _old_lines(section: str | None) -> dict[str, str]:
    """A section's measured table lines by their first cell (a row's label, a comparison), the
    mark of a kept line dropped; lines that say nothing was measured are left out."""
    out: dict[str, str] = {}
    for line in (section or "").splitlines():
        cells = line.split(" | ")
        if (line.startswith("| ") and len(cells) > 2 and "not yet measured" not in line
                and "too few seeds" not in line):
            out[cells[0][2:].removesuffix(KEPT)] = line
    return out


def _kept(line: str, key: str) -> str:
    return line.replace(f"| {key}{KEPT} |", f"| {key} |", 1).replace(f"| {key} |", f"| {key}{KEPT} |", 1)


def claim_section(name: str, claim: Claim, store: Store, *, seeds: int, tasks: int, slow_tasks: int,
                  plot: str | None, old: str | None = None) -> str:
    """One claim's Markdown: the command, its rows (mean +- sd over seeds, each run's Wilson
    interval) and the paired comparisons. A row or comparison that ``store`` cannot give keeps its
    measured line from ``old`` (the claim's section of the existing report), marked ``†``."""
    runs = trainings()
    before = _old_lines(old)
    kept = False
    cmd = f"metamapper study --claim {name} --seeds {seeds}"
    if any(row.tasks is None for row in claim.rows):  # (rows with their own count ignore the flags)
        cmd += f" --tasks {tasks} --slow-tasks {slow_tasks}"
    lines = [f"## {claim.title}", "", f"`{cmd}`", ""]
    if claim.note:
        lines += [claim.note, ""]
    lines += ["| row | training | evaluation | tasks | mean ± sd % | per seed % (95% Wilson) |",
              "|---|---|---|---|---|---|"]
    runs_of = seed_runs(claim, store, seeds, tasks, slow_tasks)
    for row in claim.rows:
        n = tasks_for(row, tasks, slow_tasks)
        recs = [store.get(row, s, n) for s in range(seeds)]
        got = [r for r in recs if r]
        if got:
            accs = [r["accuracy"] for r in got]
            sd = f" ± {_pct(statistics.stdev(accs))}" if len(accs) > 1 else ""
            summary = f"{_pct(statistics.mean(accs))}{sd}" + (f" ({len(got)} of {seeds} seeds)"
                                                               if len(got) < seeds else "")
            per = ", ".join(f"{_pct(r['accuracy'])} ({_pct(r['ci95'][0])}–{_pct(r['ci95'][1])})"
                            + _run_mark(runs_of, row.training, s, r) if r else "—" for s, r in enumerate(recs))
        elif row.label in before:
            lines.append(_kept(before[row.label], row.label))
            kept = True
            continue
        else:
            summary, per = "not yet measured", "—"
        lines.append(f"| {row.label} | {runs[row.training].compute} | {row.evaluation()} | {n} | "
                     f"{summary} | {per} |")
    if claim.comparisons:
        by_label = {r.label: r for r in claim.rows}
        lines += ["", "| comparison | paired difference (points, mean ± sd) | seeds | verdict |",
                  "|---|---|---|---|"]
        for c in claim.comparisons:
            diffs = _paired(store, by_label[c.better], by_label[c.worse], seeds, tasks, slow_tasks)
            sign = ">" if c.kind == "better" else ">="
            what = f"{c.better} {sign} {c.worse}"
            if len(diffs) < 2 and what in before:
                lines.append(_kept(before[what], what))
                kept = True
                continue
            diff = (f"{100 * statistics.mean(diffs):+.1f}"
                    + (f" ± {100 * statistics.stdev(diffs):.1f}" if len(diffs) > 1 else "")) if diffs else "—"
            lines.append(f"| {what} | {diff} | {len(diffs)} | {verdict(diffs, c.kind)} |")
    mixed = {k: v for k, v in runs_of.items() if len(v) > 1}
    if mixed:
        lines += ["", " ".join(map(_mark, range(max(map(len, mixed.values()))))) + " A seed's values so marked come "
                  "from different trainings of the same config and seed: "
                  + "; ".join(f"`{t}` seed {s}: " + ", ".join(f"{_mark(i)} checkpoint {sha[:8]}"
                                                           for i, sha in enumerate(v))
                              for (t, s), v in sorted(mixed.items()))
                  + ". A seed fixes the weights bitwise only in one arithmetic (torch build, device, number "
                  "of CPU threads, which orders the reductions; each checkpoint records its `arithmetic`) and "
                  "on the same encoded features: a seed trained again elsewhere can come out otherwise."]
    if kept:
        lines += ["", f"{KEPT.strip()} Kept from an earlier run of this command: measured on that run's "
                  "trainings, whose measurements are not beside this report (`results/measurements.jsonl`); "
                  "the other rows may come from newer trainings of the same seeds. The plot shows the other rows."]
    if plot:
        lines += ["", f"![{name}]({plot})"]
    return "\n".join(lines) + "\n"


RUN_MARKS = "ᵃᵇᶜᵈᵉᶠᵍʰ"  # the trainings of one seed whose rows a claim mixes, in row order


def _mark(i: int) -> str:
    return RUN_MARKS[i] if i < len(RUN_MARKS) else f"[{i + 1}]"


def seed_runs(claim: Claim, store: Store, seeds: int, tasks: int,
              slow_tasks: int) -> dict[tuple[str, int], list[str]]:
    """(training, seed) -> the checkpoints (SHA-256 of the weights) that the claim's measured rows
    of that seed were scored on, in row order: more than one where the seed was trained again
    and came out otherwise (another thread count, another machine)."""
    out: dict[tuple[str, int], list[str]] = {}
    for row in claim.rows:
        for s in range(seeds):
            rec = store.get(row, s, tasks_for(row, tasks, slow_tasks))
            sha = ((rec or {}).get("checkpoint") or {}).get("sha256")
            if sha and sha not in (have := out.setdefault((row.training, s), [])):
                have.append(sha)
    return out


def _run_mark(runs_of: dict[tuple[str, int], list[str]], training: str, seed: int, rec: dict[str, Any]) -> str:
    shas = runs_of.get((training, seed), [])
    sha = (rec.get("checkpoint") or {}).get("sha256")
    return _mark(shas.index(sha)) if len(shas) > 1 and sha in shas else ""


def plot_claim(claim: Claim, store: Store, path: Path, *, seeds: int, tasks: int, slow_tasks: int) -> bool:
    """A bar per measured row (mean over seeds, sd as the error bar, each seed as a dot)."""
    rows = []
    for row in claim.rows:
        accs = [r["accuracy"] for s in range(seeds)
                if (r := store.get(row, s, tasks_for(row, tasks, slow_tasks)))]
        if accs:
            rows.append((row.label, accs))
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows)), 3.2))
    means = [100 * statistics.mean(a) for _, a in rows]
    sds = [100 * statistics.stdev(a) if len(a) > 1 else 0.0 for _, a in rows]
    ax.bar(range(len(rows)), means, yerr=sds, capsize=3, color="#8fb3d9")
    for i, (_, accs) in enumerate(rows):
        ax.scatter([i] * len(accs), [100 * a for a in accs], s=8, color="black", zorder=3)
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("accuracy % (test tasks)")
    ax.set_ylim(0, 100)
    ax.set_title(claim.title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _sections(text: str) -> dict[str, str]:
    """``"## title"`` -> that section of a Markdown report (up to the next ``## ``)."""
    out: dict[str, str] = {}
    for part in ("\n" + text).split("\n## ")[1:]:
        out["## " + part.split("\n", 1)[0]] = "## " + part.rstrip("\n") + "\n"
    return out


def _measured(claim: Claim, store: Store, seeds: int, tasks: int, slow_tasks: int) -> bool:
    return any(store.get(row, s, tasks_for(row, tasks, slow_tasks)) for row in claim.rows for s in range(seeds))


def write_report(store: Store, results: Path, *, seeds: int, tasks: int, slow_tasks: int) -> Path:
    """``results`` (Markdown) with every claim, plots in ``results``' folder under ``results/``.

    A claim of which ``store`` holds no measurement keeps its section of the existing report, if
    it has one (measured from another store: the study's folder is local to a machine); a claim
    partly measured keeps the lines of the rows and comparisons that ``store`` lacks, marked."""
    from metamapper.data.sources import TEST_SEED

    old = _sections(results.read_text()) if results.is_file() else {}

    parts = ["# Results", "",
             "Written by `metamapper study` (src/metamapper/study.py) from its measurements; rerun a claim "
             "to update its section. The paper's claims are measured on the Fashion-MNIST recipe "
             "(`configs/fashion.yaml`: EfficientNet-Lite0 + SmolLM2-135M meta-trained in context on six "
             "Fashion-MNIST classes; the embedded default until the broad mixture, `configs/broad.yaml`, "
             "was chosen by the last claims) and the trainings it is compared with at its compute, each "
             "trained once per seed (`train.seed` = 0, 1, ...; a seed trained again is marked where a claim "
             "mixes its trainings), scored on the same test tasks of the four "
             f"held-out classes (the fixed test seed {TEST_SEED}; the broad meta-training claims also "
             "score other sets, named in their rows). Rows: mean ± sd over the seeds, each run's "
             "95% Wilson interval. Comparisons: paired by seed, *holds* / *fails* at two standard errors "
             "of the mean difference, else *not separated*. The frozen LM scores in the dtype each training "
             "resolves to on the scoring machine (`runtime.precision`; here: "
             + ", ".join(f"{k} {v}" for k, v in store.dtypes.items()) + ").", ""]
    for name, claim in CLAIMS.items():
        kept = old.get(f"## {claim.title}")
        if kept and not _measured(claim, store, seeds, tasks, slow_tasks):
            parts.append(kept)
            continue
        png = results.parent / "results" / f"{name}.png"
        have = plot_claim(claim, store, png, seeds=seeds, tasks=tasks, slow_tasks=slow_tasks)
        parts.append(claim_section(name, claim, store, seeds=seeds, tasks=tasks, slow_tasks=slow_tasks,
                                   plot=f"results/{name}.png" if have else None, old=kept))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(parts))
    return results


def run_study(claims: Sequence[str], *, seeds: int = 3, tasks: int = 1000, slow_tasks: int = 300,
              out: str | Path = "runs/study", results: str | Path = "docs/RESULTS.md",
              device: str | None = None, overrides: Sequence[str] = (),
              only: Sequence[str] | None = None, only_seeds: Sequence[int] | None = None,
              say: Callable[[str], None] = print) -> Path:
    """Train what ``claims`` need (once per seed), score their rows, rewrite the report.

    Args:
        claims: names in ``CLAIMS``.
        seeds: training seeds 0 .. seeds-1.
        tasks, slow_tasks: test tasks per row (``slow_tasks`` for rows that adapt at test time).
        out: the study's folder (the trainings).
        results: the Markdown report to (re)write; the measurements are kept beside it, in
            ``results/measurements.jsonl``.
        device: where to compute (default: ``runtime.device``'s auto).
        overrides: extra config overrides for every training (e.g. tiny backbones in tests).
        only: the trainings this call may run (default: all the claims need); rows of the others
            stay unmeasured (e.g. the paper's MAML, hours on a CPU, left for a GPU).
        only_seeds: the seeds (of 0 .. seeds-1) this call may train and score (default: all), so
            that seeds can run in parallel, one process each; the report still counts ``seeds``.
    """
    # the claims and the report load no torch (the CLI's parser reads CLAIMS); the runner does
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.run import evaluate_run
    from metamapper.loading import load_run
    from metamapper.methods import get_method
    from metamapper.runs import has_run, is_finished

    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        raise ValueError(f"unknown claim {', '.join(unknown)}; choose from {', '.join(CLAIMS)}")
    bad = [t for t in only or () if t not in TRAININGS]
    if bad:
        raise ValueError(f"unknown training {', '.join(bad)}; choose from {', '.join(TRAININGS)}")
    off = [s for s in only_seeds or () if not 0 <= s < seeds]
    if off:
        raise ValueError(f"seed {', '.join(map(str, off))} is not among the study's seeds 0..{seeds - 1}")
    out, results = Path(out), Path(results)
    store = Store.open(measurements_path(results), eval_dtypes(overrides, device), training_configs(overrides))
    if store.stale:
        say(f"== {len(store.stale)} measurements of trainings whose config has changed since are set aside")
    on = (f"runtime.device={device}",) if device else ()  # after each training's own overrides
    specs = trainings(overrides)
    rows = [row for name in claims for row in CLAIMS[name].rows
            if only is None or row.training in only]
    for seed in (s for s in range(seeds) if only_seeds is None or s in only_seeds):
        for name in dict.fromkeys(row.training for row in rows):
            cfg = specs[name].config(overrides, f"train.seed={seed}", *on)
            run_dir = out / name / f"seed{seed}"
            todo = {key: r for r in rows if r.training == name  # rows that two claims share: once
                    if (key := store.key(r, seed, tasks_for(r, tasks, slow_tasks))) not in store.results}
            if not todo:  # measured already (perhaps on a run that is not kept): nothing to train
                continue
            check_run_config(run_dir, cfg)
            if not is_finished(run_dir, cfg.train.updates):
                say(f"== training {name}, seed {seed}: {specs[name].compute}")
                get_method(cfg.train.method).train(cfg, run_dir, resume=has_run(run_dir))
                if not is_finished(run_dir, cfg.train.updates):  # a stop signal or train.max_minutes
                    say(f"== {name}, seed {seed} stopped before update {cfg.train.updates}; nothing "
                        "scored from it: rerun the same command to resume")
                    return write_report(store, results, seeds=seeds, tasks=tasks, slow_tasks=slow_tasks)
            run = load_run(run_dir, device=device)
            for key, row in todo.items():
                n = tasks_for(row, tasks, slow_tasks)
                say(f"== {row.label} (seed {seed}): {row.evaluation()}, {n} tasks")
                ts = evaluation_tasks(row.dataset, data=None, ways=row.ways, shots=row.shots, n_tasks=n,
                                      split=row.split)  # the fixed TEST_SEED: the same tasks for every row
                res = evaluate_run(run, ts, method=row.method, steps=row.steps, repeats=row.repeats,
                                   induction=row.induction, with_zero_steps=False)
                store.add(key, {**{k: v for k, v in res.items() if k != "examples"},  # with provenance
                                "label": row.label, "training": name, "seed": seed, "run": str(run_dir)})
                write_report(store, results, seeds=seeds, tasks=tasks, slow_tasks=slow_tasks)
    return write_report(store, results, seeds=seeds, tasks=tasks, slow_tasks=slow_tasks)
