"""``run_demo`` end to end on tiny random backbones, the real Fashion-MNIST split and tiny
rendered corpora standing in for icons and emoji.

The demo's plan is swapped for one with tiny backbones and a handful of updates and tasks; the
orchestration (three trainings at equal compute, each evaluated the same way on the same tasks,
results kept across a rerun, the report files) is what is tested, not the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_data import write_corpus

import metamapper.demo as demo
from metamapper.config import load_config
from metamapper.data.fashion import find_fashion_root
from metamapper.registry import Method

TINY = ("backbones.vision=tiny-clip", "backbones.vision_mode=pooled", "backbones.lm=tiny-lm",
        "mapper.prefix_len=2", "mapper.num_heads=4", "mapper.ff_dim=64", "data.images_per_class=8")


@pytest.fixture
def tiny_plan(monkeypatch: pytest.MonkeyPatch) -> demo.DemoPlan:
    if find_fashion_root() is None:
        pytest.skip("Fashion-MNIST is not here (apt-get install dataset-fashion-mnist, or "
                    "metamapper download fashion-mnist)")
    plan = demo.DemoPlan(
        main_overrides=(*TINY, "train.updates=2", "train.meta_batch=2", "train.val_every=0"),
        tasks=3, tasks_5shot=2, tasks_corpora=2,
    )
    monkeypatch.setattr(demo, "QUICK", plan)
    return plan


def test_demo_trains_evaluates_and_reports(tiny_plan: demo.DemoPlan, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path / "cache"))
    for name in ("icons", "emoji"):  # the default's corpora, rendered (the demo renders them if not)
        write_corpus(tmp_path / "cache" / "corpora" / name, tmp_path / f"themes-{name}")
    out = tmp_path / "demo"
    rows = demo.run_demo(quick=True, out=out)

    main = [r for r in rows if r["label"] == "in_context (ours, default)"]
    assert sorted((r["dataset"], r["shots"], r["n_tasks"]) for r in main) == [
        ("emoji-open-ended", 1, 2), ("fashion-open-ended", 1, 3), ("fashion-open-ended", 5, 2),
        ("fashion-real-name", 1, 3), ("icons-open-ended", 1, 2)]
    baselines = [r for r in rows if r not in main]  # the untrained mapper, on the same settings and tasks
    assert sorted((r["dataset"], r["shots"], r["n_tasks"]) for r in baselines) == sorted(
        (r["dataset"], r["shots"], r["n_tasks"]) for r in main)
    assert list((out / "baselines" / "untrained" / "checkpoints").iterdir())
    untrained = load_config(out / "baselines" / "untrained" / "config.yaml")
    assert untrained.backbones.lm == "tiny-lm" and untrained.train.updates == 0  # the main config, untrained
    report = (out / "results.md").read_text()
    assert "2 updates x 2 tasks" in report and "docs/RESULTS.md" in report
    for name in ("results.json", "results.md", "accuracy_vs_shots.png", "training_curves.png"):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "results.json").read_text())) == len(rows)

    # A rerun keeps what was measured: nothing is evaluated again.
    monkeypatch.setattr(demo, "evaluate_run",
                        lambda *a, **k: pytest.fail("a finished row was evaluated again"))
    again = demo.run_demo(quick=True, out=out)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]


def test_the_default_is_configs_broad_yaml() -> None:
    """One default: ``Config()`` (what ``metamapper train`` without ``--config`` and the demo
    train) is the shipped ``configs/broad.yaml``, and the demo's plan adds no method setting."""
    from metamapper.config import Config, load_config

    shipped = load_config(Path(__file__).resolve().parents[2] / "configs" / "broad.yaml")
    assert Config().to_dict() == shipped.to_dict()
    assert demo.demo_config(*demo.FULL.main_overrides).to_dict() == {
        **shipped.to_dict(), "train": {**shipped.to_dict()["train"], "val_tasks": 50}}


def test_the_demo_scores_the_corpora_a_config_trains_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default's corpora are scored beside Fashion-MNIST; ``--config configs/fashion.yaml``
    needs none, and a corpus that cannot be rendered stops the demo, naming the way out."""
    from metamapper.data.corpora import CorpusBuildError

    configs = Path(__file__).resolve().parents[2] / "configs"
    default = [ds for ds, *_ in demo.demo_settings(demo.demo_config(), demo.FULL)]
    assert default[3:] == ["emoji-open-ended", "icons-open-ended"]
    fashion = demo.demo_config(config=configs / "fashion.yaml")
    assert [ds for ds, *_ in demo.demo_settings(fashion, demo.FULL)] == default[:3]

    def no_themes(name: str, root: object = None) -> None:
        raise CorpusBuildError("no icon concept is drawn by 3 themes; install icon themes")

    monkeypatch.setattr(demo, "ensure_corpus", no_themes)
    with pytest.raises(CorpusBuildError, match=r"install icon themes .*demo --config configs/fashion.yaml"):
        demo.run_demo(quick=True, out="never-written")


def test_make_demo_installs_the_packages_of_the_corpora_not_yet_rendered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make demo`` (target ``default-corpora``) installs what ``missing_packages`` names: the
    Debian packages of the default's corpora that are not rendered yet, read from its mixture."""
    from metamapper.data import emoji, icons
    from metamapper.data.corpora import corpus_dir

    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path))
    assert demo.missing_packages() == [*emoji.INSTALL.split(), *icons.INSTALL.split()]
    assert demo.missing_packages(Path(__file__).resolve().parents[2] / "configs" / "fashion.yaml") == []
    corpus_dir("emoji").mkdir(parents=True)
    (corpus_dir("emoji") / "index.json").write_text("{}")
    assert demo.missing_packages() == icons.INSTALL.split()


def test_a_training_stopped_early_is_not_scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop signal ends a training with a checkpoint before its last update: the demo says so
    and stops (a rerun resumes it), rather than scoring a half-trained mapper as the result."""
    monkeypatch.setattr(demo, "ensure_corpus", lambda name, root=None: None)
    monkeypatch.setattr(Method, "train", lambda method, cfg, run_dir, resume=False: None)  # stopped at once
    monkeypatch.setattr(demo, "evaluate_run", lambda *a, **k: pytest.fail("a stopped training was scored"))
    assert demo.run_demo(quick=True, out=tmp_path / "demo") == []
    assert not (tmp_path / "demo" / "results.json").exists()
