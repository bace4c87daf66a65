"""The paths users take besides the smoke run, end to end through ``metamapper`` on tiny generated
data in the real formats: COCO training, in-domain training on a Frozen benchmark then its
evaluation, the VQA benchmarks' real questions, ``--task-induction`` and ``--repeats``, the
non-episodic recipe with validation.

What the model sees is read off the prompts: ``Prompts`` wraps ``MetaMapper.pack`` (every LM
input, training and answering) and ``MetaMapper.generate`` (the prompts answered), rendering each
row as text with ``<img>`` for each image's prefix. Where an exact accuracy is checked, the
generated answers are replaced by a fixed one after the real generation ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from tiny_data import write_benchmark, write_coco

from metamapper.data import FolderImageSource, load_benchmark, split_tasks
from metamapper.data.synthetic import TRAIN_CLASSES, class_name
from metamapper.eval.metrics import normalize_answer
from metamapper.models.metamapper import MetaMapper, Text  # the class training builds

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
SHORT = ["train.updates=2", "train.meta_batch=2", "train.checkpoint_every=2"]


def render(row: Sequence[object]) -> str:
    return "".join("<img>" if isinstance(item, int) else item.text for item in row)


class Prompts:
    """Records the rows given to ``MetaMapper.pack`` (``packed``: lists of ``(row, rendered)``
    per call) and the rendered prompts given to ``MetaMapper.generate`` (``answered``);
    ``answer`` (if set) replaces each generated text."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.packed: list[list[tuple[list[object], str]]] = []
        self.answered: list[str] = []
        self.answer: str | None = None
        pack, generate = MetaMapper.pack, MetaMapper.generate

        def packing(model, rows, *args, **kwargs):
            self.packed.append([(list(r), render(r)) for r in rows])
            return pack(model, rows, *args, **kwargs)

        def generating(model, features, rows, *args, **kwargs):
            self.answered += [render(r) for r in rows]
            texts = generate(model, features, rows, *args, **kwargs)
            return texts if self.answer is None else [self.answer] * len(texts)

        monkeypatch.setattr(MetaMapper, "pack", packing)
        monkeypatch.setattr(MetaMapper, "generate", generating)

    def training_rows(self) -> list[list[object]]:
        """Rows with a target (training and scoring inputs, not prompts to answer)."""
        return [row for call in self.packed for row, _ in call
                if any(isinstance(i, Text) and i.target for i in row)]


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> Prompts:
    return Prompts(monkeypatch)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(in_process: Path, cli: Callable[..., str]) -> Path:
    """A smoke run (in context, tiny random backbones) to evaluate."""
    out = in_process / "smoke"
    cli("train", "--config", SMOKE, "--out", out, *SHORT, "train.val_every=0",
        f"data.feature_cache={in_process / 'features'}")
    return out


def evaluate(cli: Callable[..., str], run: Path, folder: Path, dataset: str, *args: object,
             shots: int = 1) -> dict:
    out = folder / f"{dataset}-results.json"
    cli("evaluate", "--checkpoint", run, "--dataset", dataset, "--data", folder, "--ways", 2,
        "--shots", shots, "--tasks", 0, "--feature-cache", folder.parent / "features", "--out", out,
        *args)
    return json.loads(out.read_text())


# ------------------------------------------------------------------ COCO


def test_coco_training_on_real_captions(in_process: Path, cli, prompts: Prompts) -> None:
    """``data.source=coco`` on the COCO 2017 layout: trained on its train2017 captions (the text
    the LM is trained on comes from captions_train2017.json), validated on val2017."""
    root = in_process / "coco"
    truth = write_coco(root)
    captions = {a["caption"] for split in ("train", "val") for a in json.loads(
        (root / "annotations" / f"captions_{split}2017.json").read_text())["annotations"]}
    out = in_process / "coco-run"
    cli("train", "--config", SMOKE, "--out", out, *SHORT, "train.val_every=2", "train.val_tasks=2",
        "data.source=coco", f"data.root={root}", "data.naming=real", "data.queries_per_class=1",
        f"data.feature_cache={in_process / 'features'}")
    rows = prompts.training_rows()
    assert len(rows) == 2 * 2  # 2 updates x 2 tasks, both queries of a task in one row
    texts = [i.text.strip() for row in rows for i in row if isinstance(i, Text)]
    assert set(texts) <= captions and len(set(texts)) > 4
    for row in rows:  # 2 x (support image, its caption), then 2 x (query image, its caption)
        assert [isinstance(i, int) for i in row] == [True, False] * 4
        assert [i.target for i in row[1::2]] == [False, False, True, True]
    val = [r for r in metrics(out) if "val_accuracy" in r]
    assert [r["step"] for r in val] == [2] and 0 <= val[0]["val_accuracy"] <= 1
    assert (out / "checkpoints" / "step-0000002").is_dir()
    assert truth["train"] and truth["val"]


# ------------------------------------------------------------------ a Frozen benchmark in-domain


@pytest.fixture(scope="module")
def in_domain(in_process: Path, cli: Callable[..., str]) -> dict[str, object]:
    """``data.source=frozen-benchmark`` trained on an Open-Ended file's train split (images
    loaded during training recorded)."""
    folder = in_process / "open_ended_mi"
    write_benchmark(folder, "open_ended_mi", n_tasks=20)
    loaded: list[str] = []
    load = FolderImageSource.load

    def recording(source, key):
        loaded.append(key)
        return load(source, key)

    out = in_process / "in-domain"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FolderImageSource, "load", recording)
        # 2 x 16 training tasks drawn from the 14 of the train split: all of them, most likely
        cli("train", "--config", SMOKE, "--out", out, *SHORT, "train.meta_batch=16",
            "train.val_every=2", "train.val_tasks=2", "data.source=frozen-benchmark",
            f"data.root={folder}", "data.benchmark=open_ended_mi",
            f"data.feature_cache={in_process / 'in-domain-features'}")
    splits = split_tasks(load_benchmark(folder, "open_ended_mi", 2, 1), seed=0)
    return {"folder": folder, "run": out, "splits": splits, "loaded": loaded}


def test_in_domain_training_never_sees_the_test_split(in_domain: dict) -> None:
    splits = in_domain["splits"]
    images = {part: {k for t in tasks for k in t.image_keys()} for part, tasks in splits.items()}
    loaded = set(in_domain["loaded"])
    assert not loaded & images["test"]
    assert loaded <= images["train"] | images["val"] and len(loaded & images["train"]) > 20
    val = [r for r in metrics(in_domain["run"]) if "val_accuracy" in r]
    assert [r["step"] for r in val] == [2]


def test_in_domain_run_evaluates_on_its_benchmark(in_domain: dict, cli) -> None:
    res = evaluate(cli, in_domain["run"], in_domain["folder"], "open_ended_mi")
    assert (res["dataset"], res["ways"], res["shots"], res["method"]) == ("open_ended_mi", 2, 1,
                                                                           "in_context")
    assert 0 <= res["accuracy"] <= 1 and res["n_queries"] == res["n_tasks"]


def test_evaluate_scores_only_the_test_split_of_an_in_domain_run(in_domain: dict, cli) -> None:
    """The run trained on 14 of the file's 20 tasks and validated on 2: scoring it on the whole
    file would count tasks it was trained on."""
    res = evaluate(cli, in_domain["run"], in_domain["folder"], "open_ended_mi")
    assert res["n_tasks"] == len(in_domain["splits"]["test"])


# ------------------------------------------------------------------ VQA


@pytest.mark.parametrize(("name", "shots"), [("fast_vqa", 1), ("guided_vqa", 3)])
def test_vqa_questions_reach_the_lm_and_attribute_answers_are_scored(
        name: str, shots: int, run: Path, in_process: Path, cli, prompts: Prompts) -> None:
    """Each query is asked its own question after the support in context, and scored against
    its attribute answer: an LM giving one colour ("Red.") to everything scores that colour's
    share of the answers."""
    folder = in_process / name
    records = write_benchmark(folder, name, shots=shots, n_tasks=12, seed=1)
    colour = records[0]["answer"]
    prompts.answer = f" {colour.title()}."
    res = evaluate(cli, run, folder, name, shots=shots)
    assert len(prompts.answered) == len(records)
    for rec, prompt in zip(records, prompts.answered, strict=True):
        support = "".join(f"<img> {rec[f'caption_{i}']}." for i in range(1, 2 * shots + 1))
        assert prompt == f"{support}<img> {rec['question']}"
    share = sum(normalize_answer(r["answer"]) == colour for r in records) / len(records)
    assert 0 < share < 1
    assert res["accuracy"] == pytest.approx(share) and res["n_tasks"] == len(records)
    assert [e["answer"] for e in res["examples"]] == [r["answer"] for r in records[:5]]


# ------------------------------------------------------------------ --task-induction, --repeats


@pytest.fixture(scope="module")
def open_ended(in_process: Path) -> tuple[Path, list[dict]]:
    folder = in_process / "open_ended_eval"
    return folder, write_benchmark(folder, "open_ended_mi", n_tasks=4, seed=2)


@pytest.mark.parametrize("method", ["in_context", "maml"])
def test_task_induction_opens_the_whole_sequence(
        method: str, run: Path, open_ended: tuple[Path, list[dict]], cli, prompts: Prompts) -> None:
    folder, records = open_ended
    plain = evaluate(cli, run, folder, "open_ended_mi", "--method", method, "--steps", 1)
    without = list(prompts.answered)
    prompts.answered.clear()
    induced = evaluate(cli, run, folder, "open_ended_mi", "--method", method, "--steps", 1,
                       "--task-induction")
    assert (plain["induction"], induced["induction"]) == (False, True)
    passes = 2  # --steps 1 adapts (in context too), then answers again without steps (accuracy_0_steps)
    assert len(prompts.answered) == len(without) == passes * len(records)
    for rec, before, after in zip(records * passes, without, prompts.answered, strict=True):
        words = [rec["caption_1"].split()[-1], rec["caption_2"].split()[-1]]
        question = f"<img> {rec['question']}"
        assert before.endswith(question) and "Answer with" not in before
        instruction = f"Answer with {words[0]} or {words[1]}."
        assert after == f" {instruction}{before}"  # before the support too (in context), as in Frozen


def test_repeats_show_each_support_pair_again(run: Path, open_ended: tuple[Path, list[dict]], cli,
                                              prompts: Prompts) -> None:
    folder, records = open_ended
    res = evaluate(cli, run, folder, "open_ended_mi", "--repeats", 2)
    assert res["repeats"] == 2 and res["shots"] == 1
    for rec, prompt in zip(records, prompts.answered, strict=True):
        support = f"<img> {rec['caption_1']}.<img> {rec['caption_2']}."
        assert prompt == support * 3 + f"<img> {rec['question']}"


def test_repeats_adapt_on_the_repeated_support(run: Path, open_ended: tuple[Path, list[dict]], cli,
                                               prompts: Prompts) -> None:
    """With MAML the repeated support is what the inner loop trains on."""
    folder, records = open_ended
    evaluate(cli, run, folder, "open_ended_mi", "--method", "maml", "--steps", 1, "--repeats", 1)
    support_rows = [rendered for call in prompts.packed for row, rendered in call
                    if any(isinstance(i, Text) and i.target for i in row)]
    captions = [f"<img> {rec[f'caption_{i}']}." for rec in records for i in (1, 2)]
    # one pack per adaptation step and batch: every task's support, twice
    assert sorted(support_rows) == sorted(2 * captions)


# ------------------------------------------------------------------ the non-episodic recipe


def test_standard_recipe_trains_on_caption_pairs_and_validates(in_process: Path, cli,
                                                               prompts: Prompts) -> None:
    """``train.method=standard``: mini-batches of ``train.meta_batch`` (image, caption) pairs,
    each row one image and its caption as the target (with real names: "This is a red circle."),
    validated every ``train.val_every`` updates on held-out tasks without adaptation."""
    out = in_process / "standard"
    cli("train", "--config", SMOKE, "--out", out, "train.method=standard", "train.updates=4",
        "train.meta_batch=4", "train.val_every=2", "train.val_tasks=3", "train.checkpoint_every=2",
        "data.naming=real", f"data.feature_cache={in_process / 'features'}")
    names = {f" This is a {class_name(c)}." for c in TRAIN_CLASSES}
    batches = [[row for row, _ in call] for call in prompts.packed
               if all(any(isinstance(i, Text) and i.target for i in row) for row, _ in call)]
    assert len(batches) == 4 and all(len(b) == 4 for b in batches)
    for batch in batches:
        for row in batch:
            assert len(row) == 2 and isinstance(row[0], int) and row[1].target, row
            assert row[1].text in names
    assert len({row[1].text for b in batches for row in b}) >= 3
    val = [r for r in metrics(out) if "val_accuracy" in r]
    assert [(r["step"], r["val_method"]) for r in val] == [(2, "standard"), (4, "standard")]
    assert all(0 <= r["val_ci95"][0] <= r["val_accuracy"] <= r["val_ci95"][1] <= 1 for r in val)
    assert prompts.answered  # validation answered prompts
    assert all(p.count("<img>") == 1 for p in prompts.answered)  # no support in the prompt
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000002",
                                                                         "step-0000004"]
    assert np.isfinite([r["loss"] for r in metrics(out) if "loss" in r]).all()
