"""The model card (``README.md``) of an exported mapper: Hub metadata, then what it is.

The YAML front matter is written by ``huggingface_hub.ModelCardData`` (library, license, tags,
the backbones that are Hub models as ``base_model``); the body names the method, the backbones,
the training data, the results of these exact weights when the run recorded any, how to use it,
the citation and the license.
"""

from __future__ import annotations

from typing import Any

from metamapper.config import Config, config_from_dict
from metamapper.eval.report import results_table
from metamapper.registry import METHODS

# registered backbones that are a Hub model (converted): the card names it as the base model
REGISTRY_HUB_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
DEFAULT_HUB_PATHS = {"clip": "openai/clip-vit-base-patch32", "hf": "gpt2"}  # as models.backbones

CITATION = """\
@inproceedings{najdenkoska2023meta,
  title     = {Meta Learning to Bridge Vision and Language Models for Multimodal Few-Shot Learning},
  author    = {Najdenkoska, Ivona and Zhen, Xiantong and Worring, Marcel},
  booktitle = {The Eleventh International Conference on Learning Representations (ICLR 2023)},
  year      = {2023},
  url       = {https://arxiv.org/abs/2302.14794}
}

@software{metamapper,
  title   = {metamapper: multimodal few-shot learning with a meta-learned mapper between frozen vision and language models},
  author  = {{The metamapper authors}},
  version = {%s},
  license = {MIT}
}"""


def _hub_source(kind: str, path: str | None, identity: str | None) -> str | None:
    """The Hub id a backbone was loaded from, or None (a local folder, a packaged or random model).

    A backbone loaded by Hub id records that id in its identity; one loaded from a local folder
    records a fingerprint of the folder instead."""
    if kind in REGISTRY_HUB_MODELS:
        return REGISTRY_HUB_MODELS[kind]
    path = path or DEFAULT_HUB_PATHS.get(kind)
    if path and identity and path in identity.split(":"):
        return path
    return None


def base_models(cfg: Config, record: dict[str, Any]) -> list[str]:
    """The backbones that are Hub models, vision first."""
    bb = cfg.backbones
    found = [_hub_source(bb.vision, bb.vision_path, record.get("vision_identity")),
             _hub_source(bb.lm, bb.lm_path, record.get("lm_identity"))]
    return [m for m in found if m]


def _backbone_row(role: str, kind: str, path: str | None, identity: str | None) -> str:
    hub = _hub_source(kind, path, identity)
    where = f"[{hub}](https://huggingface.co/{hub})" if hub else (f"`{path}`" if path else "built in")
    return f"| {role} | `{kind}` | {where} | `{identity}` |"


def _front_matter(cfg: Config, record: dict[str, Any]) -> str:
    """The card's YAML metadata (without its ``---`` lines): library, license, the backbones that
    are Hub models as ``base_model``, tags."""
    from huggingface_hub import ModelCardData

    bases = base_models(cfg, record)
    data = ModelCardData(library_name="metamapper", license="mit", base_model=bases or None,
                         tags=["metamapper", "few-shot-learning", "meta-learning", "multimodal",
                               "image-to-text", f"method-{cfg.train.method}"])
    return data.to_yaml()


def _summary(heading: str, n_params: int) -> str:
    """The title, what the mapper is, and what the repository holds."""
    return f"""\
# {heading}

A meta-mapper trained with the `metamapper` library for multimodal few-shot learning: a small
trainable mapper between a **frozen** image encoder and a **frozen** language model,
meta-learned so that a few captioned images ("This is a dax.", "This is a blicket.") teach the
pair new words (the method of [Najdenkoska, Zhen and Worring, ICLR
2023](https://arxiv.org/abs/2302.14794)).

This repository holds the mapper only (`model.safetensors`: {n_params:,} numbers, its parameters
and feature statistics); the backbones below load from their own sources, and a mapper is refused
with backbones other than the ones it was trained with."""


def _mapper_text(cfg: Config) -> str:
    """``"attention mapper, 4 prefix vectors"``; ``kind: paper`` names the authors' block."""
    mc = cfg.mapper
    return (("paper mapper (the authors' block)" if mc.kind == "paper" else f"{mc.kind} mapper")
            + f", {mc.prefix_len} prefix vectors")


def _method_text(cfg: Config) -> str:
    """The method's description (``registry.METHODS``; its name where this process has not
    registered it), the mapper, and the inner loop it trained with, as one line."""
    inner = cfg.train.inner
    adapt = (f" Inner loop: {inner.steps} steps at lr {inner.lr}"
             + (" (Meta-SGD: learned rates, included)" if inner.meta_sgd else "") + "."
             if inner.steps else "")
    name = cfg.train.method
    text = METHODS.get(name).description if name in METHODS else name
    return f"{text[:1].upper()}{text[1:]}; {_mapper_text(cfg)}.{adapt}"


def _method_section(cfg: Config, record: dict[str, Any]) -> str:
    return f"""\
## Method

{_method_text(cfg)}
Exported from update {record["step"]} of its training run (metamapper {record["metamapper_version"]})."""


def _backbones_section(cfg: Config, record: dict[str, Any]) -> str:
    bb = cfg.backbones
    return f"""\
## Backbones (frozen)

| role | backbone | source | identity |
|---|---|---|---|
{_backbone_row("vision encoder", bb.vision, bb.vision_path, record.get("vision_identity"))}
{_backbone_row("language model", bb.lm, bb.lm_path, record.get("lm_identity"))}

Visual features: `{bb.vision_mode}`, {record["visual_dim"]}-d; language model embeddings:
{record["embed_dim"]}-d."""


def _training_data(cfg: Config) -> str:
    d, t = cfg.data, cfg.train
    src = f"`{d.source}`" + (f" (`{d.benchmark}`)" if d.source == "frozen-benchmark" else "")
    if d.source == "mixture":
        total = sum(d.mixture.values())
        src = "a mixture of " + ", ".join(f"`{n}` ({share / total:.0%})" for n, share in sorted(d.mixture.items()))
    words = "a fresh made-up word per class per task" if d.naming == "made_up" else "the class names"
    per_class = "all images" if d.images_per_class is None else f"up to {d.images_per_class} images"
    return (f"Meta-trained on {src} tasks: {d.ways}-way {d.shots}-shot, {d.queries_per_class} "
            f"queries per class, {words} as answers, {per_class} per class; {t.updates} updates of "
            f"{t.meta_batch} tasks, AdamW lr {t.lr}, seed {t.seed}.")


def _results_section(results: list[dict[str, Any]]) -> str:
    table = results_table(results) if results else (
        "The run folder recorded no evaluation of these weights (`metamapper evaluate --out "
        "RUN/results.json` records one).")
    return f"## Results\n\n{table}"


def _usage_section(name: str) -> str:
    """How to use the mapper published as ``name``, on the command line and in Python."""
    return f"""\
## Usage

With `metamapper` installed:

```bash
metamapper predict --checkpoint {name} \\
    --support mug.jpg="This is a dax." kettle.jpg="This is a blicket." --query other_mug.jpg
```

```python
from metamapper import MetaMapper
from metamapper.data.images import load_image

model = MetaMapper.from_pretrained("{name}")
adapted = model.adapt([load_image("mug.jpg"), load_image("kettle.jpg")],
                      ["This is a dax.", "This is a blicket."])
print(adapted.answer([load_image("other_mug.jpg")], question="This is a"))
```"""


def _citation_section(version: str) -> str:
    return f"## Citation\n\n```bibtex\n{CITATION % version}\n```"


LICENSE_SECTION = "## License\n\nMIT (the mapper's weights and metamapper). The backbones keep their own licenses."


def model_card(record: dict[str, Any], results: list[dict[str, Any]], *, n_params: int,
               repo_id: str | None = None, title: str = "metamapper mapper") -> str:
    """The card's text for an exported folder's ``config.json`` ``record``.

    Args:
        record: the exported ``config.json`` (``hub.pretrained_record``).
        results: evaluation rows of these weights (``eval.report`` rows); none: the card says so.
        n_params: the number of values in the mapper's tensors (parameters and statistics).
        repo_id: the Hub id the usage snippet loads (default ``OWNER/NAME``).
        title: the card's title without a ``repo_id`` (with one: its name).
    """
    from huggingface_hub import ModelCard

    cfg = config_from_dict(record["config"])
    sections = [
        _summary(repo_id.split("/")[-1] if repo_id else title, n_params),
        _method_section(cfg, record),
        _backbones_section(cfg, record),
        f"## Training data\n\n{_training_data(cfg)}",
        _results_section(results),
        _usage_section(repo_id or "OWNER/NAME"),
        _citation_section(record["metamapper_version"]),
        LICENSE_SECTION,
    ]
    body = "\n" + "\n\n".join(sections) + "\n"  # a blank line between sections
    return str(ModelCard(f"---\n{_front_matter(cfg, record)}\n---\n{body}"))
