"""Config loading: YAML, dotted overrides, type and range errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metamapper.config import (
    Config,
    ConfigError,
    config_from_dict,
    dump_config,
    load_config,
)
from metamapper.meta.maml import InnerLoop

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def test_smoke_yaml_loads_with_its_values_and_defaults_elsewhere() -> None:
    cfg = load_config(SMOKE)
    assert isinstance(cfg, Config)
    assert (cfg.backbones.vision, cfg.backbones.lm, cfg.backbones.seed) == ("tiny-clip", "tiny-lm", 0)
    assert (cfg.mapper.prefix_len, cfg.mapper.num_heads) == (2, 4)
    assert (cfg.data.source, cfg.train.method, cfg.train.updates, cfg.train.meta_batch) == (
        "synthetic", "in_context", 20, 4)
    assert cfg.eval.tasks == 20
    assert cfg.train.lr == 1e-3 and cfg.train.keep_last == 3  # defaults


def test_no_file_gives_the_defaults() -> None:
    assert load_config(None) == Config()


def test_dotted_overrides_reach_nested_sections_with_types() -> None:
    cfg = load_config(SMOKE, [
        "train.inner.steps=5", "train.inner.lr=0.05", "train.inner.first_order=false",
        "train.updates=7", "mapper.prefix_len=3", "eval.max_new_tokens=12", "data.feature_cache=/tmp/x",
        "train.report_to=[tensorboard]", "train.lr=0.01",
    ])
    assert isinstance(cfg.train.inner, InnerLoop)
    assert (cfg.train.inner.steps, cfg.train.inner.lr, cfg.train.inner.first_order) == (5, 0.05, False)
    assert cfg.train.inner.adapt == "all"  # untouched fields keep their defaults
    assert (cfg.train.updates, cfg.mapper.prefix_len, cfg.eval.max_new_tokens) == (7, 3, 12)
    assert cfg.data.feature_cache == "/tmp/x"
    assert cfg.train.report_to == ["tensorboard"]
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 0.01
    assert cfg.train.meta_batch == 4  # from the file


def test_override_of_an_int_field_with_an_int_converts_to_float() -> None:
    assert load_config(SMOKE, ["train.lr=1"]).train.lr == 1.0


def test_exponent_notation_override_is_a_number() -> None:
    # PyYAML reads "1e-4" (no dot) as a string; learning rates are usually written that way.
    assert load_config(SMOKE, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)


def test_nested_yaml_section(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  method: maml\n  inner:\n    steps: 3\n    meta_sgd: true\n")
    cfg = load_config(p)
    assert cfg.train.method == "maml"
    assert (cfg.train.inner.steps, cfg.train.inner.meta_sgd) == (3, True)


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(SMOKE, ["train.inner.steps=2", "train.report_to=[tensorboard]"])
    p = tmp_path / "dumped.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.bogus=1", "train.bogus"), ("train.inner.bogus=1", "train.inner.bogus"),
     ("bogus.x=1", "bogus"), ("mapper.prefix=4", "mapper.prefix")],
)
def test_unknown_key_error_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match="unknown config key") as e:
        load_config(SMOKE, [override])
    assert repr(key) in str(e.value)


def test_unknown_key_in_the_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  wayz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "'data.wayz'" in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize(
    ("override", "key", "what"),
    [
        ("train.updates=abc", "train.updates", "integer"),
        ("train.updates=1.5", "train.updates", "integer"),
        ("mapper.prefix_len=true", "mapper.prefix_len", "integer"),
        ("train.lr=fast", "train.lr", "number"),
        ("train.cosine=3", "train.cosine", "true/false"),
        ("train.method=3", "train.method", "string"),
        ("train.report_to=5", "train.report_to", "list"),
        ("train.report_to=[tensorboard, 3]", "train.report_to[1]", "string"),
        ("train.inner=5", "train.inner", "mapping"),
    ],
)
def test_wrong_types_name_the_key(override: str, key: str, what: str) -> None:
    with pytest.raises(ConfigError, match=what) as e:
        load_config(SMOKE, [override])
    assert key in str(e.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=-0.1", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("data.ways=1", "data.ways"),
        ("data.shots=0", "data.shots"),
        ("data.queries_per_class=0", "data.queries_per_class"),
        ("train.method=\"\"", "train.method"),  # a name; an unregistered one: refused at the start (test_methods)
        ("mapper.kind=lstm", "mapper.kind"),
        ("mapper.prefix_len=0", "mapper.prefix_len"),
        ("data.naming=weird", "data.naming"),
        ("train.meta_batch=0", "train.meta_batch"),
        ("train.updates=-1", "train.updates"),
        ("train.inner.steps=-1", "inner steps"),
        ("train.inner.lr=-0.5", "inner learning rate"),
        ("mapper.preset=authors", "mapper.preset"),  # (retired: only its old values read)
        ("eval.tasks=-1", "eval.tasks"),
        ("eval.batch_tasks=0", "eval.batch_tasks"),
    ],
)
def test_out_of_range_values_are_refused(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(SMOKE, [override])
    assert key in str(e.value)


def test_valid_edge_values_are_accepted() -> None:
    cfg = load_config(SMOKE, ["data.ways=2", "data.shots=1", "train.updates=0", "train.inner.steps=0"])
    assert (cfg.data.ways, cfg.data.shots, cfg.train.updates) == (2, 1, 0)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as e:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value)


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(SMOKE, ["train.updates"])


def test_config_error_is_a_value_error() -> None:
    # the CLI turns ValueError into a one-line message with exit code 2
    assert issubclass(ConfigError, ValueError)


def test_the_paper_mapper_is_one_kind_and_its_older_spelling_reads_as_it(tmp_path: Path) -> None:
    assert load_config(SMOKE, ["mapper.kind=paper"]).mapper.kind == "paper"
    old = tmp_path / "old.yaml"  # an older run's config.yaml / a user's file
    old.write_text("mapper:\n  kind: attention\n  preset: paper\n  prefix_len: 3\n")
    with pytest.warns(UserWarning, match="mapper.preset=paper is now spelled mapper.kind=paper") as w:
        cfg = load_config(old)
    assert len(w) == 1 and "\n" not in str(w[0].message)  # one line
    assert cfg == load_config(None, ["mapper.kind=paper", "mapper.prefix_len=3"])
    with pytest.warns(UserWarning, match="mapper.kind=paper"):  # a command-line override too
        assert load_config(SMOKE, ["mapper.preset=paper"]).mapper.kind == "paper"
    with pytest.raises(ConfigError, match="mapper.kind='mlp'"):
        load_config(SMOKE, ["mapper.preset=paper", "mapper.kind=mlp"])


def test_an_empty_mapper_preset_is_dropped_silently() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ``preset: ""`` was our attention mapper: nothing to say
        assert config_from_dict({"mapper": {"kind": "mlp", "preset": ""}}).mapper.kind == "mlp"


def test_retired_eval_keys_of_older_runs_are_dropped_with_a_warning() -> None:
    old_run = {"eval": {"tasks": 50, "shots": [1, 5], "variants": ["open_ended"], "steps": None,
                        "seed": 1234}}
    with pytest.warns(UserWarning, match="eval.shots, eval.variants, eval.steps, eval.seed"):
        cfg = config_from_dict(old_run)
    assert cfg.eval.tasks == 50
    with pytest.raises(ConfigError, match="'eval.shotz'"):  # other unknown keys stay errors
        config_from_dict({"eval": {"shotz": 1}})


def test_an_older_runs_data_variant_and_step_weights_are_dropped_with_a_warning() -> None:
    # data.variant was never read (evaluation takes the variant from --dataset); train.step_weights
    # was removed unmeasured (docs/EXPERIMENTS.md)
    with pytest.warns(UserWarning, match="data.variant"):
        cfg = config_from_dict({"data": {"variant": "real_name", "ways": 3}})
    assert cfg.data.ways == 3 and not hasattr(cfg.data, "variant")
    with pytest.warns(UserWarning, match="train.step_weights"):
        cfg = config_from_dict({"train": {"step_weights": [0, 0, 0.25, 0.25, 0.25, 0.25], "updates": 9}})
    assert cfg.train.updates == 9 and not hasattr(cfg.train, "step_weights")
    with pytest.raises(ConfigError, match="'train.variant'"):
        config_from_dict({"train": {"variant": "real_name"}})  # retired in data only


CONFIGS = sorted(SMOKE.parent.glob("*.yaml"))


@pytest.mark.parametrize("overrides", [[], ["train.report_to=[tensorboard]", "train.max_minutes=5",
                                            "mapper.ff_dim=null", "train.inner.adapt=prefix,out"]])
@pytest.mark.parametrize("path", [None, *CONFIGS], ids=lambda p: getattr(p, "name", "default"))
def test_the_commented_config_reads_back_as_the_same_config(tmp_path: Path, path: Path | None,
                                                             overrides: list[str]) -> None:
    cfg = load_config(path, overrides)
    text = dump_config(cfg, comments=True)
    (tmp_path / "shown.yaml").write_text(text)
    assert load_config(tmp_path / "shown.yaml") == cfg
    # the comments are all it adds to the plain YAML
    assert "".join(x for x in text.splitlines(True) if not x.lstrip().startswith("#")) == dump_config(cfg)


def test_config_show_puts_each_settings_comment_in_config_py_above_it() -> None:
    def settings(d: dict) -> int:  # the fields below the top-level sections, at any depth
        return sum(1 + (settings(v) if isinstance(v, dict) else 0) for v in d.values())

    cfg = load_config(SMOKE.parent / "fashion.yaml")  # (data.mixture empty: every key is a field)
    lines = dump_config(cfg, comments=True).splitlines()
    shown = [i for i, x in enumerate(lines) if re.match(r" +\w+:", x)]
    assert len(shown) == sum(settings(v) for v in cfg.to_dict().values())
    for i in shown:  # every setting has its comment above it
        assert re.fullmatch(r" *# \S.*", lines[i - 1]), lines[i]
    text = dump_config(Config(), comments=True)
    # the comment written beside the field, and InnerLoop's docstring Attributes
    assert "  # attention heads; must divide the LM embedding size\n  num_heads: 8\n" in text
    assert "    # SGD steps on the support loss (paper: 5).\n    steps: 0\n" in text
    assert "# where the run computes, and the frozen backbones' dtype\nruntime:\n" in text
    assert "AVX512-BF16/AMX" in text.split("precision: auto")[0].rsplit("device:", 1)[1]
