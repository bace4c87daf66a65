"""Training recipes on the smoke config (tiny random backbones, generated images): checkpoints,
metrics, exact resume, the standard recipe, loading a run for few-shot use, misuse refused."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from metamapper.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from metamapper.config import Config, ConfigError, load_config
from metamapper.data.synthetic import draw
from metamapper.methods import get_method, train
from metamapper.pretrained import MetaMapper

SMOKE = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"
BASE = ["train.updates=6", "train.meta_batch=2", "train.val_every=0", "train.checkpoint_every=2"]


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One thread (tiny models on a busy machine) and a private metamapper cache."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAMAPPER_CACHE", str(tmp_path_factory.mktemp("mm-cache")))
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


def config(features_dir: Path, *overrides: str) -> Config:
    return load_config(SMOKE, [*BASE, f"data.feature_cache={features_dir}", *overrides])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def mapper_weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).weights


@pytest.fixture(scope="module")
def in_context_run(tmp_path_factory: pytest.TempPathFactory, features_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("runs") / "in_context"
    assert train(config(features_dir), run, progress=False) == run
    return run


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory: pytest.TempPathFactory, features_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("runs") / "maml"
    cfg = config(features_dir, "train.method=maml", "train.inner.steps=2", "train.updates=4",
                 "train.val_every=2", "train.val_tasks=2")
    train(cfg, run, progress=False)
    return run


def test_in_context_run_writes_checkpoints_config_and_metrics(in_context_run: Path,
                                                              features_dir: Path) -> None:
    assert [p.name for p in list_checkpoints(in_context_run)] == [
        "step-0000002", "step-0000004", "step-0000006"]
    assert load_config(in_context_run / "config.yaml") == config(features_dir)
    recs = metrics(in_context_run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["skipped"] == 0 for r in recs)
    assert all(math.isfinite(r["grad_norm"]) for r in recs)
    ck = read_checkpoint(list_checkpoints(in_context_run)[-1], trainer=True)
    assert ck.step == 6 and ck.meta["method"] == "in_context"
    assert ck.meta["lm_identity"] == "tiny-lm:llama:seed0"
    assert ck.meta["vision_identity"] == "tiny-clip:seed0:pooled"
    assert all(k.startswith("mapper.") for k in ck.weights)
    first = mapper_weights(list_checkpoints(in_context_run)[0])
    assert not torch.equal(first["mapper.prefix"], ck.weights["mapper.prefix"])  # it trained


def test_maml_run_adapts_validates_and_checkpoints(maml_run: Path) -> None:
    assert [p.name for p in list_checkpoints(maml_run)] == ["step-0000002", "step-0000004"]
    recs = metrics(maml_run)
    train_recs = [r for r in recs if "loss" in r]
    val_recs = [r for r in recs if "val_accuracy" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["skipped"] == 0 for r in train_recs)
    assert [r["step"] for r in val_recs] == [2, 4]
    for r in val_recs:
        assert 0 <= r["val_accuracy"] <= 1 and r["val_method"] == "maml"
        assert r["val_support_fit"] is not None and 0 <= r["val_support_fit"] <= 1
    assert read_checkpoint(list_checkpoints(maml_run)[-1]).meta["method"] == "maml"


def test_resume_after_losing_the_last_checkpoint_gives_identical_weights(
        in_context_run: Path, features_dir: Path, tmp_path: Path) -> None:
    """As if killed after update 4: the step-6 checkpoint and the metrics of 5-6 never written."""
    run = tmp_path / "killed"
    shutil.copytree(in_context_run, run)
    shutil.rmtree(run / "checkpoints" / "step-0000006")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    train(config(features_dir), run, resume=True, progress=False)
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6]  # resumed at 5, not from 0
    want = mapper_weights(in_context_run / "checkpoints" / "step-0000006")
    got = mapper_weights(run / "checkpoints" / "step-0000006")
    at4 = mapper_weights(run / "checkpoints" / "step-0000004")
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert any(not torch.equal(at4[k], want[k]) for k in want)
    for a, b in zip(metrics(run)[4:], metrics(in_context_run)[4:], strict=True):
        assert a["loss"] == b["loss"]


def test_a_checkpoint_records_its_arithmetic_and_a_resume_that_changes_it_warns(
        in_context_run: Path, features_dir: Path, tmp_path: Path) -> None:
    """Another CPU thread count orders the reductions otherwise: the run goes on, not bitwise."""
    threads = torch.get_num_threads()
    meta = read_checkpoint(list_checkpoints(in_context_run)[-1]).meta
    assert meta["arithmetic"] == {"torch": torch.__version__, "device": "cpu", "cpu_threads": threads}
    run = tmp_path / "threads"
    shutil.copytree(in_context_run, run)
    torch.set_num_threads(threads + 1)
    try:
        with pytest.warns(UserWarning, match=rf"'cpu_threads': {threads + 1}}}.*'cpu_threads': {threads}}}.*not be bitwise"):
            train(config(features_dir, "train.updates=7"), run, resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [r["step"] for r in metrics(run) if "loss" in r][-1] == 7


def test_resume_refuses_a_checkpoint_of_other_backbones(in_context_run: Path, features_dir: Path,
                                                        tmp_path: Path) -> None:
    run = tmp_path / "other"
    shutil.copytree(in_context_run, run)
    before = sorted(p.name for p in list_checkpoints(run))
    with pytest.raises(CheckpointError, match="other backbones"):
        train(config(features_dir, "backbones.seed=1"), run, resume=True, progress=False)
    assert sorted(p.name for p in list_checkpoints(run)) == before


def test_resume_refuses_another_config_but_may_run_longer(in_context_run: Path, features_dir: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "changed"
    shutil.copytree(in_context_run, run)
    with pytest.raises(ConfigError, match=r"cannot resume .*changed.*train\.lr: 0\.001 -> 0\.002.*config\.yaml"):
        train(config(features_dir, "train.lr=0.002"), run, resume=True, progress=False)
    assert [p.name for p in list_checkpoints(run)][-1] == "step-0000006"  # nothing trained
    train(config(features_dir, "train.updates=8", "train.max_minutes=5"), run, resume=True, progress=False)
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6, 7, 8]


def _spell_as_older_runs(config: dict) -> dict:
    """A config as an older metamapper wrote it: the authors' mapper as ``mapper.preset: paper``,
    the LM's float32 as ``train.lm_dtype`` beside ``runtime.precision: auto``, and the keys since
    retired."""
    old = json.loads(json.dumps(config))
    old["mapper"].update(kind="attention", preset="paper")
    old["train"]["lm_dtype"] = old["runtime"]["precision"]
    old["runtime"]["precision"] = "auto"
    old["data"]["variant"] = "open_ended"
    old["train"]["step_weights"] = None
    return old


def test_a_run_written_with_the_older_spelling_resumes(features_dir: Path, tmp_path: Path) -> None:
    """A run trained as ``mapper.preset: paper`` with ``train.lm_dtype: float32`` (its config.yaml
    and every checkpoint's meta.json) resumes as ``mapper.kind: paper`` with
    ``runtime.precision: float32``, from its own config.yaml or today's spelling."""
    run = tmp_path / "old"
    cfg = config(features_dir, "mapper.kind=paper", "runtime.precision=float32", "train.updates=4")
    train(cfg, run, progress=False)
    for ckpt in list_checkpoints(run):
        meta = json.loads((ckpt / "meta.json").read_text())
        meta["config"] = _spell_as_older_runs(meta["config"])
        (ckpt / "meta.json").write_text(json.dumps(meta))
    (run / "config.yaml").write_text(yaml.safe_dump(_spell_as_older_runs(cfg.to_dict())))
    shutil.copytree(run, tmp_path / "old-too")
    with pytest.warns(UserWarning, match="mapper.preset=paper is now spelled mapper.kind=paper.*"
                      "train.lm_dtype=float32 is now runtime.precision=float32"):
        again = load_config(run / "config.yaml", ["train.updates=5"])
    assert (again.mapper.kind, again.runtime.precision) == ("paper", "float32")
    with pytest.warns(UserWarning, match="mapper.kind=paper"):  # (the checkpoint's config)
        train(again, run, resume=True, progress=False)
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5]  # resumed, not from 0
    assert load_config(run / "config.yaml").mapper.kind == "paper"  # rewritten in today's spelling
    run = tmp_path / "old-too"
    with pytest.warns(UserWarning, match="mapper.kind=paper"):
        train(config(features_dir, "mapper.kind=paper", "runtime.precision=float32", "train.updates=5"),
                       run, resume=True, progress=False)
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5]


def test_standard_recipe_runs(tmp_path: Path, features_dir: Path) -> None:
    run = tmp_path / "standard"
    cfg = config(features_dir, "train.method=standard", "train.updates=3", "train.meta_batch=4",
                 "train.checkpoint_every=3")
    assert train(cfg, run, progress=False) == run  # the recipe of train.method=standard
    assert [p.name for p in list_checkpoints(run)] == ["step-0000003"]
    recs = metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["skipped"] == 0 for r in recs)
    assert read_checkpoint(list_checkpoints(run)[0]).meta["method"] == "standard"


def test_from_pretrained_adapts_and_answers(maml_run: Path) -> None:
    model = MetaMapper.from_pretrained(str(maml_run))
    assert not model.training
    support = [draw(6, 0), draw(7, 0)]
    adapted = model.adapt(support, ["This is a dax.", "This is a blicket."])
    assert adapted.method is get_method("maml")  # the run's own method, by default
    assert set(adapted.params) == set(dict(model.mapper.named_parameters()))  # inner.steps=2, all
    assert len(adapted.support_losses) == 3 and all(math.isfinite(x) for x in adapted.support_losses)
    answers = adapted.answer([draw(6, 1), draw(7, 1), draw(6, 2)], question="This is a")
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    with pytest.raises(ValueError, match="captions"):
        model.adapt(support, ["This is a dax."])


def test_from_pretrained_in_context_run_answers(in_context_run: Path) -> None:
    model = MetaMapper.from_pretrained(str(in_context_run / "checkpoints" / "step-0000004"))
    adapted = model.adapt([draw(6, 0), draw(7, 0)], ["This is a dax", "This is a blicket"])
    assert adapted.params == {} and adapted.method is get_method("in_context")
    answers = adapted.answer([draw(7, 3)], question="This is a")
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_adapt_needs_a_pretrained_model() -> None:
    cfg = load_config(SMOKE)
    from metamapper.models.factory import build_model

    base = build_model(cfg.backbones, cfg.mapper, with_vision=False, visual_dim=16)
    model = MetaMapper(vision=None, lm=base.lm, mapper=base.mapper)
    with pytest.raises(RuntimeError, match="from_pretrained"):
        model.adapt([draw(0, 0)], ["This is a dax."])


def test_the_default_regularisers_and_bfloat16_lm_train_and_log(tmp_path: Path, features_dir: Path) -> None:
    """The default method's training options together: spread and geometry penalties (logged),
    the LM in bfloat16 while training; the saved run loads with its LM in that dtype and answers."""
    run = tmp_path / "aids"
    cfg = config(features_dir, "train.spread_weight=1", "runtime.precision=bfloat16", "train.geometry_weight=1")
    train(cfg, run, progress=False)
    steps = [r for r in metrics(run) if "loss" in r]
    assert len(steps) == 6 and all(math.isfinite(r["loss"]) for r in steps)
    assert all(0 <= r["spread_penalty"] <= 1 for r in steps)
    assert all(0 <= r["geometry_penalty"] <= 4 for r in steps)
    model = MetaMapper.from_pretrained(run)
    assert all(p.dtype == torch.bfloat16 for p in model.lm.parameters())  # runtime.precision, pinned
    assert all(p.dtype == torch.float32 for p in model.mapper.parameters())
    adapted = model.adapt([draw(6, 0), draw(7, 0)], ["This is a dax", "This is a blicket"])
    assert isinstance(adapted.answer([draw(7, 3)], question="This is a")[0], str)


def test_only_the_validation_tasks_used_are_prepared(features_dir: Path) -> None:
    from metamapper.train.common import prepare_run

    assert prepare_run(config(features_dir), progress=False).val_tasks == []  # val_every=0
    run = prepare_run(config(features_dir, "train.val_every=2", "train.val_tasks=3"), progress=False)
    assert len(run.val_tasks) == 3 and len(run.val_table.index) == len(
        {k for t in run.val_tasks for k in t.image_keys()})
