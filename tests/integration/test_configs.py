"""Every file in ``configs/`` (a new one is picked up by the glob): it loads, validates and says
what it means, and ``metamapper train`` runs it for one update on tiny stand-ins of the same kind.

Stand-ins, chosen from what the config names, not from its file name:

* a CLIP vision tower loaded from a hub name -> a tiny CLIP folder through the same loader;
* an LM loaded with ``hf`` from a hub name -> a tiny GPT-2 (or Llama) folder through ``hf``;
* any other pretrained backbone (EfficientNet-Lite0, SmolLM2-135M) -> tiny random ones
  (``tiny-clip`` pooled; a tiny Llama, SmolLM2's architecture, through ``hf``);
* the data -> generated files in the source's own format (Fashion-MNIST IDX, COCO annotation
  JSON, a Frozen benchmark JSON), a few images per class.

Only the updates (1), the validation tasks (2) and the paths are changed otherwise; every other
setting (method, inner loop, mapper, LM dtype, penalties, ways and shots) runs as written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_data import write_benchmark, write_coco, write_corpus, write_fashion

from metamapper.checkpoint import list_checkpoints, read_checkpoint
from metamapper.config import Config, config_from_dict, dump_config, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY_EMBED = 32  # the tiny LMs' embedding size


def test_the_configs_are_found() -> None:
    assert {"smoke.yaml", "fashion.yaml", "paper_coco.yaml"} <= {p.name for p in CONFIGS}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_validates_and_round_trips(path: Path) -> None:
    """Every value the file writes is the value loaded (nothing ignored or coerced away), and
    the config survives the trip through the run folder's ``config.yaml``."""
    cfg = load_config(path)
    loaded = _flat(cfg.to_dict())
    for key, value in _flat(yaml.safe_load(path.read_text())).items():
        assert key in loaded, key
        assert loaded[key] == value or (isinstance(value, str) and loaded[key] == float(value)), key
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


# ------------------------------------------------------------------ one update, tiny stand-ins


def stand_ins(cfg: Config, tmp: Path, tiny: dict[str, dict[str, Path]]) -> list[str]:
    """Overrides that put tiny backbones and generated data in place of what ``cfg`` names."""
    b, d, o = cfg.backbones, cfg.data, []
    if b.vision == "clip":
        o.append(f"backbones.vision_path={tiny['gpt2']['vision']}")
    elif not b.vision.startswith("tiny-"):
        o += ["backbones.vision=tiny-clip", "backbones.vision_mode=pooled"]
    if not b.lm.startswith("tiny-"):
        arch = "gpt2" if "gpt2" in f"{b.lm} {b.lm_path or 'gpt2'}" else "llama"
        o += ["backbones.lm=hf", f"backbones.lm_path={tiny[arch]['lm']}"]
    if TINY_EMBED % cfg.mapper.num_heads:
        o.append("mapper.num_heads=4")
    if d.source == "fashion-mnist":
        o += [f"data.root={_fashion(tmp)}", "data.images_per_class=4"]
    elif d.source == "mixture":  # each source of the mixture on its own stand-in
        for name in d.mixture:
            if name == "fashion-mnist":
                o.append(f"data.mixture_roots.fashion-mnist={_fashion(tmp)}")
            else:
                assert name in ("icons", "emoji", "glyphs"), f"no tiny stand-in for mixture source {name!r}"
                o.append(f"data.mixture_roots.{name}={_corpus(tmp)}")
        o.append("data.images_per_class=4")
    elif d.source == "coco":
        root = tmp / "coco"
        if not root.is_dir():
            write_coco(root)
        o.append(f"data.root={root}")
    elif d.source == "frozen-benchmark":
        root = tmp / f"{d.benchmark}-{d.ways}-{d.shots}"
        write_benchmark(root, d.benchmark, ways=d.ways, shots=d.shots, n_tasks=20)
        o.append(f"data.root={root}")
    else:
        assert d.source == "synthetic", f"no tiny stand-in for data.source={d.source!r}"
    return [*o, "train.updates=1", "train.val_tasks=2", f"data.feature_cache={tmp / 'features'}"]


def _fashion(tmp: Path) -> Path:
    root = tmp / "fashion"
    if not root.is_dir():
        write_fashion(root, per_class=6)
    return root


def _corpus(tmp: Path) -> Path:  # one tiny rendered corpus serves as icons, emoji and glyphs
    out = tmp / "corpus"
    return out if (out / "index.json").is_file() else write_corpus(out, tmp / "corpus-themes")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_trains_one_update_on_tiny_stand_ins(path: Path, in_process: Path, cli,
                                                    tiny_dirs: dict[str, Path],
                                                    tiny_dirs_gpt2: dict[str, Path]) -> None:
    cfg = load_config(path)
    overrides = stand_ins(cfg, in_process, {"llama": tiny_dirs, "gpt2": tiny_dirs_gpt2})
    out = in_process / "runs" / path.stem
    cli("train", "--config", path, "--out", out, *overrides)
    [ckpt] = list_checkpoints(out)
    meta = read_checkpoint(ckpt).meta
    assert meta["config"] == load_config(path, overrides).to_dict()  # the config as written
    assert meta["method"] == cfg.train.method and meta["mapper"] == cfg.mapper.kind
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1] and math.isfinite(steps[0]["loss"])
    assert steps[0].get("skipped", 0) == 0
    if cfg.train.val_every:  # validated after the last update, on held-out tasks
        [val] = [r for r in records if "val_accuracy" in r]
        assert 0 <= val["val_accuracy"] <= 1


# the sizes of the embedded default's backbones: EfficientNet-Lite0 (1280, 49 / 9 / 4 / 1 tokens)
# and SmolLM2-135M (576); the tiny stand-ins above have other widths
PACKAGED_SIZES = {("efficientnet-lite0", "smollm2-135m"): (1280, 576)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_mapper_fits_the_real_backbones_sizes(path: Path) -> None:
    """A config's mapper is built at its real backbones' sizes (no weights loaded): a mapper whose
    head widths do not divide them fails here, not at the first update of `make demo`."""
    from metamapper.models.factory import mapper_from_config

    cfg = load_config(path)
    sizes = PACKAGED_SIZES.get((cfg.backbones.vision, cfg.backbones.lm))
    if sizes is None:  # hub backbones: CLIP ViT-B/32 (512) and GPT-2 (768)
        sizes = (512 if cfg.backbones.vision_mode == "pooled" else 768, 768)
    mapper = mapper_from_config(cfg.mapper, visual_dim=sizes[0], embed_dim=sizes[1], output_scale=1.0)
    assert mapper.visual_dim == sizes[0] and mapper.embed_dim == sizes[1]
